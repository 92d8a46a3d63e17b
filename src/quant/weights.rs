//! Weight quantizers with the study's semantics: signed symmetric integers, scale =
//! absmax / ((qmax - qmin) / 2), round half to even, clamp to [qmin, qmax]; per output channel
//! or per group of `g` consecutive input rows; RTN (min-max) or OMSE (clipping-ratio search).
//!
//! Weights are ONNX MatMul `B` matrices: `[K (in), N (out)]`, row-major.

use crate::error::{QwmError, Result};

/// Signed integer range of a bit-width.
pub fn signed_range(bits: u32) -> (f64, f64) {
    let qmax = (1i64 << (bits - 1)) - 1;
    (-(qmax as f64) - 1.0, qmax as f64)
}

/// Scale for a block with max |w| = absmax (zero blocks get scale 1 so they stay exactly zero).
pub fn scale_for(absmax: f64, bits: u32) -> f64 {
    let (qmin, qmax) = signed_range(bits);
    let s = absmax / ((qmax - qmin) / 2.0);
    if s > 0.0 && s.is_finite() {
        s
    } else {
        1.0
    }
}

/// Quantize one value.
pub fn quantize(w: f64, scale: f64, bits: u32) -> f64 {
    let (qmin, qmax) = signed_range(bits);
    (w / scale).round_ties_even().clamp(qmin, qmax)
}

/// Observer choosing each block's scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Observer {
    /// Min-max (round to nearest).
    Rtn,
    /// MSE-optimal clipping: ratios 0.35..=1.0 in 101 steps, per block.
    Omse,
}

/// A quantized weight matrix: integer codes and one scale per block.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantWeight {
    /// Rows (input dim).
    pub k: usize,
    /// Columns (output dim).
    pub n: usize,
    /// Bits.
    pub bits: u32,
    /// Group size along K (None: per output channel, one block per column).
    pub group: Option<usize>,
    /// Integer codes `[K, N]` (within the signed range of `bits`).
    pub codes: Vec<i8>,
    /// Scales `[ceil(K / group), N]` (or `[1, N]` per channel).
    pub scales: Vec<f32>,
}

impl QuantWeight {
    /// Blocks along K (the last group may be partial when the group size does not divide K).
    pub fn groups(&self) -> usize {
        match self.group {
            Some(g) => self.k.div_ceil(g),
            None => 1,
        }
    }
    /// Dequantized `[K, N]` weights.
    pub fn dequantize(&self) -> Vec<f32> {
        let rows = self.group.unwrap_or(self.k).min(self.k);
        let mut out = vec![0f32; self.k * self.n];
        for r in 0..self.k {
            for c in 0..self.n {
                out[r * self.n + c] =
                    self.codes[r * self.n + c] as f32 * self.scales[(r / rows) * self.n + c];
            }
        }
        out
    }
}

/// Quantize a `[K, N]` matrix.
pub fn quantize_matrix(
    w: &[f32],
    k: usize,
    n: usize,
    bits: u32,
    group: Option<usize>,
    obs: Observer,
) -> Result<QuantWeight> {
    quantize_blocks(w, k, n, bits, group, &|_, block, absmax| match obs {
        Observer::Rtn => scale_for(absmax, bits),
        Observer::Omse => omse_scale(block, absmax, bits),
    })
}

/// Quantize a `[K, N]` matrix with given clipping factors, one per scale block (`[groups, N]`,
/// each in (0, 1]): a block's scale is that of `clip * absmax` (OmniQuant's learned clipping).
pub fn quantize_matrix_clipped(
    w: &[f32],
    k: usize,
    n: usize,
    bits: u32,
    group: Option<usize>,
    clip: &[f64],
) -> Result<QuantWeight> {
    let blocks = k.div_ceil(group.unwrap_or(k).clamp(1, k.max(1)));
    if clip.len() != blocks * n {
        return Err(QwmError::Usage(format!(
            "{} clipping factors for a {k} x {n} weight in {blocks} block(s) per column (expected {})",
            clip.len(),
            blocks * n
        )));
    }
    if let Some(c) = clip
        .iter()
        .find(|c| !(c.is_finite() && **c > 0.0 && **c <= 1.0))
    {
        return Err(QwmError::Numeric(format!(
            "clipping factor {c} is not in (0, 1]"
        )));
    }
    quantize_blocks(w, k, n, bits, group, &|i, _, absmax| {
        scale_for(absmax * clip[i], bits)
    })
}

fn omse_scale(block: &[f64], absmax: f64, bits: u32) -> f64 {
    let mut best = (f64::INFINITY, scale_for(absmax, bits));
    for i in 0..=100 {
        let ratio = 0.35 + 0.65 * i as f64 / 100.0;
        let s = scale_for(absmax * ratio, bits);
        let err: f64 = block
            .iter()
            .map(|v| (v - quantize(*v, s, bits) * s).powi(2))
            .sum();
        if err < best.0 {
            best = (err, s);
        }
    }
    best.1
}

/// The block loop: `scale(block index b * n + c, values, absmax)` picks each block's scale.
fn quantize_blocks(
    w: &[f32],
    k: usize,
    n: usize,
    bits: u32,
    group: Option<usize>,
    scale_of: &dyn Fn(usize, &[f64], f64) -> f64,
) -> Result<QuantWeight> {
    if w.len() != k * n || k == 0 || n == 0 {
        return Err(QwmError::Usage(format!(
            "weight of {} values is not {k} x {n}",
            w.len()
        )));
    }
    if !(2..=8).contains(&bits) {
        return Err(QwmError::Usage(format!(
            "{bits}-bit weights are not supported"
        )));
    }
    if group == Some(0) {
        return Err(QwmError::Usage("group size must be at least 1".into()));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(QwmError::Numeric("weight contains NaN/Inf".into()));
    }
    let rows_per = group.unwrap_or(k).min(k);
    let blocks = k.div_ceil(rows_per);
    let mut codes = vec![0i8; k * n];
    let mut scales = vec![0f32; blocks * n];
    let mut block = Vec::with_capacity(rows_per);
    for b in 0..blocks {
        let rows = rows_per.min(k - b * rows_per);
        for c in 0..n {
            block.clear();
            block.extend((0..rows).map(|r| w[(b * rows_per + r) * n + c] as f64));
            let absmax = block.iter().fold(0f64, |m, v| m.max(v.abs()));
            let scale = scale_of(b * n + c, &block, absmax);
            // Codes follow the exact (f64) scale, so the block's absmax lands exactly on
            // (qmax - qmin) / 2 and rounds half to even as the semantics say; the scale is stored
            // as f32 (a relative difference below 1e-7).
            scales[b * n + c] = scale as f32;
            for r in 0..rows {
                codes[(b * rows_per + r) * n + c] = quantize(block[r], scale, bits) as i8;
            }
        }
    }
    Ok(QuantWeight {
        k,
        n,
        bits,
        group,
        codes,
        scales,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_scales_follow_the_study() {
        assert_eq!(signed_range(8), (-128.0, 127.0));
        assert_eq!(signed_range(4), (-8.0, 7.0));
        assert_eq!(signed_range(3), (-4.0, 3.0));
        assert_eq!(scale_for(7.5, 4), 1.0);
        assert_eq!(scale_for(127.5, 8), 1.0);
        // absmax maps to 7.5 -> rounds to 8 (even) -> clamped to 7.
        assert_eq!(quantize(7.5, 1.0, 4), 7.0);
        assert_eq!(quantize(-7.5, 1.0, 4), -8.0);
        assert_eq!(quantize(2.5, 1.0, 4), 2.0); // half to even
    }

    #[test]
    fn per_channel_and_group_blocks() {
        // K = 4, N = 2
        let w = [1.0f32, -2.0, 0.5, 4.0, -1.5, 1.0, 0.25, -8.0];
        let q = quantize_matrix(&w, 4, 2, 8, None, Observer::Rtn).unwrap();
        assert_eq!(q.scales, vec![(1.5 / 127.5) as f32, (8.0 / 127.5) as f32]);
        let g = quantize_matrix(&w, 4, 2, 8, Some(2), Observer::Rtn).unwrap();
        assert_eq!(g.scales.len(), 4);
        assert_eq!(g.scales[0], (1.0 / 127.5) as f32); // rows 0-1, column 0
        assert_eq!(g.scales[3], (8.0 / 127.5) as f32); // rows 2-3, column 1
                                                       // A group size that does not divide K leaves a partial last group.
        let p = quantize_matrix(&w, 4, 2, 8, Some(3), Observer::Rtn).unwrap();
        assert_eq!(p.groups(), 2);
        assert_eq!(p.scales[2], (0.25 / 127.5) as f32); // row 3 alone, column 0
        assert!(quantize_matrix(&w, 4, 2, 8, Some(0), Observer::Rtn).is_err());
    }

    #[test]
    fn omse_never_worse_than_rtn() {
        let w: Vec<f32> = (0..256)
            .map(|i| ((i * 7919 % 211) as f32 / 105.0 - 1.0).powi(3))
            .collect();
        for bits in [3, 4, 8] {
            let r = quantize_matrix(&w, 32, 8, bits, None, Observer::Rtn)
                .unwrap()
                .dequantize();
            let o = quantize_matrix(&w, 32, 8, bits, None, Observer::Omse)
                .unwrap()
                .dequantize();
            let e = |d: &[f32]| {
                d.iter()
                    .zip(&w)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
            };
            assert!(e(&o) <= e(&r) * (1.0 + 1e-9), "bits {bits}");
        }
    }

    #[test]
    fn clipped_blocks_match_a_float64_reference_and_clip_one_is_rtn() {
        let (k, n) = (10usize, 3usize);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 37 % 23) as f32 / 11.0 - 1.0) * 0.7)
            .collect();
        for group in [None, Some(4)] {
            let blocks = k.div_ceil(group.unwrap_or(k));
            let clip: Vec<f64> = (0..blocks * n).map(|i| 0.4 + 0.05 * i as f64).collect();
            let q = quantize_matrix_clipped(&w, k, n, 3, group, &clip).unwrap();
            let rows = group.unwrap_or(k);
            for c in 0..n {
                for b in 0..blocks {
                    let r: Vec<usize> = (b * rows..((b + 1) * rows).min(k)).collect();
                    let absmax = r
                        .iter()
                        .fold(0f64, |m, &i| m.max((w[i * n + c] as f64).abs()));
                    // Reference: scale of clip * absmax over (qmax - qmin) / 2 = 3.5 at 3 bits.
                    let scale = clip[b * n + c] * absmax / 3.5;
                    for &i in &r {
                        let code = (w[i * n + c] as f64 / scale)
                            .round_ties_even()
                            .clamp(-4.0, 3.0);
                        assert_eq!(q.codes[i * n + c] as f64, code, "row {i} col {c}");
                    }
                    assert_eq!(q.scales[b * n + c], scale as f32);
                }
            }
            let ones = vec![1.0; blocks * n];
            assert_eq!(
                quantize_matrix_clipped(&w, k, n, 3, group, &ones).unwrap(),
                quantize_matrix(&w, k, n, 3, group, Observer::Rtn).unwrap()
            );
            assert!(quantize_matrix_clipped(&w, k, n, 3, group, &ones[1..]).is_err());
            let mut bad = ones.clone();
            bad[0] = 1.5;
            assert!(quantize_matrix_clipped(&w, k, n, 3, group, &bad).is_err());
        }
    }
}
