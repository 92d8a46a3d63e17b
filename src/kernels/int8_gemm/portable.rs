//! The portable kernel: plain Rust, the statement of what every instruction-set variant must
//! compute (same integers, same rescale order), and the path on CPUs without a variant.

use super::{Tile, MR, PANEL};

/// ONNX `QuantizeLinear` to `uint8` of one row.
#[inline(always)]
pub(super) fn quantize_static(x: &[f32], q: &mut [u8], scale: f32, zero: u8) {
    for (q, x) in q.iter_mut().zip(x) {
        *q = ((x / scale).round_ties_even() + zero as f32).clamp(0.0, 255.0) as u8;
    }
}

/// Symmetric int8 of one block (`q + 128` stored); returns its scale `max |x| / 127`.
#[inline(always)]
pub(super) fn quantize_symmetric(x: &[f32], q: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let sc = amax / 127.0;
    if sc > 0.0 {
        for (q, x) in q.iter_mut().zip(x) {
            *q = ((x / sc).round_ties_even().clamp(-127.0, 127.0) + 128.0) as u8;
        }
    }
    sc
}

/// 4-bit codes to centred `i8`: each 64 source bytes give 128 weights, low nibbles first.
#[inline(always)]
pub(super) fn unpack_nibbles(src: &[u8], dst: &mut [i8]) {
    for (dst, s) in dst.chunks_exact_mut(128).zip(src.chunks_exact(64)) {
        let (lo, hi) = dst.split_at_mut(64);
        for ((l, h), b) in lo.iter_mut().zip(hi.iter_mut()).zip(s) {
            *l = (b & 15) as i8 - 8;
            *h = (b >> 4) as i8 - 8;
        }
    }
}

impl Tile<'_> {
    /// The same integers and the same rescale, in the same order, as [`Tile::kernel_vnni`], in
    /// plain Rust.
    pub(super) fn kernel_portable(&self, tile: &mut [f32]) {
        let Tile {
            a,
            kp,
            a_scale,
            nb,
            block,
            w,
            corr,
            scales,
            ..
        } = *self;
        let k4s = block / 4;
        for r in 0..MR {
            let mut f = [0f32; PANEL];
            for b in 0..nb {
                let mut acc = [0i32; PANEL];
                for k4 in 0..k4s {
                    let g = b * k4s + k4;
                    let av = &a[r * kp + g * 4..r * kp + g * 4 + 4];
                    let wg = &w[g * 4 * PANEL..(g + 1) * 4 * PANEL];
                    for (c, acc) in acc.iter_mut().enumerate() {
                        let wc = &wg[c * 4..c * 4 + 4];
                        *acc += (0..4).map(|i| av[i] as i32 * wc[i] as i32).sum::<i32>();
                    }
                }
                let asc = a_scale[r * nb + b];
                for c in 0..PANEL {
                    let v = (acc[c] - corr[b * PANEL + c]) as f32;
                    f[c] = v.mul_add(scales[b * PANEL + c] * asc, f[c]);
                }
            }
            tile[r * PANEL..(r + 1) * PANEL].copy_from_slice(&f);
        }
    }
}
