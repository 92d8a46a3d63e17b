//! Scaled dot-product attention on f32, one batch item and head at a time:
//! `O = softmax(mask(scale * Q K^T)) V`, the kernel of tract's fused attention operator
//! ([`crate::engine::tract::attention`]).
//!
//! Why a kernel of its own: tract 0.23 runs an exported attention block as two `EinSum`s, a
//! scale, a `Where` and a `Softmax`, each a pass over the whole `[batch, heads, n, m]` score
//! tensor in memory, with the heads moved to the front and back around the products. On the
//! full-size predictor at batch 16 that block took about 730 ms of a 1150 ms int8 call; its
//! products ran at 15-29 GMAC/s where a plain GEMM runs at 45. Here each head's scores
//! (`n x m`, 150 KiB for 196 tokens) stay in L2 from the first product through the softmax to
//! the second, the products read Q, K and V where they lie (strided, no transposes) through
//! `matrixmultiply`'s packed GEMM (AVX-512, AVX2/FMA or NEON kernels picked at run time), and the
//! softmax uses a vectorizable `exp`.
//!
//! Semantics are those of the ONNX chain it replaces, in f32: the scaled product (one rounding for
//! the sum, one for the scale), the fill value written where the mask says, and
//! `exp(x - max) / sum` along the keys. A row whose scores are all `-inf` gives NaN, as the ONNX
//! chain does; NaN in a row makes the whole row NaN.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

/// The shape of one attention call, in the exporters' `[batch, tokens, heads, head_dim]` layout:
/// Q is `[batch, queries, heads, head_dim]`, K `[batch, keys, heads, head_dim]`,
/// V `[batch, keys, heads, value_dim]` and the output `[batch, queries, heads, value_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch items.
    pub batch: usize,
    /// Query tokens (n).
    pub queries: usize,
    /// Key and value tokens (m).
    pub keys: usize,
    /// Heads.
    pub heads: usize,
    /// Width of a query or key per head.
    pub head_dim: usize,
    /// Width of a value per head.
    pub value_dim: usize,
}

impl Dims {
    /// Elements of Q, K, V and the output.
    pub fn lens(&self) -> [usize; 4] {
        let (b, n, m, h) = (self.batch, self.queries, self.keys, self.heads);
        [
            b * n * h * self.head_dim,
            b * m * h * self.head_dim,
            b * m * h * self.value_dim,
            b * n * h * self.value_dim,
        ]
    }
}

/// Where the scores are replaced by a fill value before the softmax (ONNX `Where`).
#[derive(Clone, Copy, Debug)]
pub struct Mask<'a> {
    /// The condition, broadcast to `[batch, heads, queries, keys]` through `strides`.
    pub cond: &'a [bool],
    /// Element strides of `cond` along batch, heads, queries and keys (0 where broadcast).
    pub strides: [usize; 4],
    /// The value written.
    pub fill: f32,
    /// Fill where `cond` is true (`Where(cond, fill, scores)`) or where it is false
    /// (`Where(cond, scores, fill)`).
    pub fill_when: bool,
}

impl Mask<'_> {
    /// Where the conditions of query row `i` of batch item `b`, head `h` start in `cond`, and
    /// their step along the keys.
    fn row(&self, b: usize, h: usize, i: usize) -> (usize, usize) {
        let [sb, sh, sn, sm] = self.strides;
        (b * sb + h * sh + i * sn, sm)
    }

    /// Write the fill into the scores of one row where its conditions (from `start`, every
    /// `step`) say so.
    #[inline(always)]
    fn fill_row(&self, row: &mut [f32], start: usize, step: usize) {
        for (j, x) in row.iter_mut().enumerate() {
            if self.cond[start + j * step] == self.fill_when {
                *x = self.fill;
            }
        }
    }
}

/// `out = softmax(mask(scale * Q K^T)) V` for every batch item and head (layouts in [`Dims`]),
/// on the best [`Kernel`] this CPU has.
///
/// Panics if a slice's length disagrees with `dims` or the mask's strides reach past its end:
/// callers check the shapes of their tensors first.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    scale: f32,
    mask: Option<&Mask>,
    out: &mut [f32],
) {
    attention_with(Kernel::best(), q, k, v, dims, scale, mask, out)
}

/// How the products run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `matrixmultiply`'s packed GEMM (its own AVX-512, AVX2/FMA or NEON kernels), softmax
    /// vectorized by the compiler for the build's target.
    Portable,
    /// qwm's AVX-512 tiles, reading Q and V where they lie and K transposed once per head; the
    /// softmax compiled for AVX-512.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs (AVX-512 unless `QWM_ISA` masks it).
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && crate::kernels::isa::Isa::avx512_allowed()
        {
            return Kernel::Avx512;
        }
        Kernel::Portable
    }

    /// Every kernel this CPU runs (for tests and comparisons).
    pub fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            all.push(Kernel::Avx512);
        }
        all
    }
}

/// [`attention`] on a given kernel; panics if this CPU cannot run it.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    kernel: Kernel,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    scale: f32,
    mask: Option<&Mask>,
    out: &mut [f32],
) {
    let [lq, lk, lv, lo] = dims.lens();
    assert!(
        q.len() == lq && k.len() == lk && v.len() == lv && out.len() == lo,
        "attention: slice lengths disagree with {dims:?}"
    );
    if lo == 0 {
        return;
    }
    if dims.keys == 0 {
        // No keys: the second product sums over nothing.
        out.fill(0.0);
        return;
    }
    if let Some(mk) = mask {
        let last = [dims.batch, dims.heads, dims.queries, dims.keys]
            .iter()
            .zip(mk.strides)
            .map(|(len, s)| (len - 1) * s)
            .sum::<usize>();
        assert!(last < mk.cond.len(), "attention: mask strides out of range");
    }
    match kernel {
        Kernel::Portable => portable::portable(q, k, v, dims, scale, mask, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            assert!(
                std::arch::is_x86_feature_detected!("avx512f"),
                "attention: this CPU has no AVX-512"
            );
            // SAFETY: AVX-512F checked above; shapes checked above.
            unsafe { x86_avx512::attention(q, k, v, dims, scale, mask, out) }
        }
    }
}

/// Rows of the scores of batch item `b`, head `h` (`m` values every `stride`): fill where
/// masked, then softmax each row.
#[inline(always)]
fn mask_softmax(s: &mut [f32], stride: usize, m: usize, mask: Option<(&Mask, usize, usize)>) {
    for (i, row) in s.chunks_exact_mut(stride).enumerate() {
        let row = &mut row[..m];
        if let Some((mk, b, h)) = mask {
            let (start, step) = mk.row(b, h, i);
            mk.fill_row(row, start, step);
        }
        softmax(row);
    }
}

/// Lanes of the partial reductions (one AVX-512 register of f32).
const LANES: usize = 16;

/// `x[i] = exp(x[i] - max) / sum_j exp(x[j] - max)`, in place.
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = l.max(*x);
        }
    }
    max = lanes.iter().fold(max, |a, &b| a.max(b));
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (acc, x) in sums.iter_mut().zip(c.iter_mut()) {
            *x = exp_nonpositive(*x - max);
            *acc += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    sum += sums.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `exp(x)` for `x <= 0` (a score minus its row's maximum), within 2 ulp; 0 below -87 (where
/// `exp` is under 1.7e-38), NaN for NaN. Cephes' `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2`,
/// a degree-7 polynomial for `exp(r)`, and `2^n` built in the exponent bits. Branch-free, so
/// the loops above vectorize.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LO: f32 = -87.0;
    // 1.5 * 2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // NaN stays NaN.
    let xc = x.clamp(LO, 0.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    // n is in [-126, 0]: its low bits plus the bias 127 form 2^n's exponent field.
    let pow2n = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    if x < LO {
        0.0
    } else {
        p * pow2n
    }
}

#[cfg(test)]
mod tests;
