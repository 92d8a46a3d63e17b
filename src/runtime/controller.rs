//! The MPC controller a robot's own loop calls: a world model on an engine plus a planner,
//! independent of any simulator.
//!
//! The caller owns the camera, the proprioception, the goal and the actuators:
//! [`Controller::set_goal`] encodes the goal once; every [`Controller::act`] encodes the current
//! observation, plans with the predictor and returns the executed part of the plan (`n_taken`
//! model actions, each `frameskip` environment actions, denormalized). The rest of the plan warm
//! starts the next call. [`Controller::reset`] starts the next episode: a fresh history and
//! warm start, and the planner noise stream of that episode, so that episode `i` of
//! `qwm plan --seed S` is reproduced by `Controller` seed `S`, `reset_to(i)`.
//!
//! qwm's own episode runner ([`crate::runtime::episode`]) is a loop over an `Env` and this
//! controller; `qwm serve`, the C ABI and the Python module are thin shells around it.

use crate::bundle::Bundle;
use crate::engine::{make_backend_with, Backend, LoadOptions};
use crate::env::Frame;
use crate::error::{QwmError, Result};
use crate::plan::{cem::Cem, mppi::Mppi, Planner, PlannerKind, Rollout};
use crate::runtime::model::{Latent, WorldModel};
use crate::runtime::settings::{ControlArgs, RunArgs};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The shape of each plan: horizon, executed part, candidates per predictor call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanShape {
    /// Planning horizon in model steps.
    pub horizon: usize,
    /// Planned model actions executed per [`Controller::act`].
    pub n_taken: usize,
    /// Candidates per predictor call (chunking changes speed and memory, not results).
    pub chunk: usize,
}

impl PlanShape {
    /// Validate, naming the flags.
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

/// Timings of one [`Controller::act`] (seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActTiming {
    /// Preprocessing and encoding the observation.
    pub encode_s: f64,
    /// The whole planning call.
    pub plan_s: f64,
    /// Inside predictor calls during planning.
    pub predict_s: f64,
}

/// What one [`Controller::act`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Act {
    /// Environment actions to execute, in order: `n_taken * frameskip` rows of `action_dim`
    /// values, denormalized (`[n_taken * frameskip, action_dim]`, row-major).
    pub actions: Vec<f32>,
    /// The same actions as the model sees them: `n_taken` rows of `frameskip * action_dim`
    /// normalized values.
    pub model_actions: Vec<f32>,
    /// The planner's objective of the chosen plan (lower is better).
    pub objective: f32,
    /// Candidates whose objective was NaN/Inf during this plan.
    pub non_finite: usize,
    /// Where the time went.
    pub timing: ActTiming,
}

/// Counters since the controller was built, and memory now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControllerStats {
    /// Current episode (planner noise stream).
    pub episode: u64,
    /// `act` calls in this episode.
    pub acts_in_episode: u64,
    /// `act` calls in all.
    pub acts: u64,
    /// Observations encoded in all (goals, `act` and `observe` frames).
    pub encodes: u64,
    /// Seconds in encoding, summed.
    pub encode_s: f64,
    /// Seconds in planning, summed.
    pub plan_s: f64,
    /// Seconds inside predictor calls, summed.
    pub predict_s: f64,
    /// The last `act`'s timings.
    pub last: ActTiming,
    /// Heap bytes in use now (counted by qwm's allocator where it is installed, else 0).
    pub heap_bytes: u64,
    /// Heap high-water mark since start (0 without the counting allocator).
    pub heap_peak_bytes: u64,
    /// Peak resident set size of the process.
    pub peak_rss_bytes: u64,
    /// The memory limit in force, if any.
    pub mem_limit_bytes: Option<u64>,
    /// Candidates per predictor call.
    pub chunk: usize,
}

/// How a controller was fitted into a memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetFit {
    /// The limit.
    pub limit_bytes: u64,
    /// Candidates per predictor call chosen (or checked) for it.
    pub chunk: usize,
    /// Predicted heap peak of a plan.
    pub predicted_peak_bytes: f64,
    /// Heap bytes per candidate in a predictor call, as measured.
    pub per_candidate_bytes: f64,
}

/// The robot-facing MPC controller (see the module docs).
pub struct Controller {
    wm: WorldModel,
    planner: Box<dyn Planner>,
    shape: PlanShape,
    seed: u64,
    episode: u64,
    rng: rand_chacha::ChaCha8Rng,
    goal: Option<Latent>,
    frame_size: Option<(usize, usize)>,
    history: Vec<Latent>,
    past_actions: Vec<Vec<f32>>,
    /// Frames observed (by `observe`) since the last `act`.
    observed: usize,
    acted: bool,
    warm: Option<Vec<f32>>,
    stats: ControllerStats,
    budget: Option<BudgetFit>,
}

/// The planner `control` describes.
pub fn make_planner(control: &ControlArgs) -> Result<Box<dyn Planner>> {
    Ok(match control.planner {
        PlannerKind::Cem => Box::new(Cem::new(
            control.samples,
            control.topk,
            control.opt_steps,
            control.var_scale,
        )?),
        PlannerKind::Mppi => Box::new(Mppi::new(
            control.samples,
            control.opt_steps,
            control.var_scale,
            control.temperature,
        )?),
    })
}

impl Controller {
    /// A controller over a loaded model with a given planner. `seed` seeds the planner noise
    /// (episode `e` uses stream `e` of it); the controller starts at episode 0 without a goal.
    pub fn new(
        wm: WorldModel,
        planner: Box<dyn Planner>,
        shape: PlanShape,
        seed: u64,
    ) -> Result<Controller> {
        shape.validate()?;
        let stats = ControllerStats {
            chunk: shape.chunk,
            ..ControllerStats::default()
        };
        Ok(Controller {
            wm,
            planner,
            shape,
            seed,
            episode: 0,
            rng: crate::plan::rng_for(seed, 0),
            goal: None,
            frame_size: None,
            history: Vec::new(),
            past_actions: Vec::new(),
            observed: 0,
            acted: false,
            warm: None,
            stats,
            budget: None,
        })
    }

    /// Load a bundle's graphs on a backend and build the controller `control` describes, fitted
    /// into `mem_limit` when one is given (the chunk of candidates per predictor call is then
    /// chosen from a measurement, or an explicit `--chunk` is checked against it). The limit
    /// itself must already be set on qwm's allocator ([`RunArgs::resolve`] does that).
    pub fn load(
        bundle: &Bundle,
        backend: &dyn Backend,
        opts: &LoadOptions,
        control: &ControlArgs,
        mem_limit: Option<u64>,
        seed: u64,
    ) -> Result<Controller> {
        let planner = make_planner(control)?;
        let mut shape = PlanShape {
            horizon: control.horizon,
            n_taken: control.n_taken,
            chunk: control.chunk.unwrap_or(control.samples),
        };
        shape.validate()?;
        crate::runtime::budget::check_request(
            &bundle.manifest,
            control.samples,
            control.horizon,
            control.chunk,
            &format!(
                "--samples {} x --horizon {} (--chunk {})",
                control.samples, control.horizon, shape.chunk
            ),
        )?;
        let mut wm = WorldModel::load(bundle, backend, opts)?;
        let mut budget = None;
        if let Some(l) = mem_limit {
            // Predict the peak of one chunk and fit the chunk to the limit (results do not
            // depend on the chunk; only speed and memory do).
            let cost = crate::runtime::budget::measure(&mut wm, opts.threads)?;
            let (fit, predicted) = crate::runtime::budget::choose_chunk(
                &cost,
                &wm,
                l as usize,
                control.samples,
                control.horizon,
            )?;
            if let Some(c) = control.chunk {
                if c > fit {
                    return Err(QwmError::Usage(format!(
                        "--chunk {c} does not fit --mem-limit {}: at most {fit} candidates per predictor call fit ({:.0} bytes per candidate); lower --chunk or raise the limit",
                        crate::util::fmt::fmt_bytes(l),
                        cost.per_candidate
                    )));
                }
            } else {
                shape.chunk = fit;
            }
            budget = Some(BudgetFit {
                limit_bytes: l,
                chunk: shape.chunk,
                predicted_peak_bytes: predicted,
                per_candidate_bytes: cost.per_candidate,
            });
        }
        let mut c = Controller::new(wm, planner, shape, seed)?;
        c.stats.mem_limit_bytes = mem_limit;
        c.budget = budget;
        Ok(c)
    }

    /// Everything from a bundle folder and the run flags (threads, engine, board profile,
    /// memory limit): what `qwm serve`, the C ABI and the Python module call.
    pub fn open(
        model: &Path,
        control: &ControlArgs,
        run: &RunArgs,
        seed: u64,
    ) -> Result<Controller> {
        let resolved = run.resolve()?;
        let backend = make_backend_with(resolved.backend, run.ort_lib.as_deref())?;
        let bundle = Bundle::open(model)?;
        Controller::load(
            &bundle,
            backend.as_ref(),
            &run.load_options(resolved.threads),
            control,
            resolved.mem_limit,
            seed,
        )
    }

    /// The world model (its manifest says the frame size, action and proprio widths).
    pub fn model(&self) -> &WorldModel {
        &self.wm
    }

    /// Give the world model back.
    pub fn into_model(self) -> WorldModel {
        self.wm
    }

    /// The world model, mutably (timers, taps).
    pub fn model_mut(&mut self) -> &mut WorldModel {
        &mut self.wm
    }

    /// The plan's shape (the chunk as fitted to a memory limit).
    pub fn shape(&self) -> PlanShape {
        self.shape
    }

    /// The memory-limit fit, when the controller was loaded under a limit.
    pub fn budget(&self) -> Option<BudgetFit> {
        self.budget
    }

    /// The planner seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Environment actions per `act`: `n_taken * frameskip`.
    pub fn actions_per_act(&self) -> usize {
        self.shape.n_taken * self.wm.manifest.frameskip
    }

    /// Whether a goal is set.
    pub fn has_goal(&self) -> bool {
        self.goal.is_some()
    }

    /// Counters and memory now.
    pub fn stats(&self) -> ControllerStats {
        let mut s = self.stats.clone();
        s.heap_bytes = crate::util::mem::current_bytes() as u64;
        s.heap_peak_bytes = crate::util::mem::peak_bytes() as u64;
        s.peak_rss_bytes = crate::util::proc::peak_rss_bytes();
        s.mem_limit_bytes = crate::util::mem::limit().map(|l| l as u64);
        s
    }

    /// Start the next episode (see [`Controller::reset_to`]).
    pub fn reset(&mut self) {
        self.reset_to(self.episode + 1);
    }

    /// Start episode `episode`: forget the observed history and the warm start, and draw planner
    /// noise from that episode's stream. The goal is kept (set a new one with `set_goal`).
    pub fn reset_to(&mut self, episode: u64) {
        self.episode = episode;
        self.rng = crate::plan::rng_for(self.seed, episode);
        self.history.clear();
        self.past_actions.clear();
        self.observed = 0;
        self.acted = false;
        self.warm = None;
        self.stats.episode = episode;
        self.stats.acts_in_episode = 0;
    }

    fn check_frame(&mut self, frame: &Frame, what: &str) -> Result<()> {
        if frame.height == 0
            || frame.width == 0
            || frame.data.len() != frame.height * frame.width * 3
        {
            return Err(QwmError::Usage(format!(
                "{what}: a {}x{} RGB frame has {} bytes, got {}",
                frame.height,
                frame.width,
                frame.height * frame.width * 3,
                frame.data.len()
            )));
        }
        // One camera: every frame has the goal's size (a change is a wiring bug, not a resize).
        match self.frame_size {
            Some((h, w)) if (h, w) != (frame.height, frame.width) => {
                Err(QwmError::Usage(format!(
                    "{what}: frame is {}x{}, the goal frame was {h}x{w} (one camera size per controller; set a new goal to change it)",
                    frame.height, frame.width
                )))
            }
            _ => Ok(()),
        }
    }

    fn encode(&mut self, frame: &Frame, proprio: &[f32], what: &str) -> Result<(Latent, f64)> {
        let t0 = Instant::now();
        let z = self
            .wm
            .encode(&[frame], &[proprio])
            .map_err(|e| match e {
                QwmError::Usage(m) => QwmError::Usage(format!("{what}: {m}")),
                other => other,
            })?
            .remove(0);
        let dt = t0.elapsed().as_secs_f64();
        self.stats.encodes += 1;
        self.stats.encode_s += dt;
        Ok((z, dt))
    }

    /// Encode the goal observation (RGB `u8` HWC frame, raw proprioception). Any frame size is
    /// accepted (resized as the manifest says); later frames must have the same size.
    pub fn set_goal(&mut self, frame: &Frame, proprio: &[f32]) -> Result<()> {
        let size = self.frame_size.take();
        let checked = self.check_frame(frame, "goal");
        self.frame_size = size;
        checked?;
        let (z, _) = self.encode(frame, proprio, "goal")?;
        self.frame_size = Some((frame.height, frame.width));
        self.goal = Some(z);
        Ok(())
    }

    /// Whether the model needs the frames between the model steps of one `act` (a history of
    /// more than one frame with more than one action executed per plan): then
    /// [`Controller::observe`] must be called after each of the first `n_taken - 1` model steps
    /// (every `frameskip` environment actions).
    pub fn needs_intermediate_frames(&self) -> bool {
        self.wm.manifest.num_hist > 1 && self.shape.n_taken > 1
    }

    /// Record the observation after a model step inside the executed plan (see
    /// [`Controller::needs_intermediate_frames`]; models with a one-frame history ignore it).
    pub fn observe(&mut self, frame: &Frame, proprio: &[f32]) -> Result<f64> {
        if !self.needs_intermediate_frames() {
            return Ok(0.0);
        }
        if !self.acted || self.observed + 1 >= self.shape.n_taken {
            return Err(QwmError::State(format!(
                "observe: {} intermediate frames already given for the {} model steps of the last act (observe follows each of the first n_taken - 1 steps)",
                self.observed, self.shape.n_taken
            )));
        }
        self.check_frame(frame, "observe")?;
        let (z, dt) = self.encode(frame, proprio, "observe")?;
        self.history.push(z);
        self.observed += 1;
        Ok(dt)
    }

    /// Plan from the current observation and return the executed part of the plan.
    pub fn act(&mut self, frame: &Frame, proprio: &[f32]) -> Result<Act> {
        if self.goal.is_none() {
            return Err(QwmError::State(
                "act: no goal set (call set_goal first)".into(),
            ));
        }
        if self.needs_intermediate_frames() && self.acted && self.observed + 1 != self.shape.n_taken
        {
            return Err(QwmError::State(format!(
                "act: this model keeps {} frames of history, so observe() must follow each of the first {} model steps of the last act; it was called {} times",
                self.wm.manifest.num_hist,
                self.shape.n_taken - 1,
                self.observed
            )));
        }
        self.check_frame(frame, "act")?;
        let mut timing = ActTiming::default();
        let (z, dt) = self.encode(frame, proprio, "act")?;
        timing.encode_s = dt;
        self.history.push(z);
        // Keep the last num_hist frames and the actions between them.
        let keep = self.wm.manifest.num_hist;
        if self.history.len() > keep {
            self.history.drain(..self.history.len() - keep);
        }
        let n_past = self.history.len() - 1;
        self.past_actions
            .drain(..self.past_actions.len().saturating_sub(n_past));
        let before = self.wm.timers.predict;
        let t1 = Instant::now();
        let outcome = {
            let goal = self.goal.as_ref().expect("checked above");
            let mut r = ModelRollout {
                wm: &mut self.wm,
                history: &self.history,
                past_actions: &self.past_actions,
                goal,
                chunk: self.shape.chunk,
            };
            self.planner.plan(
                &mut r,
                self.shape.horizon,
                self.warm.as_deref(),
                &mut self.rng,
            )?
        };
        timing.plan_s = t1.elapsed().as_secs_f64();
        timing.predict_s = (self.wm.timers.predict - before).as_secs_f64();
        let a_dim = self.wm.manifest.model_action_dim();
        let taken = &outcome.actions[..self.shape.n_taken * a_dim];
        let mut actions = Vec::with_capacity(taken.len());
        for a in taken.chunks(a_dim) {
            for env_a in self.wm.denormalize_action(a) {
                actions.extend(env_a);
            }
            self.past_actions.push(a.to_vec());
        }
        // Warm start: the remainder of the plan, padded with zeros (the normalized mean action).
        let mut rest = outcome.actions[self.shape.n_taken * a_dim..].to_vec();
        rest.resize(self.shape.horizon * a_dim, 0.0);
        self.warm = Some(rest);
        self.observed = 0;
        self.acted = true;
        self.stats.acts += 1;
        self.stats.acts_in_episode += 1;
        self.stats.plan_s += timing.plan_s;
        self.stats.predict_s += timing.predict_s;
        self.stats.last = timing;
        Ok(Act {
            actions,
            model_actions: taken.to_vec(),
            objective: outcome.objective,
            non_finite: outcome.non_finite,
            timing,
        })
    }
}
