//! Where does the predictor think the dot goes? Rolls out constant actions from a Wall state and
//! prints the decoded predicted position (from the proprio embedding) against the true one.
//! `cargo run --release --example predictor_probe -- MODEL WALL_X DOOR_Y X Y AX AY`
use qwm::backend::{make_backend, LoadOptions};
use qwm::bundle::Bundle;
use qwm::env::wall::{Layout, WallEnv};
use qwm::env::Env;
use qwm::model::WorldModel;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let f = |i: usize| a[i].parse::<f64>().unwrap();
    let bundle = Bundle::open(std::path::Path::new(&a[1]))?;
    let backend = make_backend("tract")?;
    let mut wm = WorldModel::load(&bundle, backend.as_ref(), &LoadOptions::with_threads(1))?;
    let layout = Layout {
        wall_x: f(2),
        door_y: f(3),
    };
    let mut env = WallEnv::new();
    // Affine map from position to proprio embedding: emb = c + M p.
    let mut emb = |x: f32, y: f32| -> Vec<f32> {
        env.set(layout, [20.0, 20.0]);
        let fr = env.render(64);
        wm.encode(&[&fr], &[&[x, y]]).unwrap().remove(0).proprio
    };
    let c = emb(0.0, 0.0);
    let mx: Vec<f32> = emb(1.0, 0.0).iter().zip(&c).map(|(a, b)| a - b).collect();
    let my: Vec<f32> = emb(0.0, 1.0).iter().zip(&c).map(|(a, b)| a - b).collect();
    let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
    let decode = |e: &[f32]| -> (f32, f32) {
        let r: Vec<f32> = e.iter().zip(&c).map(|(a, b)| a - b).collect();
        let (a11, a12, a22) = (dot(&mx, &mx), dot(&mx, &my), dot(&my, &my));
        let (b1, b2) = (dot(&mx, &r), dot(&my, &r));
        let det = a11 * a22 - a12 * a12;
        ((a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det)
    };
    let start = [f(4), f(5)];
    let act = [f(6) as f32, f(7) as f32];
    env.set(layout, start);
    let z = wm.encode(&[&env.render(64)], &[&env.proprio()])?.remove(0);
    let fs = wm.manifest.frameskip;
    // Normalized model action: the env action repeated frameskip times.
    let norm: Vec<f32> = (0..fs)
        .flat_map(|_| {
            (0..2).map(|i| (act[i] - wm.manifest.action_mean[i]) / wm.manifest.action_std[i])
        })
        .collect();
    let horizon = 5;
    let actions: Vec<f32> = (0..horizon).flat_map(|_| norm.clone()).collect();
    for k in 1..=horizon {
        let pred = wm.rollout(
            std::slice::from_ref(&z),
            &[],
            &actions[..k * norm.len()],
            1,
            k,
        )?;
        for _ in 0..fs {
            env.step(&act)?;
        }
        let (px, py) = decode(&pred.proprio);
        let t = env.position();
        println!(
            "step {k}: predicted ({px:6.2}, {py:6.2})  true ({:6.2}, {:6.2})",
            t[0], t[1]
        );
    }
    Ok(())
}
