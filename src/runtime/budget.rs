//! Fitting a planning run into a memory limit: measure what one predictor call costs per
//! candidate, predict the peak of a CEM chunk, and pick the largest chunk that fits.
//!
//! The measurement runs the predictor twice at small batches and reads the counting allocator's
//! high-water mark (so it needs [`crate::util::mem::CountingAlloc`] installed, as the binary does). The
//! difference between the two peaks is the per-candidate activation cost; the rest (building the
//! plan for a new batch size, weights copies) is the fixed cost of a call at a new size.

use crate::error::{QwmError, Result};
use crate::runtime::model::{Latent, WorldModel};
use crate::util::mem;

/// Refuse, before anything is allocated, planner settings whose buffers cannot be allocated
/// here: the candidates (`samples x horizon` action sequences, with their means and spreads) and
/// one predictor call of `chunk` candidates (history plus horizon frames of tokens). Without an
/// explicit `chunk`, a call is all `samples`, or a single candidate under a memory limit (which
/// [`choose_chunk`] then fits). `what` names the flags (e.g. `--samples 300 x --horizon 5`).
pub fn check_request(
    manifest: &crate::bundle::Manifest,
    samples: usize,
    horizon: usize,
    chunk: Option<usize>,
    what: &str,
) -> Result<()> {
    let chunk = chunk.unwrap_or(if mem::limit().is_some() { 1 } else { samples });
    let m = manifest;
    let f32s = 4u128;
    let step = (m.action_dim * m.frameskip) as u128;
    let candidates = samples as u128 * horizon as u128 * step * f32s * 4;
    let frame =
        m.num_patches as u128 * (m.visual_dim + m.proprio_emb_dim * m.proprio_tokens) as u128;
    let call = chunk as u128 * (m.num_hist + horizon) as u128 * frame * f32s * 2;
    mem::ensure_fits(what, candidates + call)
}

/// Measured costs of predictor calls.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct CallCost {
    /// Heap bytes per candidate (activations and outputs of one call).
    pub per_candidate: f64,
    /// Fixed heap bytes of a call at a new batch size (plan build), beyond the candidates.
    pub fixed: f64,
    /// Heap a plan for a new batch size keeps (the backend caches one plan per size).
    pub per_plan: f64,
}

impl CallCost {
    /// Predicted heap peak of planning with chunks of `chunk` candidates over `samples`, on top
    /// of `resident` bytes already allocated: the call itself plus the planner's buffers
    /// (candidates, scores and the per-step predictions of a whole sample set).
    pub fn predict(
        &self,
        resident: usize,
        chunk: usize,
        samples: usize,
        horizon: usize,
        wm: &WorldModel,
    ) -> f64 {
        let m = &wm.manifest;
        let latent = (m.num_patches * m.visual_dim + m.proprio_len()) as f64 * 4.0;
        let planner = samples as f64 * (horizon * m.model_action_dim()) as f64 * 4.0 * 3.0
            + chunk as f64 * latent * (horizon as f64 + 1.0);
        // Chunking over the samples (and splitting a chunk across threads) adds plans for up to
        // three more batch sizes, each kept by the backend.
        let extra_plans = if chunk < samples { 3.0 } else { 0.0 };
        resident as f64
            + self.fixed
            + self.per_candidate * chunk as f64
            + planner
            + extra_plans * self.per_plan
    }
}

fn zero_latent(wm: &WorldModel) -> Latent {
    let m = &wm.manifest;
    Latent {
        visual: vec![0.0; m.num_patches * m.visual_dim],
        proprio: vec![0.0; m.proprio_len()],
    }
}

/// Heap high-water mark above the starting level while `f` runs.
fn peak_during(f: &mut dyn FnMut() -> Result<()>) -> Result<usize> {
    let before = mem::current_bytes();
    mem::reset_peak();
    f()?;
    Ok(mem::peak_bytes().saturating_sub(before))
}

/// Measure a predictor call's cost: at batches `threads` and `8 * threads`, a first (cold) call
/// builds the plan for the size, a second (warm) call shows the activations alone.
pub fn measure(wm: &mut WorldModel, threads: usize) -> Result<CallCost> {
    if !mem::counting() {
        return Err(QwmError::Usage(
            "--mem-limit needs qwm's counting allocator (the qwm binary installs it)".into(),
        ));
    }
    let a_dim = wm.manifest.model_action_dim();
    let z = zero_latent(wm);
    let (b1, b2) = (threads.max(1), 8 * threads.max(1));
    let mut kept = 0f64;
    let mut run = |b: usize| -> Result<(f64, f64)> {
        let actions = vec![0f32; b * a_dim];
        let mut call = || {
            wm.rollout(std::slice::from_ref(&z), &[], &actions, b, 1)
                .map(|_| ())
        };
        let before = mem::current_bytes();
        let cold = peak_during(&mut call)? as f64;
        kept = kept.max(mem::current_bytes().saturating_sub(before) as f64);
        let warm = peak_during(&mut call)? as f64;
        Ok((cold, warm))
    };
    let (c1, w1) = run(b1)?;
    let (c2, w2) = run(b2)?;
    let per_candidate = ((w2 - w1) / (b2 - b1) as f64).max(0.0);
    let activations_base = (w1 - per_candidate * b1 as f64).max(0.0);
    let build = (c1 - w1).max(c2 - w2).max(0.0);
    Ok(CallCost {
        per_candidate,
        fixed: activations_base + build,
        per_plan: kept,
    })
}

/// The largest chunk (at most `samples`) whose predicted peak stays within `limit`, or an error
/// with the numbers when not even one candidate fits.
pub fn choose_chunk(
    cost: &CallCost,
    wm: &WorldModel,
    limit: usize,
    samples: usize,
    horizon: usize,
) -> Result<(usize, f64)> {
    let resident = mem::current_bytes();
    // 10% margin: the prediction is a model of the allocator's high-water mark, not a bound.
    let fits = |c: usize| cost.predict(resident, c, samples, horizon, wm) <= 0.9 * limit as f64;
    if !fits(1) {
        let need = cost.predict(resident, 1, samples, horizon, wm);
        return Err(QwmError::Usage(format!(
            "--mem-limit {}: planning needs about {} even one candidate at a time ({} resident after loading, {} per predictor call); raise --mem-limit or use a smaller model or --samples",
            crate::util::fmt::fmt_bytes(limit as u64),
            crate::util::fmt::fmt_bytes(need as u64),
            crate::util::fmt::fmt_bytes(resident as u64),
            crate::util::fmt::fmt_bytes((cost.fixed + cost.per_candidate) as u64),
        )));
    }
    let (mut lo, mut hi) = (1, samples.max(1));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok((lo, cost.predict(resident, lo, samples, horizon, wm)))
}
