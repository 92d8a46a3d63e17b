//! Model predictive path integral: exponentially weighted averaging of sampled sequences.

use super::{
    clamp_actions, rank, require_some_finite, sample_around, PlanOutcome, Planner, Rollout,
};
use crate::error::{QwmError, Result};

/// MPPI settings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Mppi {
    /// Candidates per step (sample 0 is the current mean).
    pub samples: usize,
    /// Optimization steps per plan.
    pub opt_steps: usize,
    /// Sampling standard deviation in normalized action units.
    pub noise: f32,
    /// Temperature, relative to the spread of the step's objectives (scale-free).
    pub temperature: f32,
}

impl Mppi {
    /// Validate settings.
    pub fn new(samples: usize, opt_steps: usize, noise: f32, temperature: f32) -> Result<Mppi> {
        if samples < 2 {
            return Err(QwmError::Usage(format!(
                "--samples {samples}: MPPI needs at least 2 samples"
            )));
        }
        if opt_steps == 0 {
            return Err(QwmError::Usage("--opt-steps must be at least 1".into()));
        }
        if !(noise.is_finite() && noise > 0.0) {
            return Err(QwmError::Usage(format!(
                "--var-scale {noise}: MPPI noise must be positive"
            )));
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(QwmError::Usage(format!(
                "--temperature {temperature} must be positive"
            )));
        }
        Ok(Mppi {
            samples,
            opt_steps,
            noise,
            temperature,
        })
    }
}

impl Planner for Mppi {
    fn plan(
        &self,
        r: &mut dyn Rollout,
        horizon: usize,
        init_mean: Option<&[f32]>,
        rng: &mut dyn rand::RngCore,
    ) -> Result<PlanOutcome> {
        let d = horizon * r.action_dim();
        let mut mean = match init_mean {
            Some(m) if m.len() == d => m.to_vec(),
            Some(m) => {
                return Err(QwmError::Usage(format!(
                    "warm start has {} values, expected {d}",
                    m.len()
                )))
            }
            None => vec![0f32; d],
        };
        let bounds = r.action_bounds();
        clamp_actions(&mut mean, bounds.as_ref());
        let mut best = f32::INFINITY;
        let mut non_finite = 0;
        for step in 0..self.opt_steps {
            // The noise shrinks over the steps so the average can settle.
            let std = vec![self.noise * (1.0 - 0.5 * step as f32 / self.opt_steps as f32); d];
            let mut cand = sample_around(&mean, &std, self.samples, rng);
            clamp_actions(&mut cand, bounds.as_ref());
            let scores = r.evaluate(&cand, self.samples, horizon)?;
            require_some_finite(&scores)?;
            non_finite += scores.iter().filter(|s| !s.is_finite()).count();
            let order = rank(&scores);
            best = scores[order[0]];
            let finite: Vec<f64> = scores
                .iter()
                .filter(|s| s.is_finite())
                .map(|&s| s as f64)
                .collect();
            let mu = finite.iter().sum::<f64>() / finite.len() as f64;
            let spread = (finite.iter().map(|s| (s - mu).powi(2)).sum::<f64>()
                / finite.len() as f64)
                .sqrt()
                .max(1e-12);
            let lambda = self.temperature as f64 * spread;
            let weights: Vec<f64> = scores
                .iter()
                .map(|&s| {
                    if s.is_finite() {
                        (-(s as f64 - best as f64) / lambda).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            for j in 0..d {
                mean[j] = (weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| w * cand[i * d + j] as f64)
                    .sum::<f64>()
                    / total) as f32;
            }
        }
        Ok(PlanOutcome {
            actions: mean,
            objective: best,
            non_finite,
            evaluated: self.samples * self.opt_steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::rng_for;
    use super::super::testing::Quadratic;
    use super::*;

    #[test]
    fn converges_on_a_quadratic() {
        let target: Vec<f32> = (0..10).map(|i| 0.8 * (i as f32 * 0.5).cos()).collect();
        let mut q = Quadratic {
            target: target.clone(),
            dim: 2,
            calls: 0,
            nan_every: None,
        };
        let p = Mppi::new(300, 15, 1.0, 0.1).unwrap();
        let out = p.plan(&mut q, 5, None, &mut rng_for(9, 0)).unwrap();
        let err: f32 = out
            .actions
            .iter()
            .zip(&target)
            .map(|(a, t)| (a - t).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.25, "max error {err}: {:?}", out.actions);
    }

    #[test]
    fn survives_nan_candidates() {
        let mut q = Quadratic {
            target: vec![0.3; 4],
            dim: 2,
            calls: 0,
            nan_every: Some(2),
        };
        let p = Mppi::new(50, 5, 1.0, 0.1).unwrap();
        let out = p.plan(&mut q, 2, None, &mut rng_for(2, 0)).unwrap();
        assert!(out.non_finite > 0 && out.actions.iter().all(|v| v.is_finite()));
    }
}
