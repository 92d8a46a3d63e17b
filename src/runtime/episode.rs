//! MPC episodes: observe, encode, plan with the world model, act, repeat; success is judged by
//! the environment here, never inside the planner.

use crate::env::{Env, Frame, Task};
use crate::error::{QwmError, Result};
use crate::plan::{Planner, Rollout};
use crate::runtime::model::{Latent, WorldModel};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Model-predictive control settings.
#[derive(Clone, Debug, Serialize)]
pub struct MpcConfig {
    /// Planning horizon in model steps.
    pub horizon: usize,
    /// Planned model actions executed before replanning.
    pub n_taken: usize,
    /// Most MPC iterations per episode.
    pub max_iter: usize,
    /// Candidates per predictor call (chunking changes speed and memory, not results).
    pub chunk: usize,
}

impl MpcConfig {
    /// Validate.
    pub fn validate(&self) -> Result<()> {
        if self.horizon == 0 {
            return Err(QwmError::Usage("--horizon must be at least 1".into()));
        }
        if self.n_taken == 0 || self.n_taken > self.horizon {
            return Err(QwmError::Usage(format!(
                "--n-taken {} must be in 1..=--horizon ({})",
                self.n_taken, self.horizon
            )));
        }
        if self.max_iter == 0 {
            return Err(QwmError::Usage("--max-iter must be at least 1".into()));
        }
        if self.chunk == 0 {
            return Err(QwmError::Usage("--chunk must be at least 1".into()));
        }
        Ok(())
    }
}

/// Scores candidates by rolling them out in the world model from the current observation.
pub struct ModelRollout<'a> {
    /// The model.
    pub wm: &'a mut WorldModel,
    /// Observed history (oldest first).
    pub history: &'a [Latent],
    /// Actions between history frames.
    pub past_actions: &'a [Vec<f32>],
    /// Goal latent.
    pub goal: &'a Latent,
    /// Candidates per predictor call.
    pub chunk: usize,
}

impl Rollout for ModelRollout<'_> {
    fn action_dim(&self) -> usize {
        self.wm.manifest.model_action_dim()
    }

    fn action_bounds(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        self.wm.normalized_action_bounds()
    }

    fn evaluate(&mut self, actions: &[f32], batch: usize, horizon: usize) -> Result<Vec<f32>> {
        let per = horizon * self.action_dim();
        let mut scores = Vec::with_capacity(batch);
        let mut start = 0;
        while start < batch {
            let n = self.chunk.min(batch - start);
            let pred = self.wm.rollout(
                self.history,
                self.past_actions,
                &actions[start * per..(start + n) * per],
                n,
                horizon,
            )?;
            scores.extend(self.wm.objective(&pred, self.goal));
            start += n;
        }
        Ok(scores)
    }
}

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

/// Run one episode. `frames`, when given, receives every rendered observation (for --save-frames).
#[allow(clippy::too_many_arguments)]
pub fn run_episode(
    wm: &mut WorldModel,
    env: &mut dyn Env,
    planner: &dyn Planner,
    cfg: &MpcConfig,
    index: usize,
    task_seed: u64,
    plan_seed: u64,
    mut frames: Option<&mut Vec<Frame>>,
) -> Result<EpisodeResult> {
    cfg.validate()?;
    let task = env.sample_task(task_seed);
    env.reset_to(&task)?;
    let size = wm.manifest.image_size;
    let a_dim = wm.manifest.model_action_dim();
    let goal_frame = env.render_state(&task.goal, size);
    let goal_proprio = env.proprio_of(&task.goal);
    let goal = wm.encode(&[&goal_frame], &[&goal_proprio])?.remove(0);
    let mut rng = crate::plan::rng_for(plan_seed, index as u64);
    let initial_distance = env.distance(&task.goal);
    let mut history: Vec<Latent> = Vec::new();
    let mut past_actions: Vec<Vec<f32>> = Vec::new();
    let mut warm: Option<Vec<f32>> = None;
    let (mut success, mut final_objective, mut non_finite, mut env_steps) = (false, f32::NAN, 0, 0);
    let mut timings = Vec::new();
    let keep = wm.manifest.num_hist;
    for _ in 0..cfg.max_iter {
        let mut t = StepTiming::default();
        let t0 = Instant::now();
        let frame = env.render(size);
        let proprio = env.proprio();
        let z = wm.encode(&[&frame], &[&proprio])?.remove(0);
        t.encode_s = t0.elapsed().as_secs_f64();
        if let Some(f) = frames.as_deref_mut() {
            f.push(frame);
        }
        history.push(z);
        // Keep the last num_hist frames and the actions between them.
        if history.len() > keep {
            history.drain(..history.len() - keep);
        }
        let n_past = history.len() - 1;
        past_actions.drain(..past_actions.len().saturating_sub(n_past));
        let before = wm.timers.predict;
        let t1 = Instant::now();
        let outcome = {
            let mut r = ModelRollout {
                wm,
                history: &history,
                past_actions: &past_actions,
                goal: &goal,
                chunk: cfg.chunk,
            };
            planner.plan(&mut r, cfg.horizon, warm.as_deref(), &mut rng)?
        };
        t.plan_s = t1.elapsed().as_secs_f64();
        t.predict_s = (wm.timers.predict - before).as_secs_f64();
        final_objective = outcome.objective;
        non_finite += outcome.non_finite;
        // Execute the first n_taken model actions (each is frameskip environment steps).
        let t2 = Instant::now();
        for k in 0..cfg.n_taken {
            let a = &outcome.actions[k * a_dim..(k + 1) * a_dim];
            for env_a in wm.denormalize_action(a) {
                env.step(&env_a)?;
                env_steps += 1;
            }
            past_actions.push(a.to_vec());
            if keep > 1 && k + 1 < cfg.n_taken {
                // With a multi-frame history every model step's frame is an observation.
                let te = Instant::now();
                let frame = env.render(size);
                let z = wm.encode(&[&frame], &[&env.proprio()])?.remove(0);
                history.push(z);
                t.encode_s += te.elapsed().as_secs_f64();
            }
        }
        // Warm start: the remainder of the plan, padded with zeros (the normalized mean action).
        let mut rest = outcome.actions[cfg.n_taken * a_dim..].to_vec();
        rest.resize(cfg.horizon * a_dim, 0.0);
        warm = Some(rest);
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
