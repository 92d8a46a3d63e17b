//! Layer normalization over the last axis, in one pass per row held in L1:
//! `y = (x - mean) / sqrt(var + eps) * scale + bias`, the kernel of tract's fused LayerNorm
//! operator ([`crate::engine::tract::layer_norm`]).
//!
//! Why: tract 0.23 imports ONNX `LayerNormalization` as seven operators (two means, a
//! subtraction, a square, a reciprocal square root and two broadcasting products), each a pass over
//! the whole activation in memory; on aarch64 the broadcasting product by the per-row inverse
//! deviation runs through ndarray's generic `Zip` (measured with `scripts/arm-profile.py`: the
//! largest cost of the Wall predictor after its matrix products). Here each row is read twice (sum,
//! then squared deviations) and written once, from cache.
//!
//! Semantics are ONNX's (opset 17, `stash_type` f32): `mean = sum(x) / n`, `d = x - mean`,
//! `var = sum(d * d) / n`, `inv = 1 / sqrt(var + eps)`, `y = d * inv * scale + bias`, in f32. The
//! sums run in eight interleaved partial sums (which the compiler keeps in SIMD registers), so
//! the results differ from a sequential f32 sum in the last bits; the tests bound that against a
//! float64 reference. NaN or infinity anywhere in a row makes the whole row NaN, as the ONNX chain
//! does.

/// Partial sums per row: two 128-bit registers of f32 on NEON, one 256-bit on AVX2.
const LANES: usize = 8;

/// Sum of `v` in [`LANES`] interleaved partial sums, folded pairwise.
#[inline(always)]
fn sum_lanes(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
}

/// Normalize each row of `x` (rows of `row` elements) into `out`, times `scale` plus `bias`
/// (each `row` long; no bias: zero).
///
/// # Panics
/// When `row` is 0, `x.len()` is not a multiple of it, or a slice length disagrees (the
/// operator checks these and reports them as errors first).
pub fn layer_norm(
    x: &[f32],
    row: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    assert!(row > 0 && x.len().is_multiple_of(row), "rows of {row}");
    assert_eq!(scale.len(), row, "one scale per element of a row");
    assert!(bias.is_none_or(|b| b.len() == row), "one bias per element");
    assert_eq!(out.len(), x.len(), "output as long as the input");
    let n = row as f32;
    for (xr, yr) in x.chunks_exact(row).zip(out.chunks_exact_mut(row)) {
        let mean = sum_lanes(xr, |v| v) / n;
        let var = sum_lanes(xr, |v| (v - mean) * (v - mean)) / n;
        let inv = 1.0 / (var + eps).sqrt();
        match bias {
            Some(b) => {
                for (((y, &v), &s), &b) in yr.iter_mut().zip(xr).zip(scale).zip(b) {
                    *y = (v - mean) * inv * s + b;
                }
            }
            None => {
                for ((y, &v), &s) in yr.iter_mut().zip(xr).zip(scale) {
                    *y = (v - mean) * inv * s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The ONNX definition in float64.
    fn reference(x: &[f32], row: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32) -> Vec<f64> {
        let mut out = vec![];
        for xr in x.chunks_exact(row) {
            let n = row as f64;
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for (j, &v) in xr.iter().enumerate() {
                let b = bias.map_or(0.0, |b| b[j] as f64);
                out.push((v as f64 - mean) * inv * scale[j] as f64 + b);
            }
        }
        out
    }

    fn random(n: usize, rng: &mut impl Rng, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    /// Rows of the shapes qwm meets (and odd ones, below and above the lanes), with an offset
    /// far from zero (where a one-pass variance would cancel): within 2e-6 of float64, relative to
    /// the largest output of the row, times `1 + |mean| / std` (the f32 mean is rounded to a
    /// step of `|mean|`'s size, and every deviation `x - mean` carries that step).
    #[test]
    fn matches_the_float64_definition() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(rows, row, offset) in &[
            (3, 1, 0.0f32),
            (5, 7, 0.5),
            (4, 8, -3.0),
            (6, 13, 100.0),
            (30, 64, 0.0),
            (7, 384, 20.0),
            (2, 1000, -50.0),
        ] {
            for with_bias in [true, false] {
                let x: Vec<f32> = random(rows * row, &mut rng, -2.0, 2.0)
                    .into_iter()
                    .map(|v| v + offset)
                    .collect();
                let scale = random(row, &mut rng, -1.5, 1.5);
                let bias = random(row, &mut rng, -1.0, 1.0);
                let b = with_bias.then_some(&bias[..]);
                let mut out = vec![0f32; x.len()];
                layer_norm(&x, row, &scale, b, 1e-5, &mut out);
                let want = reference(&x, row, &scale, b, 1e-5);
                for (r, ((got, want), xr)) in out
                    .chunks(row)
                    .zip(want.chunks(row))
                    .zip(x.chunks(row))
                    .enumerate()
                {
                    let top = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                    let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / row as f64;
                    let var =
                        xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / row as f64;
                    let tol = 2e-6 * (1.0 + mean.abs() / (var + 1e-5).sqrt());
                    for (g, w) in got.iter().zip(want) {
                        assert!(g.is_finite(), "row {r} of {rows}x{row}: {g}");
                        let e = (*g as f64 - w).abs() / top;
                        assert!(e < tol, "row {r} of {rows}x{row} (offset {offset}): {g} vs {w} ({e:e} > {tol:e})");
                    }
                }
            }
        }
    }

    /// A constant row normalizes to the bias (its deviation is zero: `eps` keeps it finite).
    #[test]
    fn a_constant_row_gives_the_bias() {
        let x = [2.5f32; 16];
        let scale = [3.0f32; 16];
        let bias: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let mut out = [0f32; 16];
        layer_norm(&x, 16, &scale, Some(&bias), 1e-5, &mut out);
        assert_eq!(out.to_vec(), bias);
    }

    /// NaN or infinity in a row poisons that row only.
    #[test]
    fn non_finite_input_makes_its_row_nan() {
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
            x[1] = bad;
            let mut out = vec![0f32; 8];
            layer_norm(&x, 4, &[1.0; 4], None, 1e-5, &mut out);
            assert!(out[..4].iter().all(|v| v.is_nan()), "{bad}: {out:?}");
            assert!(out[4..].iter().all(|v| v.is_finite()), "{bad}: {out:?}");
        }
    }
}
