//! Planners over a [`Rollout`]: CEM (DINO-WM's semantics) and MPPI.
//!
//! Planners are pure arithmetic over normalized action sequences `[horizon, action_dim]`; they
//! see only objective values from the model, never the environment's state or success.

pub mod cem;
pub mod mppi;

use crate::error::{QwmError, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// Something that scores candidate action sequences (lower is better).
pub trait Rollout {
    /// Width of one (normalized) action.
    fn action_dim(&self) -> usize;
    /// Score `batch` sequences `[batch, horizon, action_dim]`; non-finite scores are allowed
    /// (planners rank them last).
    fn evaluate(&mut self, actions: &[f32], batch: usize, horizon: usize) -> Result<Vec<f32>>;
    /// Per-dimension (low, high) limits of one action, if any; planners clamp samples to them.
    fn action_bounds(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        None
    }
}

/// Clamp sequences of actions (`action_dim` values each) into per-dimension bounds.
pub fn clamp_actions(values: &mut [f32], bounds: Option<&(Vec<f32>, Vec<f32>)>) {
    if let Some((lo, hi)) = bounds {
        let d = lo.len();
        for (i, v) in values.iter_mut().enumerate() {
            *v = v.clamp(lo[i % d], hi[i % d]);
        }
    }
}

/// The outcome of one planning call.
#[derive(Clone, Debug)]
pub struct PlanOutcome {
    /// The chosen sequence `[horizon, action_dim]`, normalized.
    pub actions: Vec<f32>,
    /// Objective of the best candidate in the last optimization step.
    pub objective: f32,
    /// Candidates whose objective was NaN/Inf, summed over steps.
    pub non_finite: usize,
    /// Candidates evaluated.
    pub evaluated: usize,
}

/// A planner: optimize a horizon-long sequence starting from an optional warm-start mean.
pub trait Planner: Send {
    /// Plan `horizon` actions.
    fn plan(
        &self,
        r: &mut dyn Rollout,
        horizon: usize,
        init_mean: Option<&[f32]>,
        rng: &mut dyn rand::RngCore,
    ) -> Result<PlanOutcome>;
}

/// Planner kinds on the command line.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PlannerKind {
    /// Cross-entropy method.
    Cem,
    /// Model predictive path integral.
    Mppi,
}

impl PlannerKind {
    /// Lower-case name, as `--planner` takes it.
    pub fn name(self) -> &'static str {
        match self {
            PlannerKind::Cem => "cem",
            PlannerKind::Mppi => "mppi",
        }
    }
}

/// Indices of finite scores sorted ascending, followed by non-finite ones.
pub fn rank(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_finite(), y.is_finite()) {
            (true, true) => x.partial_cmp(&y).expect("finite").then(a.cmp(&b)),
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            (false, false) => a.cmp(&b),
        }
    });
    idx
}

/// Draw `n` samples around `mean` with per-dimension `std`; sample 0 is the mean itself.
pub fn sample_around(mean: &[f32], std: &[f32], n: usize, rng: &mut dyn rand::RngCore) -> Vec<f32> {
    let d = mean.len();
    let mut out = vec![0f32; n * d];
    out[..d].copy_from_slice(mean);
    for s in 1..n {
        for j in 0..d {
            let z: f32 = StandardNormal.sample(rng);
            out[s * d + j] = mean[j] + std[j] * z;
        }
    }
    out
}

/// Guard shared by planners: a step where every candidate is NaN/Inf is an error, not a plan.
pub fn require_some_finite(scores: &[f32]) -> Result<()> {
    if scores.iter().all(|s| !s.is_finite()) {
        return Err(QwmError::Numeric(format!(
            "all {} candidates produced a non-finite objective: the model outputs NaN/Inf",
            scores.len()
        )));
    }
    Ok(())
}

/// Derive an independent RNG stream for a labelled purpose from a seed.
pub fn rng_for(seed: u64, stream: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    let _: u64 = r.random();
    r
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Analytic objective with a known optimum: sum of squared distances to a target sequence.
    pub struct Quadratic {
        pub target: Vec<f32>,
        pub dim: usize,
        pub calls: usize,
        pub nan_every: Option<usize>,
    }

    impl Rollout for Quadratic {
        fn action_dim(&self) -> usize {
            self.dim
        }
        fn evaluate(&mut self, actions: &[f32], batch: usize, horizon: usize) -> Result<Vec<f32>> {
            self.calls += 1;
            let n = horizon * self.dim;
            assert_eq!(actions.len(), batch * n);
            Ok((0..batch)
                .map(|b| {
                    if let Some(k) = self.nan_every {
                        if b % k == 1 {
                            return f32::NAN;
                        }
                    }
                    actions[b * n..(b + 1) * n]
                        .iter()
                        .zip(&self.target)
                        .map(|(a, t)| (a - t) * (a - t))
                        .sum()
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_puts_non_finite_last() {
        let r = rank(&[3.0, f32::NAN, 1.0, f32::INFINITY, 2.0]);
        assert_eq!(r, vec![2, 4, 0, 1, 3]);
    }

    #[test]
    fn sample_zero_is_the_mean() {
        let mut rng = rng_for(1, 0);
        let s = sample_around(&[1.0, 2.0], &[1.0, 1.0], 5, &mut rng);
        assert_eq!(&s[..2], &[1.0, 2.0]);
        assert_ne!(&s[2..4], &[1.0, 2.0]);
    }

    #[test]
    fn all_nan_is_refused() {
        assert!(require_some_finite(&[f32::NAN, f32::INFINITY]).is_err());
        assert!(require_some_finite(&[f32::NAN, 1.0]).is_ok());
    }
}
