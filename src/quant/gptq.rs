//! GPTQ (Frantar et al., 2023): weights quantized one input channel at a time, the rounding error
//! of each pushed onto the channels not yet quantized through the inverse Hessian of the layer's
//! calibration inputs, so that the layer's output `X W` moves as little as possible.
//!
//! Semantics (the reference implementation's `fasterquant`, in qwm's `[K (in), N (out)]` layout,
//! with the study's signed symmetric quantizer of [`super::weights`]):
//!
//! 1. `H = 2 X^T X / rows` over the calibration inputs of the layer (float model, one pass: every
//!    layer's Hessian comes from the same float run, not from the partly quantized model).
//! 2. An input channel never seen (`H_jj = 0`) gets `H_jj = 1` and a zero weight row.
//! 3. With activation order, channels are processed by decreasing `H_jj`.
//! 4. Dampening: `H += damp * mean(diag H) * I`; if `H` is still not positive definite, the
//!    dampening is raised tenfold (at most four times) and the result records it.
//! 5. `U` = the upper Cholesky factor of `H^-1` (`H^-1 = U^T U`).
//! 6. For each channel `j` in order: `q_j = Q(w_j)` with the block's scale, `e = (w_j - q_j) / U_jj`,
//!    `w_i -= e U_ji` for every later channel `i`. Updates inside a block of channels are applied
//!    at once; those to later blocks are batched at the end of the block (lazy batch updates:
//!    the same numbers, one matrix product per block).
//! 7. Scales: per output channel, from the weights before any update; group-wise in channel order,
//!    each group's scale from its weights when the group's first channel is reached (so after
//!    the error feedback of the groups before it). Activation order with groups uses static groups
//!    (every group's scale from the weights before any update), since qwm's formats store
//!    contiguous groups of input channels.

use super::weights::{quantize, quantize_matrix, scale_for, Observer, QuantWeight};
use crate::error::{QwmError, Result};

/// GPTQ's settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptqOptions {
    /// Dampening as a fraction of the mean diagonal of `H` (the reference's `percdamp`, 0.01).
    pub damp: f64,
    /// Channels per lazy-update block (rounded up to a multiple of the group size).
    pub block: usize,
    /// Process input channels by decreasing Hessian diagonal (`act_order` / `desc_act`).
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: 0.01,
            block: 128,
            act_order: false,
        }
    }
}

/// The second moment of a layer's inputs: `sum x x^T` over `rows` input rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    /// Input channels.
    pub k: usize,
    /// `[k, k]`, row-major, symmetric.
    pub xtx: Vec<f64>,
    /// Rows summed.
    pub rows: u64,
}

impl Hessian {
    /// From input rows (`data.len() / k` rows of `k` values).
    pub fn from_rows(data: &[f32], k: usize) -> Hessian {
        let mut h = Hessian {
            k,
            xtx: vec![0.0; k * k],
            rows: 0,
        };
        for row in data.chunks_exact(k) {
            h.add_row(row);
        }
        h.symmetrize();
        h
    }

    /// Add one row to the upper triangle (call [`Hessian::symmetrize`] before use).
    pub fn add_row(&mut self, row: &[f32]) {
        let k = self.k;
        for (a, &xa) in row.iter().enumerate() {
            let xa = xa as f64;
            if xa == 0.0 {
                continue;
            }
            let dst = &mut self.xtx[a * k + a..(a + 1) * k];
            for (d, &xb) in dst.iter_mut().zip(&row[a..]) {
                *d += xa * xb as f64;
            }
        }
        self.rows += 1;
    }

    /// Copy the upper triangle into the lower one.
    pub fn symmetrize(&mut self) {
        let k = self.k;
        for a in 0..k {
            for b in 0..a {
                self.xtx[a * k + b] = self.xtx[b * k + a];
            }
        }
    }
}

/// What GPTQ did to one layer (recorded in the manifest).
pub use crate::bundle::record::GptqRecord as GptqReport;

/// In-place lower Cholesky factor of a symmetric `[k, k]` matrix; `Err(j)` when the pivot of
/// row `j` is not positive.
pub fn cholesky(a: &mut [f64], k: usize) -> std::result::Result<(), usize> {
    for j in 0..k {
        let mut d = a[j * k + j];
        for p in 0..j {
            d -= a[j * k + p] * a[j * k + p];
        }
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        let d = d.sqrt();
        a[j * k + j] = d;
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = s / d;
        }
        for i in 0..j {
            a[i * k + j] = 0.0;
        }
    }
    Ok(())
}

/// The upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), for a positive definite `H`.
fn inverse_upper_cholesky(h: &[f64], k: usize) -> std::result::Result<Vec<f64>, usize> {
    let mut l = h.to_vec();
    cholesky(&mut l, k)?;
    // L^-1 (lower), column by column by forward substitution.
    let mut li = vec![0f64; k * k];
    for c in 0..k {
        for r in c..k {
            let mut s = if r == c { 1.0 } else { 0.0 };
            for p in c..r {
                s -= l[r * k + p] * li[p * k + c];
            }
            li[r * k + c] = s / l[r * k + r];
        }
    }
    // H^-1 = L^-T L^-1.
    let mut hi = vec![0f64; k * k];
    for a in 0..k {
        for b in a..k {
            let mut s = 0.0;
            for p in b..k {
                s += li[p * k + a] * li[p * k + b];
            }
            hi[a * k + b] = s;
            hi[b * k + a] = s;
        }
    }
    cholesky(&mut hi, k)?;
    // U = C^T.
    let mut u = vec![0f64; k * k];
    for a in 0..k {
        for b in 0..=a {
            u[b * k + a] = hi[a * k + b];
        }
    }
    Ok(u)
}

/// Quantize a `[K, N]` weight with GPTQ, given the Hessian of its inputs.
pub fn quantize_gptq(
    w: &[f32],
    k: usize,
    n: usize,
    hessian: &Hessian,
    bits: u32,
    group: Option<usize>,
    opts: &GptqOptions,
) -> Result<(QuantWeight, GptqReport)> {
    if w.len() != k * n || k == 0 || n == 0 {
        return Err(QwmError::Usage(format!(
            "weight of {} values is not {k} x {n}",
            w.len()
        )));
    }
    if hessian.k != k || hessian.xtx.len() != k * k {
        return Err(QwmError::Usage(format!(
            "GPTQ: the Hessian is {} x {} for a weight of {k} input channels",
            hessian.k, hessian.k
        )));
    }
    if hessian.rows == 0 {
        return Err(QwmError::Usage(
            "GPTQ: no calibration rows reached this layer".into(),
        ));
    }
    if !(2..=8).contains(&bits) {
        return Err(QwmError::Usage(format!(
            "{bits}-bit weights are not supported"
        )));
    }
    if group == Some(0) {
        return Err(QwmError::Usage("group size must be at least 1".into()));
    }
    if !(opts.damp.is_finite() && opts.damp > 0.0 && opts.damp <= 1.0) {
        return Err(QwmError::Usage(format!(
            "--gptq-damp {} must be in (0, 1]",
            opts.damp
        )));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(QwmError::Numeric("weight contains NaN/Inf".into()));
    }
    if hessian.xtx.iter().any(|v| !v.is_finite()) {
        return Err(QwmError::Numeric(
            "GPTQ: the calibration Hessian contains NaN/Inf".into(),
        ));
    }
    let scale_h = 2.0 / hessian.rows as f64;
    let mut h: Vec<f64> = hessian.xtx.iter().map(|v| v * scale_h).collect();
    let mut wd: Vec<f64> = w.iter().map(|v| *v as f64).collect();
    let mut dead = 0;
    for j in 0..k {
        if h[j * k + j] == 0.0 {
            h[j * k + j] = 1.0;
            wd[j * n..(j + 1) * n].fill(0.0);
            dead += 1;
        }
    }
    // Processing order: position p handles input channel perm[p].
    let mut perm: Vec<usize> = (0..k).collect();
    if opts.act_order {
        perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
    }
    let rows_per = group.unwrap_or(k).min(k);
    let blocks = k.div_ceil(rows_per);
    // Scales known before the loop: per channel, or every group with static groups.
    let static_scales = group.is_none() || opts.act_order;
    let mut scales = vec![0f64; blocks * n];
    if static_scales {
        for b in 0..blocks {
            for c in 0..n {
                let absmax = (b * rows_per..((b + 1) * rows_per).min(k))
                    .fold(0f64, |m, r| m.max(wd[r * n + c].abs()));
                scales[b * n + c] = scale_for(absmax, bits);
            }
        }
    }
    // Permuted copies.
    let mut wp = vec![0f64; k * n];
    let mut hp = vec![0f64; k * k];
    for (p, &j) in perm.iter().enumerate() {
        wp[p * n..(p + 1) * n].copy_from_slice(&wd[j * n..(j + 1) * n]);
        for (p2, &j2) in perm.iter().enumerate() {
            hp[p * k + p2] = h[j * k + j2];
        }
    }
    let mean_diag = (0..k).map(|j| hp[j * k + j]).sum::<f64>() / k as f64;
    let (mut damp, mut u) = (opts.damp, None);
    for _ in 0..5 {
        let mut hd = hp.clone();
        for j in 0..k {
            hd[j * k + j] += damp * mean_diag;
        }
        if let Ok(f) = inverse_upper_cholesky(&hd, k) {
            u = Some(f);
            break;
        }
        damp *= 10.0;
    }
    let u = u.ok_or_else(|| {
        QwmError::Numeric(format!(
            "GPTQ: the calibration Hessian is not positive definite even with dampening {damp:e}"
        ))
    })?;
    // Blocks never split a group (a group's scale needs its channels up to date).
    let block = if group.is_some() && !opts.act_order {
        opts.block.max(1).div_ceil(rows_per) * rows_per
    } else {
        opts.block.max(1)
    };
    let mut codes_p = vec![0i8; k * n];
    let mut err = vec![0f64; block * n];
    let mut i1 = 0;
    while i1 < k {
        let i2 = (i1 + block).min(k);
        for p in i1..i2 {
            let j = perm[p];
            let gb = j / rows_per;
            if !static_scales && j.is_multiple_of(rows_per) {
                // Natural order: channels j.. of this group are p.. and all inside this block.
                let end = (j + rows_per).min(k);
                for c in 0..n {
                    let absmax = (p..p + (end - j)).fold(0f64, |m, r| m.max(wp[r * n + c].abs()));
                    scales[gb * n + c] = scale_for(absmax, bits);
                }
            }
            let d = u[p * k + p];
            let e_row = &mut err[(p - i1) * n..(p - i1 + 1) * n];
            for c in 0..n {
                let s = scales[gb * n + c];
                let wv = wp[p * n + c];
                let q = quantize(wv, s, bits);
                codes_p[p * n + c] = q as i8;
                e_row[c] = (wv - q * s) / d;
            }
            // Updates inside the block, now.
            for p2 in p + 1..i2 {
                let f = u[p * k + p2];
                if f == 0.0 {
                    continue;
                }
                let row = &mut wp[p2 * n..(p2 + 1) * n];
                for (x, e) in row.iter_mut().zip(e_row.iter()) {
                    *x -= e * f;
                }
            }
        }
        // Updates of later blocks, batched: W[i2..] -= U[i1..i2, i2..]^T Err.
        for p2 in i2..k {
            let row = &mut wp[p2 * n..(p2 + 1) * n];
            for p in i1..i2 {
                let f = u[p * k + p2];
                if f == 0.0 {
                    continue;
                }
                let e_row = &err[(p - i1) * n..(p - i1 + 1) * n];
                for (x, e) in row.iter_mut().zip(e_row) {
                    *x -= e * f;
                }
            }
        }
        i1 = i2;
    }
    let mut codes = vec![0i8; k * n];
    for (p, &j) in perm.iter().enumerate() {
        codes[j * n..(j + 1) * n].copy_from_slice(&codes_p[p * n..(p + 1) * n]);
    }
    let q = QuantWeight {
        k,
        n,
        bits,
        group,
        codes,
        scales: scales.iter().map(|s| *s as f32).collect(),
    };
    let rtn = quantize_matrix(w, k, n, bits, group, Observer::Rtn)?;
    let output_error = relative_output_error(w, &q.dequantize(), n, hessian);
    let rtn_output_error = relative_output_error(w, &rtn.dequantize(), n, hessian);
    Ok((
        q,
        GptqReport {
            act_order: opts.act_order,
            damp,
            dead,
            output_error,
            rtn_output_error,
        },
    ))
}

/// `||X (W - Q)||^2 / ||X W||^2` from `X^T X`: `sum_c d_c^T (X^T X) d_c` over output columns.
pub fn relative_output_error(w: &[f32], wq: &[f32], n: usize, h: &Hessian) -> f64 {
    let k = h.k;
    let quad = |v: &dyn Fn(usize, usize) -> f64| {
        let mut t = 0f64;
        for c in 0..n {
            for a in 0..k {
                let va = v(a, c);
                if va == 0.0 {
                    continue;
                }
                let row = &h.xtx[a * k..(a + 1) * k];
                t += va * (0..k).map(|b| row[b] * v(b, c)).sum::<f64>();
            }
        }
        t
    };
    let num = quad(&|r, c| w[r * n + c] as f64 - wq[r * n + c] as f64);
    let den = quad(&|r, c| w[r * n + c] as f64);
    num / den.max(1e-300)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Inputs with correlated channels (a random mixing of a few latent factors plus noise), and
    /// a few channels much larger than the rest, as Linear inputs of a transformer look.
    fn inputs(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let f = 3;
        let mix: Vec<f64> = (0..f * k)
            .map(|_| rng.random::<f64>() * 2.0 - 1.0)
            .collect();
        let mut x = Vec::with_capacity(rows * k);
        for _ in 0..rows {
            let z: Vec<f64> = (0..f).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
            for j in 0..k {
                let mut v = (0..f).map(|a| z[a] * mix[a * k + j]).sum::<f64>();
                v += 0.1 * (rng.random::<f64>() - 0.5);
                if j % 5 == 0 {
                    v *= 4.0;
                }
                x.push(v as f32);
            }
        }
        x
    }

    fn weights(k: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..k * n)
            .map(|_| (rng.random::<f64>() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// Independent float64 reference: Optimal Brain Quantization in its original form (explicit
    /// inverse Hessian of the channels not yet quantized, updated by Gaussian elimination after
    /// each channel; no Cholesky, no blocks, no permuted copies), which GPTQ computes with the
    /// Cholesky factor for a fixed order. Scales as the module doc states.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        w: &[f32],
        k: usize,
        n: usize,
        x: &[f32],
        bits: u32,
        group: Option<usize>,
        damp: f64,
        act_order: bool,
    ) -> (Vec<i8>, Vec<f64>) {
        let rows = x.len() / k;
        let mut h = vec![0f64; k * k];
        for r in 0..rows {
            for a in 0..k {
                for b in 0..k {
                    h[a * k + b] += 2.0 * x[r * k + a] as f64 * x[r * k + b] as f64 / rows as f64;
                }
            }
        }
        let mut w: Vec<f64> = w.iter().map(|v| *v as f64).collect();
        for j in 0..k {
            if h[j * k + j] == 0.0 {
                h[j * k + j] = 1.0;
                for c in 0..n {
                    w[j * n + c] = 0.0;
                }
            }
        }
        let mean = (0..k).map(|j| h[j * k + j]).sum::<f64>() / k as f64;
        for j in 0..k {
            h[j * k + j] += damp * mean;
        }
        // Gauss-Jordan inverse.
        let mut a = h.clone();
        let mut inv = vec![0f64; k * k];
        for j in 0..k {
            inv[j * k + j] = 1.0;
        }
        for c in 0..k {
            let piv = (c..k)
                .max_by(|&i, &j| a[i * k + c].abs().total_cmp(&a[j * k + c].abs()))
                .unwrap();
            for t in 0..k {
                a.swap(c * k + t, piv * k + t);
                inv.swap(c * k + t, piv * k + t);
            }
            let d = a[c * k + c];
            for t in 0..k {
                a[c * k + t] /= d;
                inv[c * k + t] /= d;
            }
            for r in 0..k {
                if r != c {
                    let f = a[r * k + c];
                    for t in 0..k {
                        a[r * k + t] -= f * a[c * k + t];
                        inv[r * k + t] -= f * inv[c * k + t];
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..k).collect();
        if act_order {
            order.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
        }
        let g = group.unwrap_or(k);
        let blocks = k.div_ceil(g);
        let mut scales = vec![0f64; blocks * n];
        let set_scales = |w: &[f64], b: usize, scales: &mut Vec<f64>| {
            for c in 0..n {
                let m = (b * g..((b + 1) * g).min(k)).fold(0f64, |m, r| m.max(w[r * n + c].abs()));
                scales[b * n + c] = scale_for(m, bits);
            }
        };
        if group.is_none() || act_order {
            for b in 0..blocks {
                set_scales(&w, b, &mut scales);
            }
        }
        let mut codes = vec![0i8; k * n];
        let mut remaining: Vec<bool> = vec![true; k];
        for &q in &order {
            if !(group.is_none() || act_order) && q % g == 0 {
                set_scales(&w, q / g, &mut scales);
            }
            let fqq = inv[q * k + q];
            remaining[q] = false;
            for c in 0..n {
                let s = scales[(q / g) * n + c];
                let code = quantize(w[q * n + c], s, bits);
                codes[q * n + c] = code as i8;
                let e = (w[q * n + c] - code * s) / fqq;
                for j in 0..k {
                    if remaining[j] {
                        w[j * n + c] -= e * inv[j * k + q];
                    }
                }
            }
            // Remove q from the inverse of the remaining channels.
            let col: Vec<f64> = (0..k).map(|j| inv[j * k + q]).collect();
            for a in 0..k {
                for b in 0..k {
                    inv[a * k + b] -= col[a] * col[b] / fqq;
                }
            }
        }
        (codes, scales)
    }

    fn check_against_reference(k: usize, n: usize, bits: u32, group: Option<usize>, ao: bool) {
        let x = inputs(200, k, 7 + k as u64);
        let w = weights(k, n, 11 + n as u64);
        let h = Hessian::from_rows(&x, k);
        let opts = GptqOptions {
            damp: 0.01,
            block: 4,
            act_order: ao,
        };
        let (q, _) = quantize_gptq(&w, k, n, &h, bits, group, &opts).unwrap();
        let (codes, scales) = reference(&w, k, n, &x, bits, group, 0.01, ao);
        let what = format!("k {k} n {n} w{bits} group {group:?} act_order {ao}");
        for (a, b) in q.scales.iter().zip(&scales) {
            assert!(
                ((*a as f64) - b).abs() <= 1e-6 * b.abs(),
                "{what}: scale {a} vs {b}"
            );
        }
        let differ = q.codes.iter().zip(&codes).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ, 0,
            "{what}: {differ} codes differ from the reference"
        );
    }

    #[test]
    fn matches_the_obq_reference() {
        for (k, n, bits, group, ao) in [
            (12, 5, 4, None, false),
            (12, 5, 3, None, true),
            (16, 3, 4, Some(4), false),
            (14, 4, 3, Some(4), false), // a partial last group
            (16, 3, 4, Some(8), true),  // static groups
            (9, 2, 8, None, false),
        ] {
            check_against_reference(k, n, bits, group, ao);
        }
    }

    #[test]
    fn block_size_does_not_change_the_result() {
        let (k, n) = (40, 6);
        let x = inputs(300, k, 3);
        let w = weights(k, n, 4);
        let h = Hessian::from_rows(&x, k);
        for (group, ao) in [(None, false), (Some(8), false), (None, true)] {
            let run = |block| {
                let o = GptqOptions {
                    block,
                    act_order: ao,
                    ..GptqOptions::default()
                };
                quantize_gptq(&w, k, n, &h, 4, group, &o).unwrap().0
            };
            let a = run(1);
            for b in [3, 8, 16, 128] {
                assert_eq!(run(b).codes, a.codes, "block {b} group {group:?} ao {ao}");
            }
        }
    }

    #[test]
    fn uncorrelated_unit_inputs_give_round_to_nearest() {
        // H = 2 I: no error feedback, so GPTQ is RTN with the same scales.
        let (k, n) = (8, 3);
        let mut x = vec![0f32; k * k];
        for j in 0..k {
            x[j * k + j] = 1.0;
        }
        let w = weights(k, n, 5);
        let h = Hessian::from_rows(&x, k);
        for group in [None, Some(4)] {
            let (q, _) = quantize_gptq(&w, k, n, &h, 3, group, &GptqOptions::default()).unwrap();
            let r = quantize_matrix(&w, k, n, 3, group, Observer::Rtn).unwrap();
            assert_eq!(q.codes, r.codes);
            assert_eq!(q.scales, r.scales);
        }
    }

    #[test]
    fn two_channels_by_hand() {
        // One output; x = (1, 1) and (1, 0): H = 2/2 [[2, 1], [1, 1]] = [[2, 1], [1, 1]].
        // w = (0.3, 1.0), 4 bits per channel: scale = 1.0 / 7.5.
        // With no dampening worth counting, H^-1 = [[1, -1], [-1, 2]]; channel 0 rounds
        // 0.3 * 7.5 = 2.25 -> 2 (0.26667), error e = 0.03333 / H^-1_00 = 0.03333; channel 1 moves by
        // -e * H^-1_01 = +0.03333 to 1.03333, which rounds 7.75 -> clamp 7 (1.0).
        let x = [1.0f32, 1.0, 1.0, 0.0];
        let h = Hessian::from_rows(&x, 2);
        assert_eq!(h.xtx, vec![2.0, 1.0, 1.0, 1.0]);
        let o = GptqOptions {
            damp: 1e-12,
            ..GptqOptions::default()
        };
        let (q, rep) = quantize_gptq(&[0.3, 1.0], 2, 1, &h, 4, None, &o).unwrap();
        assert_eq!(q.codes, vec![2, 7]);
        assert_eq!(rep.dead, 0);
        // w = (0.3, 0.8): scale 0.8 / 7.5; channel 0: 0.3 / s = 2.8125 -> 3 (0.32), e = -0.02;
        // channel 1 moves by -e * H^-1_01 = -0.02 to 0.78, 7.3125 -> 7.
        let (q, _) = quantize_gptq(&[0.3, 0.8], 2, 1, &h, 4, None, &o).unwrap();
        assert_eq!(q.codes, vec![3, 7]);
    }

    #[test]
    fn lowers_the_layer_output_error_against_rtn() {
        let (k, n) = (32, 16);
        let x = inputs(400, k, 21);
        let w = weights(k, n, 22);
        let h = Hessian::from_rows(&x, k);
        let out_err = |wq: &[f32]| {
            let mut e = 0f64;
            for row in x.chunks_exact(k) {
                for c in 0..n {
                    let d: f64 = (0..k)
                        .map(|j| row[j] as f64 * (w[j * n + c] - wq[j * n + c]) as f64)
                        .sum();
                    e += d * d;
                }
            }
            e
        };
        for (bits, group) in [(3, None), (4, None), (4, Some(8))] {
            let (g, rep) =
                quantize_gptq(&w, k, n, &h, bits, group, &GptqOptions::default()).unwrap();
            let r = quantize_matrix(&w, k, n, bits, group, Observer::Rtn).unwrap();
            let (eg, er) = (out_err(&g.dequantize()), out_err(&r.dequantize()));
            assert!(eg < 0.7 * er, "w{bits} {group:?}: gptq {eg} rtn {er}");
            let rel = eg
                / x.chunks_exact(k)
                    .map(|row| {
                        (0..n)
                            .map(|c| {
                                (0..k)
                                    .map(|j| row[j] as f64 * w[j * n + c] as f64)
                                    .sum::<f64>()
                                    .powi(2)
                            })
                            .sum::<f64>()
                    })
                    .sum::<f64>();
            assert!(
                (rep.output_error - rel).abs() <= 1e-6 * rel,
                "{} vs {rel}",
                rep.output_error
            );
            assert!(rep.output_error < rep.rtn_output_error);
        }
    }

    #[test]
    fn dead_channels_and_bad_input() {
        let k = 4;
        // Channel 2 never nonzero.
        let x = [
            1.0f32, 0.5, 0.0, 0.2, 0.3, 1.0, 0.0, -0.4, -1.0, 0.2, 0.0, 1.0,
        ];
        let h = Hessian::from_rows(&x, k);
        let w = [0.5f32, -0.25, 0.9, 0.1];
        let (q, rep) = quantize_gptq(&w, k, 1, &h, 4, None, &GptqOptions::default()).unwrap();
        assert_eq!(rep.dead, 1);
        assert_eq!(q.codes[2], 0);
        let bad = |r: Result<(QuantWeight, GptqReport)>| r.unwrap_err().to_string();
        let o = GptqOptions::default();
        assert!(bad(quantize_gptq(&w[..2], 2, 1, &h, 4, None, &o)).contains("Hessian"));
        let mut nan = w;
        nan[1] = f32::NAN;
        assert!(bad(quantize_gptq(&nan, k, 1, &h, 4, None, &o)).contains("NaN"));
        let none = Hessian {
            k,
            xtx: vec![0.0; k * k],
            rows: 0,
        };
        assert!(bad(quantize_gptq(&w, k, 1, &none, 4, None, &o)).contains("no calibration"));
        let d = GptqOptions { damp: 0.0, ..o };
        assert!(bad(quantize_gptq(&w, k, 1, &h, 4, None, &d)).contains("--gptq-damp"));
    }

    #[test]
    fn cholesky_factors_and_refuses() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        cholesky(&mut a, 2).unwrap();
        assert_eq!(a, vec![2.0, 0.0, 1.0, 2f64.sqrt()]);
        let mut s = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky(&mut s, 2), Err(1));
        let u = inverse_upper_cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        // U^T U = H^-1 = [[3, -2], [-2, 4]] / 8.
        let hi = [
            u[0] * u[0],
            u[0] * u[1],
            u[1] * u[0],
            u[1] * u[1] + u[3] * u[3],
        ];
        for (a, b) in hi.iter().zip([3.0 / 8.0, -0.25, -0.25, 0.5]) {
            assert!((a - b).abs() < 1e-12, "{hi:?}");
        }
        assert_eq!(u[2], 0.0);
    }
}
