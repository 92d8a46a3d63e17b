//! Scaled dot-product attention on f32, one batch item and head at a time:
//! `O = softmax(mask(scale * Q K^T)) V`, the kernel of tract's fused attention operator
//! ([`crate::engine::tract::attention`]).
//!
//! Why a kernel of its own: tract 0.23 runs an exported attention block as two `EinSum`s, a
//! scale, a `Where` and a `Softmax`, each a pass over the whole `[batch, heads, n, m]` score
//! tensor in memory, with the heads moved to the front and back around the products. On the
//! full-size predictor at batch 16 that block took about 730 ms of a 1150 ms int8 call; its
//! products ran at 15-29 GMAC/s where a plain GEMM runs at 45 (issue 8). Here each head's scores
//! (`n x m`, 150 KiB for 196 tokens) stay in L2 from the first product through the softmax to
//! the second, the products read Q, K and V where they lie (strided, no transposes) through
//! `matrixmultiply`'s packed GEMM (AVX-512, AVX2/FMA or NEON kernels picked at run time), and the
//! softmax uses a vectorizable `exp`.
//!
//! Semantics are those of the ONNX chain it replaces, in f32: the scaled product (one rounding for
//! the sum, one for the scale), the fill value written where the mask says, and
//! `exp(x - max) / sum` along the keys. A row whose scores are all `-inf` gives NaN, as the ONNX
//! chain does; NaN in a row makes the whole row NaN.

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
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Kernel::Avx512;
        }
        Kernel::Portable
    }

    /// Every kernel this CPU runs (for tests and comparisons).
    pub fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        if Kernel::best() != Kernel::Portable {
            all.push(Kernel::best());
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
        Kernel::Portable => portable(q, k, v, dims, scale, mask, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            assert!(
                std::arch::is_x86_feature_detected!("avx512f"),
                "attention: this CPU has no AVX-512"
            );
            // SAFETY: AVX-512F checked above; shapes checked above.
            unsafe { avx512::attention(q, k, v, dims, scale, mask, out) }
        }
    }
}

fn portable(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    scale: f32,
    mask: Option<&Mask>,
    out: &mut [f32],
) {
    let Dims {
        batch,
        queries: n,
        keys: m,
        heads,
        head_dim: d,
        value_dim: e,
    } = dims;
    let mut s = vec![0f32; n * m];
    for b in 0..batch {
        for h in 0..heads {
            // SAFETY: `attention_with` checked the lengths, which keep every (row, column) of
            // the three products inside q, k, v, s and out: Q_bh[i, j] =
            // q[((b n + i) heads + h) d + j], K_bh^T[j, i] = k[((b m + i) heads + h) d + j],
            // V_bh[i, j] = v[((b m + i) heads + h) e + j], O_bh likewise in out; s is n x m.
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    d,
                    m,
                    scale,
                    q.as_ptr().add((b * n * heads + h) * d),
                    (heads * d) as isize,
                    1,
                    k.as_ptr().add((b * m * heads + h) * d),
                    1,
                    (heads * d) as isize,
                    0.0,
                    s.as_mut_ptr(),
                    m as isize,
                    1,
                );
            }
            mask_softmax(&mut s, m, m, mask.map(|mk| (mk, b, h)));
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    m,
                    e,
                    1.0,
                    s.as_ptr(),
                    m as isize,
                    1,
                    v.as_ptr().add((b * m * heads + h) * e),
                    (heads * e) as isize,
                    1,
                    0.0,
                    out.as_mut_ptr().add((b * n * heads + h) * e),
                    (heads * e) as isize,
                    1,
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Dims, Mask};
    use std::arch::x86_64::*;

    /// Rows per tile: 14 rows x 2 vectors = 28 accumulators of the 32 registers, and 196
    /// tokens (DINO-WM's 14 x 14 patches) are 14 tiles.
    const MR: usize = 14;

    /// The lanes below `n` (at most 16).
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// `C[i][j] = alpha sum_c A[i][c] B[c][j]` for `R` rows and the columns `masks` keep of 32:
    /// `A[i][c] = a[i rsa + c]`, `B[c][j] = b[c rsb + j]`, `C[i][j] = c[i rsc + j]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        rsa: usize,
        b: *const f32,
        rsb: usize,
        c: *mut f32,
        rsc: usize,
        alpha: f32,
        masks: [__mmask16; 2],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for kk in 0..k {
            let bp = b.wrapping_add(kk * rsb);
            // Masked-off lanes are not read, so the last columns of a row may end the tensor.
            let b0 = _mm512_maskz_loadu_ps(masks[0], bp);
            let b1 = _mm512_maskz_loadu_ps(masks[1], bp.wrapping_add(16));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(i * rsa + kk));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
        let al = _mm512_set1_ps(alpha);
        for (i, acc) in acc.iter().enumerate() {
            let cp = c.wrapping_add(i * rsc);
            _mm512_mask_storeu_ps(cp, masks[0], _mm512_mul_ps(acc[0], al));
            _mm512_mask_storeu_ps(cp.wrapping_add(16), masks[1], _mm512_mul_ps(acc[1], al));
        }
    }

    /// `C = alpha A B` for `rows x cols` with inner dimension `k`, layouts as in [`tile`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        rows: usize,
        cols: usize,
        k: usize,
        a: *const f32,
        rsa: usize,
        b: *const f32,
        rsb: usize,
        c: *mut f32,
        rsc: usize,
        alpha: f32,
    ) {
        let mut j0 = 0;
        while j0 < cols {
            let w = cols - j0;
            let masks = [lanes(w), lanes(w.saturating_sub(16))];
            let (b, c) = (b.add(j0), c.add(j0));
            let mut i0 = 0;
            while i0 + MR <= rows {
                let (a, c) = (a.add(i0 * rsa), c.add(i0 * rsc));
                tile::<MR>(k, a, rsa, b, rsb, c, rsc, alpha, masks);
                i0 += MR;
            }
            let (a, c) = (a.add(i0 * rsa), c.add(i0 * rsc));
            macro_rules! rest {
                ($($r:literal)*) => {
                    match rows - i0 {
                        $($r => tile::<$r>(k, a, rsa, b, rsb, c, rsc, alpha, masks),)*
                        _ => {}
                    }
                };
            }
            rest!(1 2 3 4 5 6 7 8 9 10 11 12 13);
            j0 += 32;
        }
    }

    /// `exp(x)` for `x <= 0` on 16 lanes: [`super::exp_nonpositive`] with fused multiply-adds.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn exp16(x: __m512) -> __m512 {
        let lo = _mm512_set1_ps(-87.0);
        let round = _mm512_set1_ps(12_582_912.0);
        // max / min return their second operand when either is NaN: NaN stays NaN.
        let xc = _mm512_min_ps(_mm512_setzero_ps(), _mm512_max_ps(lo, x));
        let t = _mm512_fmadd_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
        let n = _mm512_sub_ps(t, round);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_2e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(
            p,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(127),
        ));
        let e = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
        // Below the range: exactly 0.
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
        _mm512_mask_mov_ps(e, under, _mm512_setzero_ps())
    }

    /// The fill mask of 16 scores from 16 contiguous conditions (`n` of them valid).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn fill_lanes(cond: *const bool, n: usize, fill_when: bool) -> __mmask16 {
        let mut bytes = [0u8; 16];
        std::ptr::copy_nonoverlapping(cond as *const u8, bytes.as_mut_ptr(), n.min(16));
        let c = _mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.as_ptr() as *const __m128i));
        let set = _mm512_cmpneq_epi32_mask(c, _mm512_setzero_si512());
        (if fill_when { set } else { !set }) & lanes(n)
    }

    /// Mask and softmax the `m` scores of each row (rows `stride` apart) of batch item `b`,
    /// head `h`, as [`super::mask_softmax`] does.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn mask_softmax(
        s: &mut [f32],
        stride: usize,
        m: usize,
        mask: Option<(&Mask, usize, usize)>,
    ) {
        for (i, row) in s.chunks_exact_mut(stride).enumerate() {
            let row = &mut row[..m];
            // Conditions contiguous along the keys are applied 16 at a time below; others here.
            let mut cond = None;
            if let Some((mk, b, h)) = mask {
                let (start, step) = mk.row(b, h, i);
                if step == 1 {
                    cond = Some((mk.cond[start..start + m].as_ptr(), mk.fill_when, mk.fill));
                } else {
                    mk.fill_row(row, start, step);
                }
            }
            let p = row.as_mut_ptr();
            let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut j = 0;
            while j < m {
                let keep = lanes(m - j);
                let mut x = _mm512_maskz_loadu_ps(keep, p.add(j));
                if let Some((c, when, fill)) = cond {
                    let f = fill_lanes(c.add(j), m - j, when);
                    x = _mm512_mask_mov_ps(x, f, _mm512_set1_ps(fill));
                    _mm512_mask_storeu_ps(p.add(j), keep, x);
                }
                vmax = _mm512_mask_max_ps(vmax, keep, vmax, x);
                j += 16;
            }
            let vmax = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
            let mut vsum = _mm512_setzero_ps();
            let mut j = 0;
            while j < m {
                let keep = lanes(m - j);
                let x = _mm512_maskz_loadu_ps(keep, p.add(j));
                let e = _mm512_maskz_mov_ps(keep, exp16(_mm512_sub_ps(x, vmax)));
                _mm512_mask_storeu_ps(p.add(j), keep, e);
                vsum = _mm512_add_ps(vsum, e);
                j += 16;
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(vsum));
            let mut j = 0;
            while j < m {
                let keep = lanes(m - j);
                let x = _mm512_maskz_loadu_ps(keep, p.add(j));
                _mm512_mask_storeu_ps(p.add(j), keep, _mm512_mul_ps(x, inv));
                j += 16;
            }
        }
    }

    /// [`super::attention_with`]'s AVX-512 path; the caller has checked the shapes and the CPU.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: Dims,
        scale: f32,
        mask: Option<&Mask>,
        out: &mut [f32],
    ) {
        let Dims {
            batch,
            queries: n,
            keys: m,
            heads,
            head_dim: d,
            value_dim: e,
        } = dims;
        // Rows of K^T and of the scores start on 64-byte multiples.
        let stride = m.next_multiple_of(16);
        let mut kt = vec![0f32; d * stride];
        let mut s = vec![0f32; n * stride];
        // One batch item's Q, K and V, head by head in contiguous rows. In place a head's rows
        // lie `heads * d` floats apart (4 KiB in DINO-WM): read head by head they fall into the
        // same few L1 sets and come from L3 at a stride; gathered row by row they stream.
        let mut qh = vec![0f32; heads * n * d];
        let mut kh = vec![0f32; heads * m * d];
        let mut vh = vec![0f32; heads * m * e];
        let split = |src: &[f32], dst: &mut [f32], rows: usize, w: usize| {
            for (r, src) in src.chunks_exact(heads * w).enumerate() {
                for (h, x) in src.chunks_exact(w).enumerate() {
                    dst[(h * rows + r) * w..][..w].copy_from_slice(x);
                }
            }
        };
        for b in 0..batch {
            split(&q[b * n * heads * d..][..n * heads * d], &mut qh, n, d);
            split(&k[b * m * heads * d..][..m * heads * d], &mut kh, m, d);
            split(&v[b * m * heads * e..][..m * heads * e], &mut vh, m, e);
            for h in 0..heads {
                for (j, row) in kh[h * m * d..][..m * d].chunks_exact(d).enumerate() {
                    for (c, x) in row.iter().enumerate() {
                        kt[c * stride + j] = *x;
                    }
                }
                let qp = qh.as_ptr().add(h * n * d);
                gemm(
                    n,
                    m,
                    d,
                    qp,
                    d,
                    kt.as_ptr(),
                    stride,
                    s.as_mut_ptr(),
                    stride,
                    scale,
                );
                mask_softmax(&mut s, stride, m, mask.map(|mk| (mk, b, h)));
                let vp = vh.as_ptr().add(h * m * e);
                let op = out.as_mut_ptr().add((b * n * heads + h) * e);
                gemm(n, e, m, s.as_ptr(), stride, vp, e, op, heads * e, 1.0);
            }
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
mod tests {
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
}
