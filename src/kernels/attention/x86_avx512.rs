//! x86-64 with AVX-512F: 14 x 32 register tiles for both products and a 16-lane softmax, with
//! Q and V gathered per batch item into head-contiguous buffers.

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
