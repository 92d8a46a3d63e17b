//! PushT: push a T-shaped block onto a target pose with a circular agent (the diffusion-policy
//! environment DINO-WM plans in), on rapier2d physics and tiny-skia rendering.
//!
//! Facts from the reference (diffusion_policy `pusht_env.py`, DINO-WM's wrapper), in pixels of a
//! 512 x 512 world with y pointing down:
//! - walls: four segments of radius 2 between (5, 5) and (506, 506) (inner faces at 7 and 504;
//!   here thick boxes with those faces); no gravity;
//! - agent: a kinematic circle of radius 15; each control step holds the target
//!   `agent + 100 x action` (DINO-WM's relative actions) for 10 physics steps of 0.01 s, with
//!   `v += (100 (target - pos) + 20 (0 - v)) dt` before each;
//! - block: a T of two boxes (bar (-60, 0)..(60, 30), stem (-15, 30)..(15, 120) in the body frame;
//!   the state's block position is the body origin, the middle of the bar's top edge), mass 1,
//!   moment 3000 (the reference's `moment_for_poly` of the bar, counted twice), centre of gravity
//!   (0, 45) (the plain average of the two boxes' centroids);
//! - the space's damping is 0, which in Chipmunk scales velocities by `0^dt` each step: bodies keep
//!   no velocity from one step to the next, so the block moves only while it is pushed;
//! - friction: the reference sets `body.friction = 1`, which pymunk ignores (friction belongs to
//!   shapes, whose default is 0), so contacts are frictionless, and inelastic; kept here;
//! - state `[agent x, agent y, block x, block y, block angle, agent vx, agent vy]`, proprio
//!   `[agent x, agent y, agent vx, agent vy]`;
//! - success: `|goal[0..4] - state[0..4]| < 20` (one norm over agent and block positions) and the
//!   wrapped angle error `< pi / 9`;
//! - rendering: white background, the goal T in LightGreen at (256, 256, pi/4), the block's boxes
//!   filled in LightSlateGray x 1.2 with a 2 px LightSlateGray edge, the agent as a RoyalBlue disc
//!   with a lighter inner disc of radius 11, LightGray walls.
//!
//! Not pymunk: rapier's contact solver differs in detail (soft constraints, its own iteration
//! counts), so trajectories match the reference in behaviour, not digit for digit.

mod render;

pub use render::{render_pusht, t_polygons};

use super::{Env, Frame, Task};
use crate::error::{QwmError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rapier2d::prelude::*;

/// World side in pixels.
pub const WORLD: f32 = 512.0;
/// Agent radius.
pub const AGENT_RADIUS: f32 = 15.0;
/// PD gains of the agent's controller.
pub const KP: f32 = 100.0;
/// Velocity gain.
pub const KV: f32 = 20.0;
/// Physics step.
pub const DT: f32 = 0.01;
/// Physics steps per control step.
pub const SUBSTEPS: usize = 10;
/// Relative action scale (pixels per action unit).
pub const ACTION_SCALE: f32 = 100.0;
/// Goal pose drawn in every frame (x, y, angle).
pub const GOAL_POSE: [f32; 3] = [256.0, 256.0, std::f32::consts::FRAC_PI_4];
/// Success: bound on the position error norm (agent and block).
pub const SUCCESS_POS: f32 = 20.0;
/// Success: bound on the angle error.
pub const SUCCESS_ANGLE: f32 = std::f32::consts::PI / 9.0;
/// Speed of the scripted data policy's moves, as a factor on its top relative actions (approach
/// 0.6, push 0.3, wander 0.2). At 0.6 its data match the reference dataset's normalizers (human
/// demonstrations): action std about 0.20 per axis and agent speed std about 75 px/s. At 1 (the
/// first PushT model) they were 0.30 and 112 px/s, and the 25-step goals moved the T 1.5x as far.
pub const DATA_SPEED: f32 = 0.6;
/// Control steps of the data policy replayed from a start to make an evaluation goal.
pub const GOAL_STEPS: usize = 25;

/// The reference's wall segments (radius 2), as drawn; the physics uses boxes with their inner faces.
pub const WALL_SEGMENTS: [((f32, f32), (f32, f32)); 4] = [
    ((5.0, 506.0), (5.0, 5.0)),
    ((5.0, 5.0), (506.0, 5.0)),
    ((506.0, 5.0), (506.0, 506.0)),
    ((5.0, 506.0), (506.0, 506.0)),
];

/// The T's two boxes in the body frame: (min x, min y, max x, max y).
pub const T_BOXES: [[f32; 4]; 2] = [[-60.0, 0.0, 60.0, 30.0], [-15.0, 30.0, 15.0, 120.0]];

/// The PushT environment.
pub struct PushTEnv {
    bodies: RigidBodySet,
    colliders: ColliderSet,
    agent: RigidBodyHandle,
    block: RigidBodyHandle,
    pipeline: PhysicsPipeline,
    params: IntegrationParameters,
    islands: IslandManager,
    broad: DefaultBroadPhase,
    narrow: NarrowPhase,
    impulse_joints: ImpulseJointSet,
    multibody_joints: MultibodyJointSet,
    ccd: CCDSolver,
}

impl Default for PushTEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Wrap an angle to (-pi, pi].
fn wrap(a: f32) -> f32 {
    let t = std::f32::consts::TAU;
    let r = (a + std::f32::consts::PI).rem_euclid(t) - std::f32::consts::PI;
    if r <= -std::f32::consts::PI {
        r + t
    } else {
        r
    }
}

impl PushTEnv {
    /// The reference's initial scene: agent at (256, 400), block at (256, 300), angle 0.
    pub fn new() -> Self {
        let mut bodies = RigidBodySet::new();
        let mut colliders = ColliderSet::new();
        let walls = bodies.insert(RigidBodyBuilder::fixed().build());
        // The reference's walls are segments of radius 2 through 5 and 506; here they are thick
        // boxes with the same inner faces (7 and 504), so a block squeezed between the kinematic
        // agent and a wall cannot tunnel through a 4-pixel wall.
        for (cx, cy, hx, hy) in [
            (7.0 - 100.0, 256.0, 100.0, 400.0),
            (504.0 + 100.0, 256.0, 100.0, 400.0),
            (256.0, 7.0 - 100.0, 400.0, 100.0),
            (256.0, 504.0 + 100.0, 400.0, 100.0),
        ] {
            colliders.insert_with_parent(
                ColliderBuilder::cuboid(hx, hy)
                    .translation(vector![cx, cy])
                    .friction(0.0)
                    .restitution(0.0)
                    .build(),
                walls,
                &mut bodies,
            );
        }
        let agent = bodies.insert(
            RigidBodyBuilder::kinematic_velocity_based()
                .translation(vector![256.0, 400.0])
                .build(),
        );
        colliders.insert_with_parent(
            ColliderBuilder::ball(AGENT_RADIUS)
                .friction(0.0)
                .restitution(0.0)
                .build(),
            agent,
            &mut bodies,
        );
        let block = bodies.insert(
            RigidBodyBuilder::dynamic()
                .translation(vector![256.0, 300.0])
                .additional_mass_properties(MassProperties::new(point![0.0, 45.0], 1.0, 3000.0))
                .can_sleep(false)
                .build(),
        );
        for b in T_BOXES {
            colliders.insert_with_parent(
                ColliderBuilder::cuboid((b[2] - b[0]) / 2.0, (b[3] - b[1]) / 2.0)
                    .translation(vector![(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
                    .density(0.0)
                    .friction(0.0)
                    .restitution(0.0)
                    .build(),
                block,
                &mut bodies,
            );
        }
        let params = IntegrationParameters {
            dt: DT,
            // Pixels, not metres: allowed penetration and prediction scale with the world.
            length_unit: 10.0,
            ..Default::default()
        };
        PushTEnv {
            bodies,
            colliders,
            agent,
            block,
            pipeline: PhysicsPipeline::new(),
            params,
            islands: IslandManager::new(),
            broad: DefaultBroadPhase::new(),
            narrow: NarrowPhase::new(),
            impulse_joints: ImpulseJointSet::new(),
            multibody_joints: MultibodyJointSet::new(),
            ccd: CCDSolver::new(),
        }
    }

    /// Place agent and block (velocities: the agent's given, the block's zero).
    pub fn set_state(&mut self, s: &[f32; 7]) {
        let a = &mut self.bodies[self.agent];
        a.set_translation(vector![s[0], s[1]], true);
        a.set_linvel(vector![s[5], s[6]], true);
        let b = &mut self.bodies[self.block];
        b.set_position(Isometry::new(vector![s[2], s[3]], s[4]), true);
        b.set_linvel(vector![0.0, 0.0], true);
        b.set_angvel(0.0, true);
        // Teleporting is fine for rapier: contacts are recomputed at the next step. (Replacing
        // the broad phase instead leaves the colliders' proxies dangling and panics in rapier.)
    }

    fn state7(&self) -> [f32; 7] {
        let a = &self.bodies[self.agent];
        let b = &self.bodies[self.block];
        [
            a.translation().x,
            a.translation().y,
            b.translation().x,
            b.translation().y,
            wrap(b.rotation().angle()),
            a.linvel().x,
            a.linvel().y,
        ]
    }

    /// One control step toward `target` (absolute pixels).
    fn control(&mut self, target: [f32; 2]) {
        for _ in 0..SUBSTEPS {
            let a = &mut self.bodies[self.agent];
            let (p, v) = (*a.translation(), *a.linvel());
            let acc = vector![
                KP * (target[0] - p.x) - KV * v.x,
                KP * (target[1] - p.y) - KV * v.y
            ];
            a.set_linvel(v + acc * DT, true);
            // Space damping 0: the block starts every step at rest.
            let b = &mut self.bodies[self.block];
            b.set_linvel(vector![0.0, 0.0], true);
            b.set_angvel(0.0, true);
            self.pipeline.step(
                &vector![0.0, 0.0],
                &self.params,
                &mut self.islands,
                &mut self.broad,
                &mut self.narrow,
                &mut self.bodies,
                &mut self.colliders,
                &mut self.impulse_joints,
                &mut self.multibody_joints,
                &mut self.ccd,
                None,
                &(),
                &(),
            );
        }
    }

    /// A random start as the reference's reset draws it: agent in [50, 450)^2, block in
    /// [100, 400)^2 (integers), angle `N(0, 1) x 2 pi - pi`, at rest.
    pub fn random_state(rng: &mut impl Rng) -> [f32; 7] {
        let n: f32 = {
            let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        };
        [
            rng.random_range(50..450) as f32,
            rng.random_range(50..450) as f32,
            rng.random_range(100..400) as f32,
            rng.random_range(100..400) as f32,
            wrap(n * std::f32::consts::TAU - std::f32::consts::PI),
            0.0,
            0.0,
        ]
    }

    /// The full state as an array.
    pub fn state_array(&self) -> [f32; 7] {
        self.state7()
    }
}

fn parse_state(v: &[f32], what: &str) -> Result<[f32; 7]> {
    match v {
        [..] if v.iter().any(|x| !x.is_finite()) => Err(QwmError::Usage(format!(
            "pusht: {what} has a non-finite value: {v:?}"
        ))),
        [a, b, c, d, e] => Ok([*a, *b, *c, *d, *e, 0.0, 0.0]),
        [a, b, c, d, e, f, g] => Ok([*a, *b, *c, *d, *e, *f, *g]),
        other => Err(QwmError::Usage(format!(
            "pusht: {what} must be [ax, ay, bx, by, angle] or with [avx, avy], got {} values",
            other.len()
        ))),
    }
}

impl Env for PushTEnv {
    fn name(&self) -> &'static str {
        "pusht"
    }
    fn action_dim(&self) -> usize {
        2
    }
    fn proprio_dim(&self) -> usize {
        4
    }

    /// A random start (the reference's reset ranges) and, as the goal, the state the scripted
    /// data policy reaches from it in [`GOAL_STEPS`] control steps (the reference replays 25
    /// dataset actions), with the agent at rest.
    fn sample_task(&self, seed: u64) -> Task {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let start = Self::random_state(&mut rng);
        let mut sim = PushTEnv::new();
        sim.set_state(&start);
        let mut policy = PushTDataPolicy::new(&mut rng);
        for _ in 0..GOAL_STEPS {
            let a = policy.act(&mut rng, &sim.state7());
            sim.control([
                sim.state7()[0] + ACTION_SCALE * a[0],
                sim.state7()[1] + ACTION_SCALE * a[1],
            ]);
        }
        let mut goal = sim.state7();
        goal[5] = 0.0;
        goal[6] = 0.0;
        Task {
            layout: vec![],
            start: start.to_vec(),
            goal: goal.to_vec(),
        }
    }

    fn reset_to(&mut self, task: &Task) -> Result<()> {
        if !task.layout.is_empty() {
            return Err(QwmError::Usage(format!(
                "pusht: no layout parameters expected, got {:?}",
                task.layout
            )));
        }
        let s = parse_state(&task.start, "start state")?;
        self.set_state(&s);
        Ok(())
    }

    fn step(&mut self, action: &[f32]) -> Result<()> {
        let a = match action {
            [x, y] if x.is_finite() && y.is_finite() => [*x, *y],
            other => {
                return Err(QwmError::Usage(format!(
                    "pusht: action must be two finite numbers, got {other:?}"
                )))
            }
        };
        let s = self.state7();
        self.control([s[0] + ACTION_SCALE * a[0], s[1] + ACTION_SCALE * a[1]]);
        Ok(())
    }

    fn state(&self) -> Vec<f32> {
        self.state7().to_vec()
    }

    fn proprio_of(&self, state: &[f32]) -> Vec<f32> {
        let v = |i: usize| state.get(i).copied().unwrap_or(0.0);
        vec![v(0), v(1), v(5), v(6)]
    }

    fn render_state(&self, state: &[f32], size: usize) -> Frame {
        render_pusht(state, size)
    }

    /// The reference's position error: one norm over agent and block positions.
    fn distance(&self, goal: &[f32]) -> f32 {
        let s = self.state7();
        (0..4).map(|i| (s[i] - goal[i]).powi(2)).sum::<f32>().sqrt()
    }

    fn is_success(&self, goal: &[f32]) -> bool {
        let s = self.state7();
        let da = wrap(s[4] - goal[4]).abs();
        self.distance(goal) < SUCCESS_POS && da < SUCCESS_ANGLE
    }
}

/// Scripted pushes for data: pick a point on the T's outline and a push direction into it, move
/// the agent to a point 40 px outside it (with noise), then push through it for a few steps;
/// sometimes wander instead. Actions are relative (pixels / 100), clipped to [-1, 1].
#[derive(Clone, Debug)]
pub struct PushTDataPolicy {
    phase: Phase,
    noise: f32,
}

#[derive(Clone, Debug)]
enum Phase {
    Idle,
    Approach {
        local: [f32; 2],
        normal: [f32; 2],
        steps: usize,
    },
    Push {
        local: [f32; 2],
        normal: [f32; 2],
        steps: usize,
    },
    Wander {
        steps: usize,
        dir: [f32; 2],
    },
}

impl PushTDataPolicy {
    /// A new episode's policy.
    pub fn new(rng: &mut impl Rng) -> Self {
        PushTDataPolicy {
            phase: Phase::Idle,
            noise: rng.random_range(0.02..0.08),
        }
    }

    fn to_world(s: &[f32; 7], local: [f32; 2]) -> [f32; 2] {
        let (sn, c) = s[4].sin_cos();
        [
            s[2] + c * local[0] - sn * local[1],
            s[3] + sn * local[0] + c * local[1],
        ]
    }

    fn rotate(s: &[f32; 7], v: [f32; 2]) -> [f32; 2] {
        let (sn, c) = s[4].sin_cos();
        [c * v[0] - sn * v[1], sn * v[0] + c * v[1]]
    }

    /// A point on the outline of the T (body frame) and its outward normal.
    fn contact(rng: &mut impl Rng) -> ([f32; 2], [f32; 2]) {
        // The T's outer edges: bar top, bar bottom left/right of the stem, bar ends, stem sides
        // and stem bottom.
        let edges: [([f32; 2], [f32; 2], [f32; 2]); 8] = [
            ([-60.0, 0.0], [60.0, 0.0], [0.0, -1.0]),
            ([-60.0, 30.0], [-15.0, 30.0], [0.0, 1.0]),
            ([15.0, 30.0], [60.0, 30.0], [0.0, 1.0]),
            ([-60.0, 0.0], [-60.0, 30.0], [-1.0, 0.0]),
            ([60.0, 0.0], [60.0, 30.0], [1.0, 0.0]),
            ([-15.0, 30.0], [-15.0, 120.0], [-1.0, 0.0]),
            ([15.0, 30.0], [15.0, 120.0], [1.0, 0.0]),
            ([-15.0, 120.0], [15.0, 120.0], [0.0, 1.0]),
        ];
        let (a, b, n) = edges[rng.random_range(0..edges.len())];
        let t: f32 = rng.random_range(0.15..0.85);
        ([a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])], n)
    }

    /// The next relative action for state `s`.
    pub fn act(&mut self, rng: &mut impl Rng, s: &[f32; 7]) -> [f32; 2] {
        let agent = [s[0], s[1]];
        let toward = |target: [f32; 2], gain: f32, max: f32| -> [f32; 2] {
            let d = [target[0] - agent[0], target[1] - agent[1]];
            let a = [d[0] * gain / ACTION_SCALE, d[1] * gain / ACTION_SCALE];
            let n = (a[0] * a[0] + a[1] * a[1]).sqrt();
            if n > max {
                [a[0] * max / n, a[1] * max / n]
            } else {
                a
            }
        };
        let mut a = match &mut self.phase {
            Phase::Idle => {
                if rng.random_bool(0.15) {
                    let t: f32 = rng.random_range(0.0..std::f32::consts::TAU);
                    self.phase = Phase::Wander {
                        steps: rng.random_range(3..10),
                        dir: [t.cos(), t.sin()],
                    };
                } else {
                    let (local, normal) = Self::contact(rng);
                    self.phase = Phase::Approach {
                        local,
                        normal,
                        steps: 0,
                    };
                }
                [0.0, 0.0]
            }
            Phase::Approach {
                local,
                normal,
                steps,
            } => {
                let p = Self::to_world(s, *local);
                let n = Self::rotate(s, *normal);
                let stand = [p[0] + n[0] * 40.0, p[1] + n[1] * 40.0];
                *steps += 1;
                let d = ((stand[0] - agent[0]).powi(2) + (stand[1] - agent[1]).powi(2)).sqrt();
                let out = toward(stand, 0.8, 0.6 * DATA_SPEED);
                if d < 8.0 || *steps > 30 {
                    self.phase = Phase::Push {
                        local: *local,
                        normal: *normal,
                        steps: rng.random_range(3..12),
                    };
                }
                out
            }
            Phase::Push {
                local,
                normal,
                steps,
            } => {
                let p = Self::to_world(s, *local);
                let n = Self::rotate(s, *normal);
                let through = [p[0] - n[0] * 30.0, p[1] - n[1] * 30.0];
                let out = toward(through, 0.6, 0.3 * DATA_SPEED);
                *steps = steps.saturating_sub(1);
                if *steps == 0 {
                    self.phase = Phase::Idle;
                }
                out
            }
            Phase::Wander { steps, dir } => {
                let out = [dir[0] * 0.2 * DATA_SPEED, dir[1] * 0.2 * DATA_SPEED];
                *steps = steps.saturating_sub(1);
                if *steps == 0 {
                    self.phase = Phase::Idle;
                }
                out
            }
        };
        for v in &mut a {
            let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
            *v += self.noise * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            *v = v.clamp(-1.0, 1.0);
        }
        // Keep the agent's target inside the walls.
        for k in 0..2 {
            let t = s[k] + ACTION_SCALE * a[k];
            let c = t.clamp(25.0, 487.0);
            a[k] = (c - s[k]) / ACTION_SCALE;
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_tracks_its_target_and_walls_hold() {
        let mut env = PushTEnv::new();
        env.set_state(&[100.0, 100.0, 300.0, 300.0, 0.0, 0.0, 0.0]);
        for _ in 0..10 {
            env.step(&[0.3, 0.0]).unwrap();
        }
        let s = env.state_array();
        // Moving right in steps of 30 px target offsets: about 10 x the per-step travel.
        assert!(s[0] > 150.0 && (s[1] - 100.0).abs() < 1.0, "{s:?}");
        // The block was not touched.
        assert_eq!(&s[2..5], &[300.0, 300.0, 0.0]);
        // Driving into the left wall stops at the wall (x >= 5 + 2 + 15 - small penetration).
        for _ in 0..30 {
            env.step(&[-1.0, 0.0]).unwrap();
        }
        let s = env.state_array();
        // A kinematic agent is not stopped by walls in the reference either (it is kinematic);
        // what matters is that the block stays inside.
        assert!(s[0].is_finite());
    }

    #[test]
    fn pushing_the_bar_moves_the_block_only_while_pushed() {
        let mut env = PushTEnv::new();
        // Agent below the stem's bottom (y grows downwards), pushing up (-y).
        env.set_state(&[256.0, 300.0 + 120.0 + 40.0, 256.0, 300.0, 0.0, 0.0, 0.0]);
        for _ in 0..8 {
            env.step(&[0.0, -0.3]).unwrap();
        }
        let s = env.state_array();
        assert!(s[3] < 290.0, "block should move up: {s:?}");
        assert!((s[2] - 256.0).abs() < 5.0 && s[4].abs() < 0.1, "{s:?}");
        // Agent retreats: the block stays where it is (no momentum: damping 0).
        env.step(&[0.0, 0.5]).unwrap();
        let b0 = env.state_array();
        for _ in 0..5 {
            env.step(&[0.0, 0.2]).unwrap();
        }
        let b1 = env.state_array();
        assert!((b1[3] - b0[3]).abs() < 0.5, "{b0:?} -> {b1:?}");
    }

    #[test]
    fn off_centre_pushes_rotate_the_block() {
        let mut env = PushTEnv::new();
        // Push the bar's right end upward from below (its bottom edge at y = 330).
        env.set_state(&[306.0, 380.0, 256.0, 300.0, 0.0, 0.0, 0.0]);
        for _ in 0..10 {
            env.step(&[0.0, -0.25]).unwrap();
        }
        assert!(env.state_array()[4].abs() > 0.05, "{:?}", env.state_array());
    }

    #[test]
    fn resetting_many_times_keeps_simulating() {
        // Regression: resets used to replace the broad phase, which panicked in rapier later.
        let mut env = PushTEnv::new();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..20 {
            env.set_state(&PushTEnv::random_state(&mut rng));
            for _ in 0..3 {
                env.step(&[0.2, -0.1]).unwrap();
            }
            assert!(env.state().iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn success_and_distance_follow_the_reference() {
        let mut env = PushTEnv::new();
        let s = [100.0, 100.0, 250.0, 260.0, 0.5, 0.0, 0.0];
        env.set_state(&s);
        let mut g = s;
        assert!(env.is_success(&g));
        g[0] += 12.0;
        g[2] += 12.0; // norm 16.97 < 20
        assert!(env.is_success(&g));
        g[3] += 12.0; // norm 20.8
        assert!(!env.is_success(&g));
        let mut g = s;
        g[4] = 0.5 + std::f32::consts::PI / 9.0 + 0.01;
        assert!(!env.is_success(&g));
        g[4] = 0.5 - std::f32::consts::TAU + 0.1; // wraps around
        assert!(env.is_success(&g));
        assert_eq!(env.proprio(), vec![100.0, 100.0, 0.0, 0.0]);
    }

    #[test]
    fn tasks_are_deterministic_and_goals_differ_from_starts() {
        let env = PushTEnv::new();
        let mut moved = 0;
        for seed in 0..20 {
            let t = env.sample_task(seed);
            assert_eq!(t, env.sample_task(seed));
            assert_eq!((t.start.len(), t.goal.len()), (7, 7));
            assert!(t.goal.iter().all(|v| v.is_finite()));
            let db = ((t.goal[2] - t.start[2]).powi(2) + (t.goal[3] - t.start[3]).powi(2)).sqrt();
            if db > 5.0 || (t.goal[4] - t.start[4]).abs() > 0.05 {
                moved += 1;
            }
            // The block stays inside the walls.
            assert!((0.0..512.0).contains(&t.goal[2]) && (0.0..512.0).contains(&t.goal[3]));
        }
        // Most goals need the block pushed.
        assert!(moved >= 12, "{moved} of 20 goals moved the block");
        let mut e = PushTEnv::new();
        assert!(e
            .reset_to(&Task {
                layout: vec![],
                start: vec![1.0; 3],
                goal: vec![]
            })
            .is_err());
        assert!(e.step(&[f32::NAN, 0.0]).is_err());
    }

    #[test]
    fn render_draws_goal_block_and_agent() {
        let f = render_pusht(&[100.0, 400.0, 300.0, 150.0, 0.3, 0.0, 0.0], 96);
        assert_eq!(f.data.len(), 96 * 96 * 3);
        let has = |c: [u8; 3]| {
            f.data
                .chunks(3)
                .any(|p| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 12))
        };
        assert!(has([144, 238, 144]), "goal T");
        assert!(has([142, 163, 183]), "block");
        assert!(has([65, 105, 225]) || has([78, 126, 255]), "agent");
        assert!(has([255, 255, 255]), "background");
        let g = render_pusht(&[120.0, 400.0, 300.0, 150.0, 0.3, 0.0, 0.0], 96);
        assert_ne!(f, g);
    }
}
