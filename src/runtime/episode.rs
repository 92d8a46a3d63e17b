//! MPC episodes in qwm's simulators: a loop over an [`Env`] and a [`Controller`] (observe, act,
//! step the environment, repeat); success is judged by the environment here, never inside the
//! planner or the controller.

use crate::env::{Env, Frame, Task};
use crate::error::{QwmError, Result};
use crate::runtime::controller::Controller;
/// Scoring candidates through the model, as the controller does (kept here for callers of the
/// episode module).
pub use crate::runtime::controller::ModelRollout;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One MPC iteration's timings (seconds).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepTiming {
    /// Encoding the observation.
    pub encode_s: f64,
    /// The whole planning call.
    pub plan_s: f64,
    /// Inside predictor calls during planning.
    pub predict_s: f64,
    /// Executing actions in the environment (and rendering).
    pub env_s: f64,
}

/// Result of one episode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpisodeResult {
    /// Episode index in the run.
    pub index: usize,
    /// Task seed (start/goal/layout).
    pub task_seed: u64,
    /// The task.
    pub task: Task,
    /// Reached the goal (environment's criterion) after some MPC iteration.
    pub success: bool,
    /// Distance to the goal at the start.
    pub initial_distance: f32,
    /// Distance to the goal when the episode ended.
    pub final_distance: f32,
    /// Planner's objective of its last plan.
    pub final_objective: f32,
    /// MPC iterations run.
    pub mpc_steps: usize,
    /// Environment steps executed.
    pub env_steps: usize,
    /// Candidates with NaN/Inf objectives.
    pub non_finite_candidates: usize,
    /// Per-iteration timings.
    pub timings: Vec<StepTiming>,
    /// Final state.
    pub final_state: Vec<f32>,
}

/// Run one episode: episode `index` of the controller's seed (its planner noise stream) on the
/// task `task_seed` draws, for at most `max_iter` MPC steps. `frames`, when given, receives
/// every observation the controller acted on (for --save-frames).
pub fn run_episode(
    ctl: &mut Controller,
    env: &mut dyn Env,
    max_iter: usize,
    index: usize,
    task_seed: u64,
    mut frames: Option<&mut Vec<Frame>>,
) -> Result<EpisodeResult> {
    if max_iter == 0 {
        return Err(QwmError::Usage("--max-iter must be at least 1".into()));
    }
    ctl.reset_to(index as u64);
    let task = env.sample_task(task_seed);
    env.reset_to(&task)?;
    let size = ctl.model().manifest.image_size;
    let frameskip = ctl.model().manifest.frameskip;
    let action_dim = ctl.model().manifest.action_dim;
    let goal_frame = env.render_state(&task.goal, size);
    let goal_proprio = env.proprio_of(&task.goal);
    ctl.set_goal(&goal_frame, &goal_proprio)?;
    let initial_distance = env.distance(&task.goal);
    let intermediate = ctl.needs_intermediate_frames();
    let n_taken = ctl.shape().n_taken;
    let (mut success, mut final_objective, mut non_finite, mut env_steps) = (false, f32::NAN, 0, 0);
    let mut timings = Vec::new();
    for _ in 0..max_iter {
        let t0 = Instant::now();
        let frame = env.render(size);
        let proprio = env.proprio();
        let render_s = t0.elapsed().as_secs_f64();
        let act = ctl.act(&frame, &proprio)?;
        if let Some(f) = frames.as_deref_mut() {
            f.push(frame);
        }
        let mut t = StepTiming {
            encode_s: render_s + act.timing.encode_s,
            plan_s: act.timing.plan_s,
            predict_s: act.timing.predict_s,
            env_s: 0.0,
        };
        final_objective = act.objective;
        non_finite += act.non_finite;
        // Execute the n_taken model actions (each is frameskip environment steps).
        let t2 = Instant::now();
        for (k, step) in act.actions.chunks(frameskip * action_dim).enumerate() {
            for env_a in step.chunks(action_dim) {
                env.step(env_a)?;
                env_steps += 1;
            }
            if intermediate && k + 1 < n_taken {
                // With a multi-frame history every model step's frame is an observation.
                let frame = env.render(size);
                t.encode_s += ctl.observe(&frame, &env.proprio())?;
            }
        }
        t.env_s = t2.elapsed().as_secs_f64();
        timings.push(t);
        if env.is_success(&task.goal) {
            success = true;
            break;
        }
    }
    Ok(EpisodeResult {
        index,
        task_seed,
        success,
        initial_distance,
        final_distance: env.distance(&task.goal),
        final_objective,
        mpc_steps: timings.len(),
        env_steps,
        non_finite_candidates: non_finite,
        timings,
        final_state: env.state(),
        task,
    })
}
