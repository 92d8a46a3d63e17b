//! aarch64 NEON: two tile kernels, chosen at run time by [`super::super::isa::Isa`].
//!
//! - **`sdot`** (the dot-product extension: Cortex-A55/A76/A78, so Raspberry Pi 5, RK3588 and
//!   Jetson Orin): one `sdot v.4s, w.16b, a.4b[lane]` adds, for four columns, the products of four
//!   weights with four activations of a row: 16 multiply-adds an instruction. `sdot` is signed
//!   times signed, so the kernel feeds it `a - 128` (the `u8` activations with their top bit
//!   flipped) and the caller's zero-point correction is taken at `zp - 128` (the integers are the
//!   same: `sum (a - zp) w = sum (a - 128) w - (zp - 128) sum w`). Written with `asm!`, as Rust's
//!   dot-product intrinsics are not stable.
//! - **`smull` + `sadalp`** (every aarch64 CPU, the path of Cortex-A53/A72 such as Raspberry Pi 4):
//!   `i8 x i8` products widened to `i16` (exact: at most `128 x 128`), pairs added into `i32`
//!   lanes, so each column has two partial sums, folded with `addp` at the end of a block. With
//!   4-bit weights a product is at most 1024, so `smlal` sums 16 of them in `i16` lanes before one
//!   `sadalp` widens them: half the instructions.
//!
//! Both give the portable kernel's integers and its rescale, in its order, so the same floats.

use super::{Tile, MR, PANEL};
use std::arch::aarch64::*;

/// `sdot!(acc, w, a, "L")`: `acc + sdot(w, a[L])`, for each of the four `i32` lanes `j`
/// `acc[j] + sum_t w[4 j + t] * a[4 L + t]`. Only inside `target_feature(enable = "dotprod")`
/// functions (the assembler accepts `sdot` there).
macro_rules! sdot {
    ($acc:expr, $w:expr, $a:expr, $lane:literal) => {{
        let mut acc: int32x4_t = $acc;
        // SAFETY: register operands only (no memory, no stack); the enclosing function enables
        // `dotprod`, which the CPU has (`matmul` asserts the selected variant is supported).
        std::arch::asm!(
            concat!("sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[", $lane, "]"),
            acc = inout(vreg) acc,
            w = in(vreg) $w,
            a = in(vreg) $a,
            options(pure, nomem, nostack)
        );
        acc
    }};
}

/// Rows per pass of the `sdot` kernel: 12 accumulators, 3 activation and 4 weight registers.
const DOT_ROWS: usize = 3;
/// Rows per pass of the `smull` kernel: 16 accumulators, 2 activation and 4 weight registers.
const MULL_ROWS: usize = 2;
/// Groups of four k whose products the 4-bit path sums in `i16` before widening: each lane gets
/// one product per group, at most `128 x 8 = 1024`, so 16 of them stay below `2^15`.
const NARROW_GROUPS: usize = 16;

/// Fold the `[ROWS][4]` accumulators of 16 columns of one block into the tile: `(sum - corr)` as
/// f32, times `w_scale * a_scale`, fused into the tile's running sum (the portable order).
///
/// # Safety
/// NEON is baseline on aarch64; `tile` holds `MR x PANEL` floats, `corr` and `scales` the
/// block's 32 columns, `a_scale` row `r`'s block scale at `r * nb + b`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rescale(
    sums: int32x4_t,
    tile: *mut f32,
    r: usize,
    col: usize,
    b: usize,
    corr: &[i32],
    scales: &[f32],
    asc: f32,
) {
    let cv = vld1q_s32(corr.as_ptr().add(b * PANEL + col));
    let sc = vmulq_n_f32(vld1q_f32(scales.as_ptr().add(b * PANEL + col)), asc);
    let v = vcvtq_f32_s32(vsubq_s32(sums, cv));
    let f = tile.add(r * PANEL + col);
    vst1q_f32(f, vfmaq_f32(vld1q_f32(f), v, sc));
}

impl Tile<'_> {
    /// `sdot` over each block's K (activations `a - 128`, corrections at `zp - 128`), then the
    /// block's rescale.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn kernel_neon_dot(&self, tile: &mut [f32]) {
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
        let (ap, wp) = (a.as_ptr(), w.as_ptr());
        let tp = tile.as_mut_ptr();
        tile[..MR * PANEL].fill(0.0);
        let flip = vdupq_n_u8(0x80);
        for half in 0..2 {
            for r0 in (0..MR).step_by(DOT_ROWS) {
                for b in 0..nb {
                    let mut acc = [[vdupq_n_s32(0); 4]; DOT_ROWS];
                    // One group of four k: its 16 weights per 4 columns against lane L of
                    // each row's activation register.
                    macro_rules! group {
                        ($g:expr, $av:expr, $lane:literal) => {{
                            let g = $g;
                            for c in 0..4 {
                                let wv = vld1q_s8(wp.add(g * 128 + half * 64 + c * 16));
                                for i in 0..DOT_ROWS {
                                    acc[i][c] = sdot!(acc[i][c], wv, $av[i], $lane);
                                }
                            }
                        }};
                    }
                    let mut k4 = 0;
                    // Four groups per row in one register while they remain...
                    while k4 + 4 <= k4s {
                        let g0 = b * k4s + k4;
                        let av: [int8x16_t; DOT_ROWS] = std::array::from_fn(|i| {
                            vreinterpretq_s8_u8(veorq_u8(
                                vld1q_u8(ap.add((r0 + i) * kp + g0 * 4)),
                                flip,
                            ))
                        });
                        group!(g0, av, "0");
                        group!(g0 + 1, av, "1");
                        group!(g0 + 2, av, "2");
                        group!(g0 + 3, av, "3");
                        k4 += 4;
                    }
                    // ...then one at a time.
                    while k4 < k4s {
                        let g = b * k4s + k4;
                        let av: [int8x16_t; DOT_ROWS] = std::array::from_fn(|i| {
                            let x = (ap.add((r0 + i) * kp + g * 4) as *const u32).read_unaligned();
                            vreinterpretq_s8_u32(vdupq_n_u32(x ^ 0x8080_8080))
                        });
                        group!(g, av, "0");
                        k4 += 1;
                    }
                    for (i, acc) in acc.iter().enumerate() {
                        let r = r0 + i;
                        let asc = *a_scale.get_unchecked(r * nb + b);
                        for (c, s) in acc.iter().enumerate() {
                            rescale(*s, tp, r, half * 16 + c * 4, b, corr, scales, asc);
                        }
                    }
                }
            }
        }
    }

    /// `smull` + `sadalp` over each block's K (activations `a - 128`, corrections at
    /// `zp - 128`), then `addp` and the block's rescale.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn kernel_neon(&self, tile: &mut [f32]) {
        let Tile {
            a,
            kp,
            a_scale,
            nb,
            block,
            w,
            corr,
            scales,
            narrow,
            ..
        } = *self;
        debug_assert!(a.len() >= MR * kp && tile.len() >= MR * PANEL);
        debug_assert!(w.len() >= nb * block * PANEL && corr.len() >= nb * PANEL);
        let k4s = block / 4;
        let (ap, wp) = (a.as_ptr(), w.as_ptr());
        let tp = tile.as_mut_ptr();
        tile[..MR * PANEL].fill(0.0);
        for half in 0..2 {
            for r0 in (0..MR).step_by(MULL_ROWS) {
                for b in 0..nb {
                    // Per row, per pair of columns: [c p0, c p1, c' p0, c' p1].
                    let mut acc = [[vdupq_n_s32(0); 8]; MULL_ROWS];
                    let act = |i: usize, g: usize| {
                        let x = (ap.add((r0 + i) * kp + g * 4) as *const u32).read_unaligned();
                        vreinterpretq_s8_u32(vdupq_n_u32(x ^ 0x8080_8080))
                    };
                    if narrow {
                        // 4-bit weights: |(a - 128) w| <= 1024, so NARROW_GROUPS products per
                        // i16 lane stay exact; widen into i32 once per run of groups.
                        let mut k4 = 0;
                        while k4 < k4s {
                            let n = (k4s - k4).min(NARROW_GROUPS);
                            let mut acc16 = [[vdupq_n_s16(0); 8]; MULL_ROWS];
                            for g in b * k4s + k4..b * k4s + k4 + n {
                                let av: [int8x16_t; MULL_ROWS] = std::array::from_fn(|i| act(i, g));
                                for c in 0..4 {
                                    let wv = vld1q_s8(wp.add(g * 128 + half * 64 + c * 16));
                                    for (i, acc16) in acc16.iter_mut().enumerate() {
                                        acc16[2 * c] = vmlal_s8(
                                            acc16[2 * c],
                                            vget_low_s8(wv),
                                            vget_low_s8(av[i]),
                                        );
                                        acc16[2 * c + 1] =
                                            vmlal_high_s8(acc16[2 * c + 1], wv, av[i]);
                                    }
                                }
                            }
                            for (acc, acc16) in acc.iter_mut().zip(&acc16) {
                                for (a, s) in acc.iter_mut().zip(acc16) {
                                    *a = vpadalq_s16(*a, *s);
                                }
                            }
                            k4 += n;
                        }
                    } else {
                        for k4 in 0..k4s {
                            let g = b * k4s + k4;
                            let av: [int8x16_t; MULL_ROWS] = std::array::from_fn(|i| act(i, g));
                            for c in 0..4 {
                                let wv = vld1q_s8(wp.add(g * 128 + half * 64 + c * 16));
                                for (i, acc) in acc.iter_mut().enumerate() {
                                    acc[2 * c] = vpadalq_s16(
                                        acc[2 * c],
                                        vmull_s8(vget_low_s8(wv), vget_low_s8(av[i])),
                                    );
                                    acc[2 * c + 1] =
                                        vpadalq_s16(acc[2 * c + 1], vmull_high_s8(wv, av[i]));
                                }
                            }
                        }
                    }
                    for (i, acc) in acc.iter().enumerate() {
                        let r = r0 + i;
                        let asc = *a_scale.get_unchecked(r * nb + b);
                        for c in 0..4 {
                            let s = vpaddq_s32(acc[2 * c], acc[2 * c + 1]);
                            rescale(s, tp, r, half * 16 + c * 4, b, corr, scales, asc);
                        }
                    }
                }
            }
        }
    }
}
