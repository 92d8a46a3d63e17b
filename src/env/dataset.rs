//! Trajectory datasets written as .npy files that numpy reads directly.
//!
//! Layout of a dataset folder (E episodes of T steps, frames at S x S):
//! `frames.npy` u8 [E, T+1, S, S, 3] (HWC), `actions.npy` f32 [E, T, A], `states.npy` f32
//! [E, T+1, D], `proprio.npy` f32 [E, T+1, P], `layout.npy` f32 [E, L] and `meta.json`.

use super::wall::{Layout, WallDataPolicy, WallEnv};
use super::Env;
use crate::error::{QwmError, Result};
use ndarray::{Array2, Array3, Array5};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// What `qwm dataset` writes besides the arrays.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetMeta {
    /// Dataset format version.
    pub format_version: u32,
    /// Environment name.
    pub env: String,
    /// Number of episodes.
    pub episodes: usize,
    /// Steps per episode (frames per episode = steps + 1).
    pub steps: usize,
    /// Generator seed.
    pub seed: u64,
    /// Frame side in pixels.
    pub image_size: usize,
    /// Environment action dimension.
    pub action_dim: usize,
    /// Top speed of the scripted pushes and door runs, if raised (see `qwm dataset --speed-max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_max: Option<f64>,
}

/// In-memory dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Description.
    pub meta: DatasetMeta,
    /// [E, T+1, S, S, 3] frames.
    pub frames: Array5<u8>,
    /// [E, T, A] actions.
    pub actions: Array3<f32>,
    /// [E, T+1, D] states.
    pub states: Array3<f32>,
    /// [E, T+1, P] proprioception.
    pub proprio: Array3<f32>,
    /// [E, L] layout parameters.
    pub layout: Array2<f32>,
}

/// Record `episodes` episodes of a non-Wall environment: `begin` places the episode's start and
/// returns its data policy (drawing from the episode's generator in a fixed order), `act` gives
/// each step's action. States and proprioception are recorded at their full widths.
#[allow(clippy::too_many_arguments)]
fn record<E: Env, P>(
    mut env: E,
    episodes: usize,
    steps: usize,
    seed: u64,
    image_size: usize,
    state_dim: usize,
    mut begin: impl FnMut(&mut E, &mut ChaCha8Rng) -> P,
    mut act: impl FnMut(&mut P, &mut ChaCha8Rng, &E) -> [f32; 2],
) -> Result<Dataset> {
    let s = image_size;
    let pd = env.proprio_dim();
    let mut frames = Array5::<u8>::zeros((episodes, steps + 1, s, s, 3));
    let mut actions = Array3::<f32>::zeros((episodes, steps, 2));
    let mut states = Array3::<f32>::zeros((episodes, steps + 1, state_dim));
    let mut proprio = Array3::<f32>::zeros((episodes, steps + 1, pd));
    for e in 0..episodes {
        let mut rng = ChaCha8Rng::seed_from_u64(episode_seed(seed, e));
        let mut policy = begin(&mut env, &mut rng);
        for t in 0..=steps {
            let frame = env.render(s);
            frames
                .slice_mut(ndarray::s![e, t, .., .., ..])
                .as_slice_mut()
                .expect("standard layout")
                .copy_from_slice(&frame.data);
            for (k, v) in env.state().into_iter().enumerate() {
                states[[e, t, k]] = v;
            }
            for (k, v) in env.proprio().into_iter().enumerate() {
                proprio[[e, t, k]] = v;
            }
            if t < steps {
                let a = act(&mut policy, &mut rng, &env);
                actions[[e, t, 0]] = a[0];
                actions[[e, t, 1]] = a[1];
                env.step(&a)?;
            }
        }
    }
    Ok(Dataset {
        meta: DatasetMeta {
            format_version: 1,
            env: env.name().into(),
            episodes,
            steps,
            seed,
            image_size,
            action_dim: 2,
            speed_max: None,
        },
        frames,
        actions,
        states,
        proprio,
        layout: Array2::<f32>::zeros((episodes, 0)),
    })
}

/// PointMaze data: the scripted corridor runs and random walks of
/// [`PointMazeDataPolicy`](super::pointmaze::PointMazeDataPolicy) from uniform free starts at rest.
fn generate_pointmaze(episodes: usize, steps: usize, seed: u64, size: usize) -> Result<Dataset> {
    use super::pointmaze::{PointMazeDataPolicy, PointMazeEnv};
    record(
        PointMazeEnv::new(),
        episodes,
        steps,
        seed,
        size,
        4,
        |env, rng| {
            let policy = PointMazeDataPolicy::new(rng);
            let start = env.random_free_position(rng);
            env.set(start, [0.0; 2]);
            policy
        },
        |policy, rng, env| {
            let a = policy.act(rng, env);
            [a[0] as f32, a[1] as f32]
        },
    )
}

/// PushT data: scripted pushes of [`PushTDataPolicy`](super::pusht::PushTDataPolicy) from the
/// reference's random starts; actions are the relative actions the environment takes.
fn generate_pusht(episodes: usize, steps: usize, seed: u64, size: usize) -> Result<Dataset> {
    use super::pusht::{PushTDataPolicy, PushTEnv};
    record(
        PushTEnv::new(),
        episodes,
        steps,
        seed,
        size,
        7,
        |env, rng| {
            let policy = PushTDataPolicy::new(rng);
            env.set_state(&PushTEnv::random_state(rng));
            policy
        },
        |policy, rng, env| policy.act(rng, &env.state_array()),
    )
}

/// Seed of episode `e` of a dataset generated with `seed` (independent streams per episode).
pub fn episode_seed(seed: u64, e: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(e as u64 + 1)
}

/// Generate a dataset in memory.
pub fn generate(
    env_name: &str,
    episodes: usize,
    steps: usize,
    seed: u64,
    image_size: usize,
    speed_max: Option<f64>,
) -> Result<Dataset> {
    if episodes == 0 || steps == 0 {
        return Err(QwmError::Usage(
            "dataset: --episodes and --steps must be at least 1".into(),
        ));
    }
    if !(8..=512).contains(&image_size) {
        return Err(QwmError::Usage(format!(
            "dataset: --image-size must be in 8..=512, got {image_size}"
        )));
    }
    // Frames (RGB) plus states and actions of every step, before any is simulated.
    let per_step = (image_size * image_size * 3) as u128 + 64 * 4;
    crate::util::mem::ensure_fits(
        &format!("dataset: --episodes {episodes} x --steps {steps} x --image-size {image_size}"),
        episodes as u128 * (steps as u128 + 1) * per_step,
    )?;
    if let Some(v) = speed_max {
        if !(v > 0.5 && v <= crate::env::wall::MAX_ACTION) {
            return Err(QwmError::Usage(format!(
                "dataset: --speed-max {v} must be in (0.5, {}]",
                crate::env::wall::MAX_ACTION
            )));
        }
    }
    match env_name {
        "wall" => {}
        "pointmaze" | "pusht" if speed_max.is_some() => {
            return Err(QwmError::Usage(
                "dataset: --speed-max applies to wall only".into(),
            ))
        }
        "pointmaze" => return generate_pointmaze(episodes, steps, seed, image_size),
        "pusht" => return generate_pusht(episodes, steps, seed, image_size),
        _ => {
            return Err(QwmError::Usage(format!(
            "dataset: environment '{env_name}' has no data policy (known: wall, pointmaze, pusht)"
        )))
        }
    }
    let s = image_size;
    let mut frames = Array5::<u8>::zeros((episodes, steps + 1, s, s, 3));
    let mut actions = Array3::<f32>::zeros((episodes, steps, 2));
    let mut states = Array3::<f32>::zeros((episodes, steps + 1, 2));
    let mut proprio = Array3::<f32>::zeros((episodes, steps + 1, 2));
    let mut layout = Array2::<f32>::zeros((episodes, 2));
    let mut env = WallEnv::new();
    for e in 0..episodes {
        let mut rng = ChaCha8Rng::seed_from_u64(episode_seed(seed, e));
        let (mut policy, lay, start): (WallDataPolicy, Layout, [f64; 2]) =
            WallDataPolicy::start(&mut rng, speed_max);
        env.set(lay, start);
        layout[[e, 0]] = lay.wall_x as f32;
        layout[[e, 1]] = lay.door_y as f32;
        for t in 0..=steps {
            let st = env.state();
            let frame = env.render(s);
            frames
                .slice_mut(ndarray::s![e, t, .., .., ..])
                .as_slice_mut()
                .expect("standard layout")
                .copy_from_slice(&frame.data);
            states[[e, t, 0]] = st[0];
            states[[e, t, 1]] = st[1];
            let pr = env.proprio();
            proprio[[e, t, 0]] = pr[0];
            proprio[[e, t, 1]] = pr[1];
            if t < steps {
                let a = policy.act(&mut rng, lay, env.position());
                let a32 = [a[0] as f32, a[1] as f32];
                actions[[e, t, 0]] = a32[0];
                actions[[e, t, 1]] = a32[1];
                env.step(&a32)?;
            }
        }
    }
    let meta = DatasetMeta {
        format_version: 1,
        env: env_name.to_string(),
        episodes,
        steps,
        seed,
        image_size,
        action_dim: 2,
        speed_max,
    };
    Ok(Dataset {
        meta,
        frames,
        actions,
        states,
        proprio,
        layout,
    })
}

fn write_npy<T: ndarray_npy::WritableElement, D: ndarray::Dimension>(
    dir: &Path,
    name: &str,
    a: &ndarray::Array<T, D>,
) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    ndarray_npy::write_npy(&tmp, a)
        .map_err(|e| QwmError::io(&tmp, std::io::Error::other(e.to_string())))?;
    std::fs::rename(&tmp, &path).map_err(|e| QwmError::io(&path, e))
}

fn read_npy<T: ndarray_npy::ReadableElement, D: ndarray::Dimension>(
    dir: &Path,
    name: &str,
) -> Result<ndarray::Array<T, D>> {
    let path = dir.join(name);
    ndarray_npy::read_npy(&path)
        .map_err(|e| QwmError::io(&path, std::io::Error::other(e.to_string())))
}

impl Dataset {
    /// Write the dataset into `dir` (created if needed); each file is written then renamed.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| QwmError::io(dir, e))?;
        write_npy(dir, "frames.npy", &self.frames)?;
        write_npy(dir, "actions.npy", &self.actions)?;
        write_npy(dir, "states.npy", &self.states)?;
        write_npy(dir, "proprio.npy", &self.proprio)?;
        write_npy(dir, "layout.npy", &self.layout)?;
        let meta = serde_json::to_string_pretty(&self.meta).expect("meta serializes");
        let path = dir.join("meta.json");
        std::fs::write(&path, meta).map_err(|e| QwmError::io(&path, e))
    }

    /// Read a dataset written by [`Dataset::write`], checking that the arrays agree.
    pub fn read(dir: &Path) -> Result<Dataset> {
        let path = dir.join("meta.json");
        let text = crate::util::fs::read_text(&path).map_err(|e| QwmError::io(&path, e))?;
        let meta: DatasetMeta = serde_json::from_str(&text)
            .map_err(|e| QwmError::io(&path, std::io::Error::other(e.to_string())))?;
        let ds = Dataset {
            frames: read_npy(dir, "frames.npy")?,
            actions: read_npy(dir, "actions.npy")?,
            states: read_npy(dir, "states.npy")?,
            proprio: read_npy(dir, "proprio.npy")?,
            layout: read_npy(dir, "layout.npy")?,
            meta,
        };
        let (e, t, s) = (ds.meta.episodes, ds.meta.steps, ds.meta.image_size);
        let ok = ds.frames.shape() == [e, t + 1, s, s, 3]
            && ds.actions.shape() == [e, t, ds.meta.action_dim]
            && ds.states.shape()[..2] == [e, t + 1]
            && ds.proprio.shape()[..2] == [e, t + 1]
            && ds.layout.shape()[0] == e;
        if !ok {
            return Err(QwmError::Usage(format!(
                "dataset {}: array shapes disagree with meta.json",
                dir.display()
            )));
        }
        Ok(ds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::wall::next_position;

    #[test]
    fn round_trip_and_consistent_dynamics() {
        let ds = generate("wall", 3, 12, 5, 32, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        ds.write(dir.path()).unwrap();
        let back = Dataset::read(dir.path()).unwrap();
        assert_eq!(back, ds);
        // Replaying the actions through the dynamics reproduces the states.
        for e in 0..3 {
            let lay = Layout {
                wall_x: ds.layout[[e, 0]] as f64,
                door_y: ds.layout[[e, 1]] as f64,
            };
            let mut p = [ds.states[[e, 0, 0]] as f64, ds.states[[e, 0, 1]] as f64];
            for t in 0..12 {
                p = next_position(
                    p,
                    [ds.actions[[e, t, 0]] as f64, ds.actions[[e, t, 1]] as f64],
                    lay,
                );
                assert!((p[0] as f32 - ds.states[[e, t + 1, 0]]).abs() < 1e-3);
                assert!((p[1] as f32 - ds.states[[e, t + 1, 1]]).abs() < 1e-3);
            }
        }
        assert_eq!(
            generate("wall", 3, 12, 5, 32, None).unwrap(),
            ds,
            "same seed, same data"
        );
    }

    #[test]
    fn data_crosses_the_door() {
        let ds = generate("wall", 60, 60, 11, 16, None).unwrap();
        let mut crossings = 0;
        for e in 0..60 {
            let wx = ds.layout[[e, 0]];
            let sides: Vec<bool> = (0..=60).map(|t| ds.states[[e, t, 0]] < wx).collect();
            crossings += sides.windows(2).filter(|w| w[0] != w[1]).count();
        }
        assert!(
            crossings >= 10,
            "only {crossings} door crossings in 60 episodes"
        );
    }

    #[test]
    fn pointmaze_data_round_trips_and_moves_through_the_maze() {
        let ds = generate("pointmaze", 4, 30, 2, 24, None).unwrap();
        assert_eq!(ds.states.shape(), &[4, 31, 4]);
        assert_eq!(ds.proprio.shape(), &[4, 31, 4]);
        assert_eq!(ds.layout.shape(), &[4, 0]);
        assert!(ds.actions.iter().all(|a| (-1.0..=1.0).contains(a)));
        let dir = tempfile::tempdir().unwrap();
        ds.write(dir.path()).unwrap();
        assert_eq!(Dataset::read(dir.path()).unwrap(), ds);
        // Replaying the actions from the recorded start reproduces the states.
        use crate::env::pointmaze::PointMazeEnv;
        let mut env = PointMazeEnv::new();
        for e in 0..4 {
            let s0 = ds.states.slice(ndarray::s![e, 0, ..]).to_vec();
            env.set([s0[0] as f64, s0[1] as f64], [0.0, 0.0]);
            for t in 0..30 {
                let a = ds.actions.slice(ndarray::s![e, t, ..]).to_vec();
                env.step(&a).unwrap();
                // (the recorded start is f32, the simulation f64: equal to 1e-4)
                let want = ds.states.slice(ndarray::s![e, t + 1, ..]).to_vec();
                let got = env.state();
                assert!(
                    got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4),
                    "{got:?} {want:?}"
                );
            }
        }
        assert_eq!(generate("pointmaze", 4, 30, 2, 24, None).unwrap(), ds);
        assert!(generate("pointmaze", 1, 3, 0, 16, Some(1.0)).is_err());
        assert!(generate("pushr", 1, 3, 0, 16, None).is_err());
    }

    #[test]
    fn pusht_data_pushes_the_block() {
        let ds = generate("pusht", 6, 60, 4, 32, None).unwrap();
        assert_eq!(ds.states.shape(), &[6, 61, 7]);
        assert_eq!(ds.proprio.shape(), &[6, 61, 4]);
        assert!(ds.actions.iter().all(|a| (-1.0..=1.0).contains(a)));
        // The block moves in most episodes.
        let moved = (0..6)
            .filter(|&e| {
                let (a, b) = (
                    ds.states.slice(ndarray::s![e, 0, 2..5]),
                    ds.states.slice(ndarray::s![e, 60, 2..5]),
                );
                a.iter().zip(b.iter()).any(|(x, y)| (x - y).abs() > 5.0)
            })
            .count();
        assert!(moved >= 4, "block moved in {moved} of 6 episodes");
        assert_eq!(generate("pusht", 6, 60, 4, 32, None).unwrap(), ds);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(generate("wall", 0, 10, 0, 64, None).is_err());
        assert!(generate("nope", 1, 10, 0, 64, None).is_err());
        assert!(generate("wall", 1, 10, 0, 4, None).is_err());
        for bad in [0.2, 3.0, f64::NAN] {
            let e = generate("wall", 1, 10, 0, 16, Some(bad)).unwrap_err();
            assert!(e.to_string().contains("--speed-max"), "{e}");
        }
    }

    /// Fast pushes reach speeds the default policy never emits, and the option is recorded.
    #[test]
    fn speed_max_raises_the_top_speed() {
        let top = |ds: &Dataset| {
            let n = ds.actions.len() / 2;
            let a = ds.actions.as_slice().unwrap();
            let fast = (0..n)
                .filter(|&i| a[2 * i].hypot(a[2 * i + 1]) > 2.0)
                .count();
            fast as f32 / n as f32
        };
        let slow = generate("wall", 80, 40, 3, 16, None).unwrap();
        let fast = generate("wall", 80, 40, 3, 16, Some(2.45)).unwrap();
        // Share of steps faster than 2.0 (random walks give some either way).
        assert!(
            top(&fast) > 3.0 * top(&slow),
            "{} vs {}",
            top(&fast),
            top(&slow)
        );
        assert_eq!(fast.meta.speed_max, Some(2.45));
        assert_eq!(slow.meta.speed_max, None);
    }
}
