//! Statistics over run results: quantiles of timings, rank correlations of objectives.

/// The q-quantile (0..=1) of values by linear interpolation; NaN for an empty slice.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Spearman rank correlation (ties get their mean rank); None when either side is constant or
/// there are fewer than 3 pairs, or a value is not finite.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let rx = ranks(x);
    let ry = ranks(y);
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Wilson score interval of a binomial proportion (`successes` of `n`) at `z` standard errors
/// (1.96 for 95%); `(NaN, NaN)` for `n = 0`. Unlike the normal interval it stays inside [0, 1]
/// and is not empty at 0 or n successes, which is where quantized cells often are.
pub fn wilson(successes: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let (s, n) = (successes as f64, n as f64);
    let p = s / n;
    let d = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / d;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Exact two-sided McNemar test of paired binary outcomes: `b` pairs where only the first
/// succeeded, `c` where only the second did. Under "no difference" each discordant pair is a
/// fair coin, so p = min(1, 2 P[X <= min(b, c)]) for X ~ Binomial(b + c, 1/2); 1 with no
/// discordant pair. Computed in log space (exact for the few hundred pairs a study has).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let ln_fact = |k: usize| (1..=k).map(|i| (i as f64).ln()).sum::<f64>();
    let ln_n = ln_fact(n);
    let tail: f64 = (0..=b.min(c))
        .map(|i| (ln_n - ln_fact(i) - ln_fact(n - i) - n as f64 * std::f64::consts::LN_2).exp())
        .sum();
    (2.0 * tail).min(1.0)
}

/// Area under the ROC curve of `scores` for telling `positive` cases from the others: the
/// probability that a random positive scores higher than a random negative, ties counting half
/// (the Mann-Whitney U statistic over `n_pos x n_neg`). None without both classes or with a
/// non-finite score. For a study cell: scores = final objectives, positive = failed episode.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    if scores.len() != positive.len() || scores.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (i, &a) in scores.iter().enumerate() {
        if !positive[i] {
            continue;
        }
        for (j, &b) in scores.iter().enumerate() {
            if positive[j] {
                continue;
            }
            pairs += 1.0;
            if a > b {
                wins += 1.0;
            } else if a == b {
                wins += 0.5;
            }
        }
    }
    (pairs > 0.0).then(|| wins / pairs)
}

/// Percentile bootstrap interval of a statistic of `n` paired observations: `reps` resamples of
/// `n` indices drawn with replacement (ChaCha8 seeded with `seed`, so the same inputs give the same
/// interval), the statistic of each (`stat(indices)`; resamples where it is undefined are
/// skipped), and the `(1 - level) / 2` and `(1 + level) / 2` quantiles. None when fewer than half
/// the resamples are defined.
pub fn bootstrap_ci(
    n: usize,
    stat: &dyn Fn(&[usize]) -> Option<f64>,
    reps: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    if n == 0 || reps == 0 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut vals = Vec::with_capacity(reps);
    for _ in 0..reps {
        for i in idx.iter_mut() {
            *i = rng.random_range(0..n);
        }
        if let Some(v) = stat(&idx) {
            if v.is_finite() {
                vals.push(v);
            }
        }
    }
    if vals.len() * 2 < reps {
        return None;
    }
    let a = (1.0 - level) / 2.0;
    Some((quantile(&vals, a), quantile(&vals, 1.0 - a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_by_hand() {
        // Positives 3, 5; negatives 1, 4, 5: pairs (3>1) (3<4) (3<5) (5>1) (5>4) (5=5) = 3.5 / 6.
        let s = [3.0, 5.0, 1.0, 4.0, 5.0];
        let p = [true, true, false, false, false];
        assert!((auroc(&s, &p).unwrap() - 3.5 / 6.0).abs() < 1e-12);
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(auroc(&[f64::NAN, 2.0], &[true, false]), None);
        assert_eq!(auroc(&[2.0, 1.0], &[true, false]), Some(1.0));
    }

    #[test]
    fn bootstrap_is_deterministic_and_brackets_the_estimate() {
        let x: Vec<f64> = (0..40).map(|i| i as f64).collect();
        let y: Vec<f64> = (0..40)
            .map(|i| (i as f64) + 10.0 * ((i * 7919) % 13) as f64)
            .collect();
        let stat = |idx: &[usize]| {
            let a: Vec<f64> = idx.iter().map(|&i| x[i]).collect();
            let b: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
            spearman(&a, &b)
        };
        let full: Vec<usize> = (0..40).collect();
        let r = stat(&full).unwrap();
        let ci = bootstrap_ci(40, &stat, 1000, 0.95, 1).unwrap();
        assert_eq!(ci, bootstrap_ci(40, &stat, 1000, 0.95, 1).unwrap());
        assert!(
            ci.0 < r && r < ci.1 && ci.1 - ci.0 > 0.05,
            "{ci:?} around {r}"
        );
        // A perfect monotone relation stays at 1 in every resample that is defined.
        let perfect = |idx: &[usize]| {
            let a: Vec<f64> = idx.iter().map(|&i| x[i]).collect();
            spearman(&a, &a)
        };
        assert_eq!(bootstrap_ci(40, &perfect, 200, 0.95, 3), Some((1.0, 1.0)));
        assert_eq!(bootstrap_ci(0, &perfect, 200, 0.95, 3), None);
    }

    #[test]
    fn mcnemar_matches_the_binomial_by_hand() {
        // 5 discordant pairs all one way: 2 * 0.5^5.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        assert!((mcnemar_exact(5, 0) - 0.0625).abs() < 1e-12);
        // 1 vs 9: 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // 16 failures of 50 against none the other way: far below 0.001.
        assert!(mcnemar_exact(16, 0) < 1e-4);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(quantile(&[5.0], 0.95), 5.0);
    }

    #[test]
    fn spearman_matches_hand_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((spearman(&x, &[2.0, 4.0, 6.0, 8.0, 10.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        // Monotone but non-linear: still 1.
        assert!((spearman(&x, &[1.0, 8.0, 27.0, 64.0, 125.0]).unwrap() - 1.0).abs() < 1e-12);
        // Hand-computed with ties: ranks x = 1, 2.5, 2.5, 4; y = 1, 2, 3, 4 -> r = 0.9487.
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((r - 0.948_683_298).abs() < 1e-6, "{r}");
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]), None);
    }

    #[test]
    fn wilson_matches_hand_values() {
        // 50/50: [0.9287, 1]; 24/50: [0.3480, 0.6149]; 0/30: [0, 0.1135] (z = 1.96).
        let close =
            |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).abs() < 1e-4 && (a.1 - b.1).abs() < 1e-4;
        assert!(
            close(wilson(50, 50, 1.96), (0.92865, 1.0)),
            "{:?}",
            wilson(50, 50, 1.96)
        );
        assert!(
            close(wilson(24, 50, 1.96), (0.34802, 0.61492)),
            "{:?}",
            wilson(24, 50, 1.96)
        );
        assert!(
            close(wilson(0, 30, 1.96), (0.0, 0.11351)),
            "{:?}",
            wilson(0, 30, 1.96)
        );
        assert!(wilson(0, 0, 1.96).0.is_nan());
    }
}
