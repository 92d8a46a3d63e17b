//! The attention kernels' test suite: every kernel this CPU has against a float64 reference of
//! the ONNX chain, and against the portable kernel.

use super::*;

/// The float64 reference of the ONNX chain: scale, mask, softmax, product.
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dm: Dims,
    scale: f32,
    mask: Option<&Mask>,
) -> Vec<f64> {
    let Dims {
        batch,
        queries: n,
        keys: m,
        heads,
        head_dim: d,
        value_dim: e,
    } = dm;
    let mut out = vec![0f64; dm.lens()[3]];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..n {
                let mut s: Vec<f64> = (0..m)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|c| {
                                q[((b * n + i) * heads + h) * d + c] as f64
                                    * k[((b * m + j) * heads + h) * d + c] as f64
                            })
                            .sum();
                        dot * scale as f64
                    })
                    .collect();
                if let Some(mk) = mask {
                    let [sb, sh, sn, sm] = mk.strides;
                    for (j, x) in s.iter_mut().enumerate() {
                        if mk.cond[b * sb + h * sh + i * sn + j * sm] == mk.fill_when {
                            *x = mk.fill as f64;
                        }
                    }
                }
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = w.iter().sum();
                for c in 0..e {
                    out[((b * n + i) * heads + h) * e + c] = (0..m)
                        .map(|j| w[j] / sum * v[((b * m + j) * heads + h) * e + c] as f64)
                        .sum();
                }
            }
        }
    }
    out
}

fn values(len: usize, seed: u32, amp: f32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            (x as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * amp
        })
        .collect()
}

/// Max |a - b| over all elements; NaN anywhere in `a` fails.
fn max_abs_err(a: &[f32], b: &[f64]) -> f64 {
    assert!(a.iter().all(|x| x.is_finite()), "non-finite output");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Every shape class the exporters produce (tokens not a multiple of the vector width, value
/// width other than the key width, one head, several batch items), with and without masks
/// broadcast in different ways, matches the float64 reference within 2e-6 (outputs of order 1).
#[test]
fn matches_the_float64_reference() {
    let shapes = [
        (1, 5, 5, 1, 3, 3),
        (2, 7, 9, 3, 8, 5),
        (3, 37, 37, 2, 16, 16),
        (1, 196, 196, 2, 64, 64),
    ];
    for (si, &(batch, n, m, heads, d, e)) in shapes.iter().enumerate() {
        let dm = Dims {
            batch,
            queries: n,
            keys: m,
            heads,
            head_dim: d,
            value_dim: e,
        };
        let [lq, lk, lv, lo] = dm.lens();
        let q = values(lq, 1 + si as u32, 2.0);
        let k = values(lk, 7 + si as u32, 2.0);
        let v = values(lv, 13 + si as u32, 1.0);
        let scale = 1.0 / (d as f32).sqrt();
        // Causal mask [n, m] broadcast over batch and heads, filled with -inf where true.
        let causal: Vec<bool> = (0..n * m).map(|x| x % m > x / m).collect();
        // Per-batch key padding [batch, 1, 1, m] keeping where true, filled with -1e9.
        let keep: Vec<bool> = (0..batch * m).map(|x| x % m < m - 1 || m == 1).collect();
        let masks = [
            None,
            Some(Mask {
                cond: &causal,
                strides: [0, 0, m, 1],
                fill: f32::NEG_INFINITY,
                fill_when: true,
            }),
            Some(Mask {
                cond: &keep,
                strides: [m, 0, 0, 1],
                fill: -1e9,
                fill_when: false,
            }),
        ];
        for mask in &masks {
            let want = reference(&q, &k, &v, dm, scale, mask.as_ref());
            for kernel in Kernel::available() {
                let mut out = vec![f32::NAN; lo];
                attention_with(kernel, &q, &k, &v, dm, scale, mask.as_ref(), &mut out);
                let err = max_abs_err(&out, &want);
                assert!(
                    err < 2e-6,
                    "{kernel:?} {dm:?} mask {}: max abs err {err}",
                    mask.is_some()
                );
            }
        }
    }
}

/// Large scores do not overflow (the maximum is subtracted first), and a row whose scores
/// are all masked to -inf is NaN, as ONNX's Softmax makes it, not a silent number.
#[test]
fn extreme_scores_follow_the_onnx_chain() {
    let dm = Dims {
        batch: 1,
        queries: 2,
        keys: 3,
        heads: 1,
        head_dim: 1,
        value_dim: 1,
    };
    let q = [100.0, 1.0];
    let k = [10.0, 9.0, -10.0];
    let v = [1.0, 2.0, 3.0];
    // Row 0 fully masked, row 1 open.
    let cond = [true, true, true, false, false, false];
    let mask = Mask {
        cond: &cond,
        strides: [0, 0, 3, 1],
        fill: f32::NEG_INFINITY,
        fill_when: true,
    };
    let want = reference(&q, &k, &v, dm, 1.0, Some(&mask));
    for kernel in Kernel::available() {
        let mut out = [0f32; 2];
        attention_with(kernel, &q, &k, &v, dm, 1.0, Some(&mask), &mut out);
        assert!(out[0].is_nan(), "{kernel:?} {out:?}");
        assert!(
            (out[1] as f64 - want[1]).abs() < 1e-6,
            "{out:?} vs {want:?}"
        );
        // Without the mask, scores of 1000 and 900 give weights exp(0), exp(-100), 0.
        attention_with(kernel, &q, &k, &v, dm, 1.0, None, &mut out);
        assert!((out[0] - 1.0).abs() < 1e-6, "{kernel:?} {out:?}");
    }
}

/// The vectorizable exp is within 2 ulp of the float64 one over its range, 0 below it, NaN
/// for NaN.
#[test]
fn exp_is_accurate() {
    let mut worst = 0f64;
    for i in 0..=870_000 {
        let x = -(i as f32) * 1e-4;
        let got = exp_nonpositive(x) as f64;
        let want = (x as f64).exp();
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 2.5e-7, "max rel err {worst}");
    assert_eq!(exp_nonpositive(0.0), 1.0);
    assert_eq!(exp_nonpositive(-100.0), 0.0);
    assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    assert!(exp_nonpositive(f32::NAN).is_nan());
}
