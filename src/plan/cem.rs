//! Cross-entropy method with DINO-WM's semantics.

use super::{
    clamp_actions, rank, require_some_finite, sample_around, PlanOutcome, Planner, Rollout,
};
use crate::error::{QwmError, Result};

/// CEM settings (DINO-WM Wall: 300 samples, top-k 30, 10 steps, var_scale 1).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cem {
    /// Candidates per optimization step (sample 0 is the current mean).
    pub samples: usize,
    /// Elites kept per step.
    pub topk: usize,
    /// Optimization steps per plan.
    pub opt_steps: usize,
    /// Initial standard deviation in normalized action units.
    pub var_scale: f32,
}

impl Cem {
    /// Validate settings.
    pub fn new(samples: usize, topk: usize, opt_steps: usize, var_scale: f32) -> Result<Cem> {
        if samples < 2 {
            return Err(QwmError::Usage(format!(
                "--samples {samples}: CEM needs at least 2 samples"
            )));
        }
        if topk == 0 || topk > samples {
            return Err(QwmError::Usage(format!(
                "--topk {topk} must be in 1..=--samples ({samples})"
            )));
        }
        if opt_steps == 0 {
            return Err(QwmError::Usage("--opt-steps must be at least 1".into()));
        }
        if !(var_scale.is_finite() && var_scale > 0.0) {
            return Err(QwmError::Usage(format!(
                "--var-scale {var_scale} must be positive"
            )));
        }
        Ok(Cem {
            samples,
            topk,
            opt_steps,
            var_scale,
        })
    }
}

impl Planner for Cem {
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
        let mut std = vec![self.var_scale; d];
        let mut best = f32::INFINITY;
        let mut non_finite = 0;
        for _ in 0..self.opt_steps {
            let mut cand = sample_around(&mean, &std, self.samples, rng);
            clamp_actions(&mut cand, bounds.as_ref());
            let scores = r.evaluate(&cand, self.samples, horizon)?;
            require_some_finite(&scores)?;
            non_finite += scores.iter().filter(|s| !s.is_finite()).count();
            let order = rank(&scores);
            let elites: Vec<usize> = order
                .iter()
                .copied()
                .take(self.topk)
                .filter(|&i| scores[i].is_finite())
                .collect();
            best = scores[order[0]];
            let k = elites.len() as f32;
            for j in 0..d {
                let m = elites.iter().map(|&i| cand[i * d + j]).sum::<f32>() / k;
                let var = elites
                    .iter()
                    .map(|&i| (cand[i * d + j] - m).powi(2))
                    .sum::<f32>()
                    / k;
                mean[j] = m;
                std[j] = var.sqrt();
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
    fn finds_the_optimum_of_a_quadratic() {
        let target: Vec<f32> = (0..10).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut q = Quadratic {
            target: target.clone(),
            dim: 2,
            calls: 0,
            nan_every: None,
        };
        let cem = Cem::new(300, 30, 10, 1.0).unwrap();
        let out = cem.plan(&mut q, 5, None, &mut rng_for(3, 0)).unwrap();
        assert_eq!(q.calls, 10);
        let err: f32 = out
            .actions
            .iter()
            .zip(&target)
            .map(|(a, t)| (a - t).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.1, "max error {err}");
        assert!(out.objective < 0.05);
    }

    #[test]
    fn nan_candidates_rank_last_and_are_counted() {
        let target = vec![0.5f32; 4];
        let mut q = Quadratic {
            target: target.clone(),
            dim: 2,
            calls: 0,
            nan_every: Some(3),
        };
        let cem = Cem::new(60, 6, 8, 1.0).unwrap();
        let out = cem.plan(&mut q, 2, None, &mut rng_for(4, 0)).unwrap();
        assert!(out.non_finite > 0);
        assert!(out.actions.iter().all(|a| a.is_finite()));
        assert!(
            out.actions
                .iter()
                .zip(&target)
                .all(|(a, t)| (a - t).abs() < 0.2),
            "{:?}",
            out.actions
        );
    }

    #[test]
    fn deterministic_per_seed_and_warm_start_is_used() {
        let mut q = Quadratic {
            target: vec![1.0; 4],
            dim: 2,
            calls: 0,
            nan_every: None,
        };
        let cem = Cem::new(20, 5, 1, 1e-6).unwrap();
        let a = cem
            .plan(&mut q, 2, Some(&[1.0; 4]), &mut rng_for(5, 0))
            .unwrap();
        let b = cem
            .plan(&mut q, 2, Some(&[1.0; 4]), &mut rng_for(5, 0))
            .unwrap();
        assert_eq!(a.actions, b.actions);
        // With a tiny std around a perfect warm start the plan stays there.
        assert!(a.actions.iter().all(|v| (v - 1.0).abs() < 1e-4));
    }

    struct Bounded(Quadratic);
    impl Rollout for Bounded {
        fn action_dim(&self) -> usize {
            self.0.dim
        }
        fn evaluate(&mut self, a: &[f32], b: usize, h: usize) -> crate::error::Result<Vec<f32>> {
            assert!(
                a.iter().all(|v| (-0.5..=0.25).contains(v)),
                "sample outside the bounds"
            );
            self.0.evaluate(a, b, h)
        }
        fn action_bounds(&self) -> Option<(Vec<f32>, Vec<f32>)> {
            Some((vec![-0.5, -0.5], vec![0.25, 0.25]))
        }
    }

    #[test]
    fn samples_respect_action_bounds() {
        // The optimum (1.0 everywhere) lies outside: the plan ends on the upper bound.
        let mut q = Bounded(Quadratic {
            target: vec![1.0; 6],
            dim: 2,
            calls: 0,
            nan_every: None,
        });
        let out = Cem::new(100, 10, 6, 1.0)
            .unwrap()
            .plan(&mut q, 3, Some(&[5.0; 6]), &mut rng_for(1, 0))
            .unwrap();
        assert!(
            out.actions.iter().all(|v| (v - 0.25).abs() < 1e-3),
            "{:?}",
            out.actions
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Cem::new(10, 11, 1, 1.0).is_err());
        assert!(Cem::new(10, 0, 1, 1.0).is_err());
        assert!(Cem::new(10, 5, 0, 1.0).is_err());
        assert!(Cem::new(1, 1, 1, 1.0).is_err());
    }
}
