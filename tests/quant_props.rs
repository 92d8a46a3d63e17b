//! Property tests for the quantizer's arithmetic (proptest): rounding error bounded by half a
//! step inside the clip range, codes and zero points in range, group layouts round-trip.

use proptest::prelude::*;
use qwm::onnx::proto::act_params;
use qwm::quant::weights::{quantize_matrix, scale_for, signed_range, Observer};

fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..40, 1usize..8).prop_flat_map(|(k, n)| {
        (
            Just(k),
            Just(n),
            prop::collection::vec(-50.0f32..50.0, k * n),
        )
    })
}

fn bits() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![3u32, 4, 6, 8])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// RTN: every weight lies inside its block's range, so dequantize(quantize(w)) is within
    /// scale / 2 of w; codes stay in the signed range; each scale is its block's absmax scale.
    #[test]
    fn rtn_error_is_at_most_half_a_step((k, n, w) in matrix(), b in bits(), g in prop::option::of(1usize..48)) {
        let q = quantize_matrix(&w, k, n, b, g, Observer::Rtn).unwrap();
        let rows = g.unwrap_or(k).min(k);
        prop_assert_eq!(q.scales.len(), k.div_ceil(rows) * n);
        let (qmin, qmax) = signed_range(b);
        prop_assert!(q.codes.iter().all(|&c| (c as f64) >= qmin && (c as f64) <= qmax));
        let dq = q.dequantize();
        for r in 0..k {
            for c in 0..n {
                let blk = r / rows;
                let s = q.scales[blk * n + c] as f64;
                // The block's scale is absmax-derived (stored as f32).
                let absmax = (blk * rows..((blk + 1) * rows).min(k))
                    .map(|rr| (w[rr * n + c] as f64).abs())
                    .fold(0.0, f64::max);
                let want = scale_for(absmax, b);
                prop_assert!((s - want).abs() <= want * 1e-6, "scale {} vs {}", s, want);
                // Half a step, plus f32 rounding of the stored scale and product (an ulp of |w|).
                let x = w[r * n + c] as f64;
                let err = (dq[r * n + c] as f64 - x).abs();
                prop_assert!(err <= s * 0.5 * (1.0 + 1e-5) + x.abs() * 3e-7 + 1e-6, "err {} step {}", err, s);
            }
        }
    }

    /// OMSE: inside the chosen clip range (|w| <= (qmax + 1/2) * scale) the error is at most half
    /// a step; outside, the code saturates at the end of the range with the weight's sign.
    #[test]
    fn omse_is_bounded_inside_and_saturates_outside((k, n, w) in matrix(), b in bits(), g in prop::option::of(1usize..48)) {
        let q = quantize_matrix(&w, k, n, b, g, Observer::Omse).unwrap();
        let rows = g.unwrap_or(k).min(k);
        let (qmin, qmax) = signed_range(b);
        let dq = q.dequantize();
        for r in 0..k {
            for c in 0..n {
                let s = q.scales[(r / rows) * n + c] as f64;
                let x = w[r * n + c] as f64;
                let code = q.codes[r * n + c] as f64;
                if x.abs() <= (qmax + 0.5) * s * (1.0 - 1e-5) {
                    let err = (dq[r * n + c] as f64 - x).abs();
                    prop_assert!(err <= s * 0.5 * (1.0 + 1e-5) + x.abs() * 3e-7 + 1e-6);
                } else {
                    // Clipped: the code sits at the end of the range on the weight's side (codes are
                    // computed with the exact scale, so a value on the boundary may round inward).
                    prop_assert!(code.abs() >= qmax && code * x >= 0.0, "code {} for clipped {} (range {}..{})", code, x, qmin, qmax);
                }
            }
        }
    }

    /// Unsigned asymmetric activations: zero point inside [0, 2^bits - 1] and integral; every
    /// value of the calibrated range quantizes within half a step (plus the zero point's rounding).
    #[test]
    fn activation_zero_point_in_range(lo in -100.0f64..100.0, width in 0.0f64..200.0, b in prop::sample::select(vec![4u32, 6, 8])) {
        let (s, zp) = act_params(lo, lo + width, b);
        let qmax = ((1u64 << b) - 1) as f64;
        prop_assert!(s > 0.0 && s.is_finite());
        prop_assert!((0.0..=qmax as f32).contains(&zp) && zp.fract() == 0.0);
        if lo <= 0.0 && lo + width >= 0.0 && width > 1e-3 {
            // Zero is exactly representable when the range contains it.
            let z = ((0.0f64 / s as f64).round_ties_even() + zp as f64).clamp(0.0, qmax);
            prop_assert_eq!((z - zp as f64) * s as f64, 0.0);
        }
    }
}
