//! x86-64 with AVX2 and FMA (no AVX-512): the element-wise loops compiled 8 lanes wide, and a
//! `vpmaddwd` tile kernel. Chosen at run time by [`super::super::isa::Isa`].
//!
//! AVX2's byte product `vpmaddubsw` adds two `u8 x i8` products into a saturating `i16`
//! (`2 * 255 * 128` does not fit), so the kernel widens both operands to `i16` and multiplies with
//! `vpmaddwd`, whose pair sums are exact in `i32`: the same integers as the portable kernel.
//! One 16-byte load of a panel group (`[4 columns][4 k]`) widens into a register of 16 `i16`;
//! against four activations of a row broadcast to every 64-bit lane, `vpmaddwd` leaves each
//! column's two partial sums side by side, which `vphaddd` folds at the end of a block.

use super::{Tile, MR, PANEL};

/// The portable element-wise loops, compiled with AVX2 enabled (same numbers).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_static(x: &[f32], q: &mut [u8], scale: f32, zero: u8) {
    super::portable::quantize_static(x, q, scale, zero)
}
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_symmetric(x: &[f32], q: &mut [u8]) -> f32 {
    super::portable::quantize_symmetric(x, q)
}
#[target_feature(enable = "avx2,fma")]
pub unsafe fn unpack_nibbles(src: &[u8], dst: &mut [i8]) {
    super::portable::unpack_nibbles(src, dst)
}

/// Rows of the tile a pass of the kernel keeps in registers (12 accumulators, 3 broadcast
/// activations and one widened weight register: all 16 `ymm`).
const ROWS: usize = 3;

impl Tile<'_> {
    /// `vpmaddwd` over each block's K, then the block's rescale into f32, in the portable
    /// kernel's order (`(sum - corr) as f32`, times `w_scale * a_scale`, fused into the sum).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_avx2(&self, tile: &mut [f32]) {
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
        debug_assert!(a.len() >= MR * kp && tile.len() >= MR * PANEL);
        debug_assert!(w.len() >= nb * block * PANEL && corr.len() >= nb * PANEL);
        let k4s = block / 4;
        let ap = a.as_ptr();
        let wp = w.as_ptr();
        let tp = tile.as_mut_ptr();
        tile[..MR * PANEL].fill(0.0);
        // Columns half * 16 .. half * 16 + 16, rows r0 .. r0 + ROWS.
        for half in 0..2 {
            for r0 in (0..MR).step_by(ROWS) {
                for b in 0..nb {
                    let mut acc = [[_mm256_setzero_si256(); 4]; ROWS];
                    for k4 in 0..k4s {
                        let g = b * k4s + k4;
                        let mut av = [_mm256_setzero_si256(); ROWS];
                        for (i, av) in av.iter_mut().enumerate() {
                            let x = (ap.add((r0 + i) * kp + g * 4) as *const i32).read_unaligned();
                            *av = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(x)));
                        }
                        #[allow(clippy::needless_range_loop)]
                        for c in 0..4 {
                            let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                                wp.add(g * 128 + half * 64 + c * 16) as *const __m128i,
                            ));
                            for i in 0..ROWS {
                                acc[i][c] =
                                    _mm256_add_epi32(acc[i][c], _mm256_madd_epi16(av[i], wv));
                            }
                        }
                    }
                    for (i, acc) in acc.iter().enumerate() {
                        let r = r0 + i;
                        let asc = _mm256_set1_ps(*a_scale.get_unchecked(r * nb + b));
                        for j in 0..2 {
                            // [c0 c1 c4 c5 | c2 c3 c6 c7] -> [c0 .. c7].
                            let s = _mm256_permute4x64_epi64(
                                _mm256_hadd_epi32(acc[2 * j], acc[2 * j + 1]),
                                0b11_01_10_00,
                            );
                            let col = half * 16 + j * 8;
                            let cv =
                                _mm256_loadu_si256(corr.as_ptr().add(b * PANEL + col) as *const _);
                            let sc = _mm256_loadu_ps(scales.as_ptr().add(b * PANEL + col));
                            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(s, cv));
                            let f = tp.add(r * PANEL + col);
                            _mm256_storeu_ps(
                                f,
                                _mm256_fmadd_ps(v, _mm256_mul_ps(sc, asc), _mm256_loadu_ps(f)),
                            );
                        }
                    }
                }
            }
        }
    }
}
