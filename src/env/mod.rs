//! Headless simulated environments: the `Env` trait, rendering helpers and dataset writing.
//!
//! Environments know nothing about models: they step actions, report state and proprioception,
//! render RGB frames (what a camera would give) and judge success against a goal state.

pub mod dataset;
pub mod pointmaze;
pub mod pusht;
pub mod render;
pub mod wall;

use crate::error::{QwmError, Result};

/// An RGB frame, row-major height x width x 3, as a camera would deliver it.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width * 3` bytes, HWC order.
    pub data: Vec<u8>,
}

/// One planning task: an environment layout plus a start and a goal state.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Task {
    /// Environment-specific layout parameters (Wall: `[wall_x, door_y]`).
    pub layout: Vec<f32>,
    /// Start state.
    pub start: Vec<f32>,
    /// Goal state.
    pub goal: Vec<f32>,
}

/// A headless simulated environment.
pub trait Env: Send {
    /// Short name, as used on the command line (`wall`).
    fn name(&self) -> &'static str;
    /// Dimension of one environment action.
    fn action_dim(&self) -> usize;
    /// Dimension of the proprioceptive vector.
    fn proprio_dim(&self) -> usize;
    /// Sample a start/goal pair (and layout) from a seed; deterministic per seed.
    fn sample_task(&self, seed: u64) -> Task;
    /// Reset the environment to a task's layout and start state.
    fn reset_to(&mut self, task: &Task) -> Result<()>;
    /// Apply one action.
    fn step(&mut self, action: &[f32]) -> Result<()>;
    /// The full simulator state.
    fn state(&self) -> Vec<f32>;
    /// Proprioception of a given state (what the robot senses about itself).
    fn proprio_of(&self, state: &[f32]) -> Vec<f32>;
    /// Render the current state as an RGB frame of `size` x `size`.
    fn render(&self, size: usize) -> Frame {
        self.render_state(&self.state(), size)
    }
    /// Render an arbitrary state in the current layout (used for goal frames).
    fn render_state(&self, state: &[f32], size: usize) -> Frame;
    /// Task-space distance from the current state to a goal state.
    fn distance(&self, goal: &[f32]) -> f32;
    /// Whether the current state reaches the goal by the environment's own criterion.
    fn is_success(&self, goal: &[f32]) -> bool;
    /// Proprioception of the current state.
    fn proprio(&self) -> Vec<f32> {
        self.proprio_of(&self.state())
    }
}

/// Names of the environments this build knows.
pub const ENV_NAMES: &[&str] = &["wall", "pointmaze", "pusht"];

/// Build an environment by name.
pub fn make_env(name: &str) -> Result<Box<dyn Env>> {
    match name {
        "wall" => Ok(Box::new(wall::WallEnv::new())),
        "pointmaze" => Ok(Box::new(pointmaze::PointMazeEnv::new())),
        "pusht" => Ok(Box::new(pusht::PushTEnv::new())),
        other => Err(QwmError::Usage(format!(
            "unknown environment '{other}' (--env): known environments are {}",
            ENV_NAMES.join(", ")
        ))),
    }
}

/// qwm's simulated environments, as `--env` names them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum EnvKind {
    /// Two rooms joined by a door (DINO-WM's Wall).
    Wall,
    /// A point mass in a maze (D4RL's PointMaze).
    Pointmaze,
    /// Push a T-shaped block onto a target pose.
    Pusht,
}

impl EnvKind {
    /// Lower-case name, as manifests and flags write it.
    pub fn name(self) -> &'static str {
        match self {
            EnvKind::Wall => "wall",
            EnvKind::Pointmaze => "pointmaze",
            EnvKind::Pusht => "pusht",
        }
    }
}

impl std::fmt::Display for EnvKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The task seeds of qwm's runs: evaluations use DINO-WM's evaluation seeds (`99 n + 1` for seed
/// 0), calibrations (quantization statistics, `qwm fit`'s probes) a disjoint set (`99 n + 2`).
pub struct TaskSeeds;

impl TaskSeeds {
    /// Episode `episode` of an evaluation run with seed `seed`: `99 (seed + episode) + 1`.
    pub fn evaluation(seed: u64, episode: usize) -> u64 {
        99 * (seed + episode as u64) + 1
    }

    /// Calibration episode `n`: `99 n + 2`, never an evaluation seed.
    pub fn calibration(n: usize) -> u64 {
        99 * n as u64 + 2
    }
}
