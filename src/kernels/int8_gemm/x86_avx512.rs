//! x86-64 with AVX-512 (F, BW, VNNI): the element-wise loops compiled 16 lanes wide, and the
//! `vpdpbusd` tile kernel. Chosen at run time by [`super::has_vnni`].

use super::{Tile, MR, PANEL};

/// The portable element-wise loops, compiled with AVX-512 enabled (same numbers).
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_static(x: &[f32], q: &mut [u8], scale: f32, zero: u8) {
    super::portable::quantize_static(x, q, scale, zero)
}
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_symmetric(x: &[f32], q: &mut [u8]) -> f32 {
    super::portable::quantize_symmetric(x, q)
}
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn unpack_nibbles(src: &[u8], dst: &mut [i8]) {
    super::portable::unpack_nibbles(src, dst)
}

impl Tile<'_> {
    /// `vpdpbusd` over each block's K, then the block's rescale into f32.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn kernel_vnni(&self, tile: &mut [f32]) {
        use std::arch::x86_64::*;
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
        let ap = a.as_ptr();
        let wp = w.as_ptr();
        let mut f = [_mm512_setzero_ps(); 2 * MR];
        for b in 0..nb {
            let mut acc = [_mm512_setzero_si512(); 2 * MR];
            for k4 in 0..k4s {
                let g = b * k4s + k4;
                let w0 = _mm512_loadu_si512(wp.add(g * 128) as *const _);
                let w1 = _mm512_loadu_si512(wp.add(g * 128 + 64) as *const _);
                for r in 0..MR {
                    let av =
                        _mm512_set1_epi32((ap.add(r * kp + g * 4) as *const i32).read_unaligned());
                    acc[2 * r] = _mm512_dpbusd_epi32(acc[2 * r], av, w0);
                    acc[2 * r + 1] = _mm512_dpbusd_epi32(acc[2 * r + 1], av, w1);
                }
            }
            let c0 = _mm512_loadu_si512(corr.as_ptr().add(b * PANEL) as *const _);
            let c1 = _mm512_loadu_si512(corr.as_ptr().add(b * PANEL + 16) as *const _);
            let s0 = _mm512_loadu_ps(scales.as_ptr().add(b * PANEL));
            let s1 = _mm512_loadu_ps(scales.as_ptr().add(b * PANEL + 16));
            for r in 0..MR {
                let asc = _mm512_set1_ps(*a_scale.get_unchecked(r * nb + b));
                let v0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[2 * r], c0));
                let v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[2 * r + 1], c1));
                f[2 * r] = _mm512_fmadd_ps(v0, _mm512_mul_ps(s0, asc), f[2 * r]);
                f[2 * r + 1] = _mm512_fmadd_ps(v1, _mm512_mul_ps(s1, asc), f[2 * r + 1]);
            }
        }
        for r in 0..MR {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * PANEL), f[2 * r]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * PANEL + 16), f[2 * r + 1]);
        }
    }
}
