//! The portable kernel: `matrixmultiply`'s GEMM (its own NEON and AVX2/FMA paths) for both
//! products, and the compiler-vectorized mask and softmax of the parent module.

use super::{mask_softmax, Dims, Mask};

pub(super) fn portable(
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
