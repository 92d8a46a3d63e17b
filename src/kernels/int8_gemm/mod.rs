//! An int8 matrix product for qwm's tract operators: `u8` activations times `i8` weights into
//! exact `i32` sums, one sum per K block, each block's sum rescaled into an f32 accumulator.
//!
//! Why: tract 0.23 keeps per-channel int8 weights and runs its own int8 kernels only around
//! separate quantize, pack, cast and rescale passes over the activations, and its MatMulNBits
//! path is float. This kernel fuses those passes: activations are quantized once per call into a
//! row-major `u8` buffer, weights are laid out once at load in the order the inner loop reads
//! them, and the rescale happens on registers. On x86-64 with AVX-512 VNNI one `vpdpbusd` does 64
//! multiply-adds (four f32 FMAs' worth of work in one instruction); with AVX2 one `vpmaddwd` does
//! 16 on operands widened to `i16` (exact, where `vpmaddubsw` would saturate); elsewhere a
//! portable loop computes the same integers. [`super::isa::Isa`] picks the variant.
//!
//! Semantics, for output row `r` and column `c`:
//! `Y[r, c] = sum_b a_scale[r, b] * w_scale[b, c] * (sum_{k in b} A[r, k] * W[k, c] - zp * colsum[b, c])`
//! where `A` is `u8`, `W` is `i8`, `zp` is the activations' zero point and `colsum[b, c]` the sum
//! of the block's weights (so the bracket is the exact integer `sum (A - zp) * W`). Every sum is
//! exact in `i32` for the K this crate meets (`K * 255 * 128 < 2^31` up to K = 65 000); the rescale
//! is one `f32` conversion, one `f32` product of the two scales and one fused multiply-add per
//! block, in that order on every path.

/// Columns per weight panel: two 512-bit registers of `i32`.
pub const PANEL: usize = 32;
/// Rows per tile of the kernels.
const MR: usize = 6;
/// Bytes of quantized activations multiplied per pass: they stay in L2 while every panel of
/// weights streams past them.
const A_BYTES: usize = 512 * 1024;

/// How the weights are stored between calls.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Storage {
    /// `i8` weights in panel order `[panel][block][k / 4][32 columns][4]`, with each panel's
    /// per-block column sums `[panel][block][32]`.
    I8 { w: Vec<i8>, sums: Vec<i32> },
    /// Symmetric 4-bit codes (`code - 8` is the weight), in the same order two codes a byte:
    /// each 128-weight group of `[32 columns][4]` is 64 bytes, its first 64 weights in the low
    /// nibbles and its last 64 in the high nibbles.
    Nibbles(Vec<u8>),
}

/// Weights laid out for [`matmul`]: `K x N` in `n_blocks` blocks of `block` rows along K, with
/// one scale per block and column.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    /// Rows of K per block, a multiple of 4 (the last block may end in padding rows of zeros).
    block: usize,
    n_blocks: usize,
    storage: Storage,
    /// `[panel][block][32]` scales (zero for padding columns).
    scales: Vec<f32>,
}

impl PackedWeights {
    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Weights of one panel: `n_blocks * block * PANEL`.
    fn panel_len(&self) -> usize {
        self.n_blocks * self.block * PANEL
    }

    /// `i8` weights `w[k][n]` (row-major `K x N`), one block over all of K, per-column `scales`.
    pub fn from_i8(k: usize, n: usize, w: &[i8], scales: &[f32]) -> Self {
        assert_eq!(w.len(), k * n, "weights must be K x N");
        assert_eq!(scales.len(), n, "one scale a column");
        let block = k.div_ceil(4) * 4;
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0i8; panels * block * PANEL];
        let mut sums = vec![0i32; panels * PANEL];
        let mut sc = vec![0f32; panels * PANEL];
        for c in 0..n {
            let (p, j) = (c / PANEL, c % PANEL);
            sc[p * PANEL + j] = scales[c];
            for kk in 0..k {
                let v = w[kk * n + c];
                data[p * block * PANEL + (kk / 4) * 4 * PANEL + j * 4 + kk % 4] = v;
                sums[p * PANEL + j] += v as i32;
            }
        }
        PackedWeights {
            k,
            n,
            block,
            n_blocks: 1,
            storage: Storage::I8 { w: data, sums },
            scales: sc,
        }
    }

    /// Symmetric 4-bit codes as `MatMulNBits` stores them (`[N][blocks][block / 2]`, low nibble
    /// first, weight = `(code - 8) * scale`), with `scales[n][block]`.
    pub fn from_nbits4(k: usize, n: usize, block: usize, codes: &[u8], scales: &[f32]) -> Self {
        assert!(
            block.is_multiple_of(4) && block > 0,
            "block must be a multiple of 4"
        );
        let n_blocks = k.div_ceil(block);
        assert_eq!(
            codes.len(),
            n * n_blocks * block / 2,
            "codes must be N x blocks x block/2"
        );
        assert_eq!(scales.len(), n * n_blocks, "one scale a block");
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0x88u8; panels * n_blocks * block * PANEL / 2];
        let mut sc = vec![0f32; panels * n_blocks * PANEL];
        for c in 0..n {
            let (p, j) = (c / PANEL, c % PANEL);
            for b in 0..n_blocks {
                sc[(p * n_blocks + b) * PANEL + j] = scales[c * n_blocks + b];
                for kb in 0..block.min(k - b * block) {
                    let byte = codes[(c * n_blocks + b) * block / 2 + kb / 2];
                    let code = (byte >> (4 * (kb % 2))) & 15;
                    // Position in the block's unpacked order, then in its 64-byte group.
                    let pos = ((p * n_blocks + b) * block + kb - kb % 4) * PANEL + j * 4 + kb % 4;
                    let (group, i) = (pos / 128, pos % 128);
                    let byte = &mut data[group * 64 + i % 64];
                    *byte = if i < 64 {
                        (*byte & 0xF0) | code
                    } else {
                        (*byte & 0x0F) | (code << 4)
                    };
                }
            }
        }
        PackedWeights {
            k,
            n,
            block,
            n_blocks,
            storage: Storage::Nibbles(data),
            scales: sc,
        }
    }

    /// Output columns `cols` as their own weights, or `None` unless `cols` starts on a panel
    /// boundary and lies within N (tract splits a layer whose output is sliced along N, as the
    /// attention's q, k, v are, into one product per slice).
    pub fn columns(&self, cols: std::ops::Range<usize>) -> Option<PackedWeights> {
        if !cols.start.is_multiple_of(PANEL) || cols.start >= cols.end || cols.end > self.n {
            return None;
        }
        let (p0, p1) = (cols.start / PANEL, cols.end.div_ceil(PANEL));
        let (len, per) = (self.panel_len(), self.n_blocks * PANEL);
        let storage = match &self.storage {
            Storage::I8 { w, sums } => Storage::I8 {
                w: w[p0 * len..p1 * len].to_vec(),
                sums: sums[p0 * per..p1 * per].to_vec(),
            },
            Storage::Nibbles(d) => Storage::Nibbles(d[p0 * len / 2..p1 * len / 2].to_vec()),
        };
        Some(PackedWeights {
            n: cols.len(),
            storage,
            scales: self.scales[p0 * per..p1 * per].to_vec(),
            ..*self
        })
    }

    /// Bytes kept between calls.
    pub fn resident_bytes(&self) -> usize {
        let w = match &self.storage {
            Storage::I8 { w, sums } => w.len() + 4 * sums.len(),
            Storage::Nibbles(d) => d.len(),
        };
        w + 4 * self.scales.len()
    }

    /// K (the activations' row length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// N (output columns).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Padded K of the activation buffer.
    fn k_pad(&self) -> usize {
        self.block * self.n_blocks
    }

    /// All weights as `i8` in panel order, with `zp x` their per-block column sums written into
    /// `corr` (`[panel][block][32]`). 4-bit codes are unpacked once per call into `scratch` (N x K
    /// bytes, which stay in L2/L3 while every chunk of rows passes them).
    fn unpacked<'a>(
        &'a self,
        zp: i32,
        isa: Isa,
        scratch: &'a mut Vec<i8>,
        corr: &mut Vec<i32>,
    ) -> &'a [i8] {
        corr.clear();
        match &self.storage {
            Storage::I8 { w, sums } => {
                corr.extend(sums.iter().map(|s| zp * s));
                w
            }
            Storage::Nibbles(d) => {
                scratch.resize(d.len() * 2, 0);
                simd_dispatch!(isa, unpack_nibbles(d, scratch));
                corr.resize(self.panels() * self.n_blocks * PANEL, 0);
                let per_block = self.block * PANEL;
                for (b, c) in corr.chunks_exact_mut(PANEL).enumerate() {
                    for g in scratch[b * per_block..(b + 1) * per_block].chunks_exact(4 * PANEL) {
                        for (j, c) in c.iter_mut().enumerate() {
                            *c += g[j * 4..j * 4 + 4].iter().map(|&v| v as i32).sum::<i32>();
                        }
                    }
                    c.iter_mut().for_each(|c| *c *= zp);
                }
                &scratch[..]
            }
        }
    }
}

/// How the activations become `u8`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActQuant {
    /// ONNX `QuantizeLinear` to `uint8` with one scale and zero point: `clamp(round(x / scale) +
    /// zero, 0, 255)`, rounding half to even. The product is not multiplied by `scale` (the deploy
    /// graphs fold it into the weight scales).
    Static {
        /// Activation scale.
        scale: f32,
        /// Activation zero point.
        zero: u8,
    },
    /// Symmetric `int8` per row and K block (ONNX Runtime's MatMulNBits accuracy level 4): scale
    /// `max |x| / 127`, `q = round(x / scale)` in `-127..=127`, stored as `q + 128`; the scale
    /// multiplies the block's sum.
    PerBlock,
}

/// Whether this CPU has AVX-512 VNNI (a fact about the CPU, whatever `QWM_ISA` selects).
pub fn has_vnni() -> bool {
    Isa::Avx512Vnni.supported()
}

/// Reusable buffers of one thread.
#[derive(Default)]
struct Scratch {
    a: Vec<u8>,
    a_scale: Vec<f32>,
    w: Vec<i8>,
    corr: Vec<i32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// `out[m x N] = quant(a[m x K]) @ W`, with the semantics of the module docs, on the kernels of
/// `isa` (one this CPU supports: [`Isa::selected`] in production); every variant computes the
/// same numbers.
pub fn matmul(a: &[f32], m: usize, w: &PackedWeights, act: ActQuant, out: &mut [f32], isa: Isa) {
    assert_eq!(a.len(), m * w.k, "activations must be m x K");
    assert_eq!(out.len(), m * w.n, "output must be m x N");
    assert!(
        isa.supported(),
        "{isa:?} kernel requested on a CPU without it"
    );
    let mut s = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let (kp, nb) = (w.k_pad(), w.n_blocks);
    let zp: i32 = match act {
        ActQuant::Static { zero, .. } => zero as i32,
        ActQuant::PerBlock => 128,
    };
    let mut tile = [0f32; MR * PANEL];
    let mut wbuf = std::mem::take(&mut s.w);
    let mut corr = std::mem::take(&mut s.corr);
    // Kernels that multiply `a - 128` take the correction at `zp - 128` (same integers).
    let zp_corr = if isa.signed_activations() {
        zp - 128
    } else {
        zp
    };
    let w_all = w.unpacked(zp_corr, isa, &mut wbuf, &mut corr);
    let (len, per) = (w.panel_len(), nb * PANEL);
    let mc = (A_BYTES / kp).max(MR) / MR * MR;
    for m0 in (0..m).step_by(mc) {
        let rows = mc.min(m - m0);
        let rows_pad = rows.div_ceil(MR) * MR;
        quantize_rows(
            &a[m0 * w.k..(m0 + rows) * w.k],
            w,
            act,
            rows_pad,
            isa,
            &mut s,
        );
        for p in 0..w.panels() {
            let wp = &w_all[p * len..(p + 1) * len];
            let cp = &corr[p * per..(p + 1) * per];
            let scales = &w.scales[p * per..(p + 1) * per];
            let cols = (w.n - p * PANEL).min(PANEL);
            for r0 in (0..rows_pad).step_by(MR) {
                let t = Tile {
                    a: &s.a[r0 * kp..(r0 + MR) * kp],
                    kp,
                    a_scale: &s.a_scale[r0 * nb..(r0 + MR) * nb],
                    nb,
                    block: w.block,
                    w: wp,
                    corr: cp,
                    scales,
                    narrow: matches!(w.storage, Storage::Nibbles(_)),
                };
                t.run(isa, &mut tile);
                for r in 0..MR.min(rows - r0.min(rows)) {
                    let o = (m0 + r0 + r) * w.n + p * PANEL;
                    out[o..o + cols].copy_from_slice(&tile[r * PANEL..r * PANEL + cols]);
                }
            }
        }
    }
    s.w = wbuf;
    s.corr = corr;
    SCRATCH.with(|c| *c.borrow_mut() = s);
}

/// Quantize the rows of `a` into `s.a` (`[rows_pad][k_pad]`, padded with the zero point, whose
/// products the column-sum correction cancels) and `s.a_scale` (`[rows_pad][blocks]`).
fn quantize_rows(
    a: &[f32],
    w: &PackedWeights,
    act: ActQuant,
    rows_pad: usize,
    isa: Isa,
    s: &mut Scratch,
) {
    let (k, kp, nb, bl) = (w.k, w.k_pad(), w.n_blocks, w.block);
    let rows = a.len() / k;
    let zp: u8 = match act {
        ActQuant::Static { zero, .. } => zero,
        ActQuant::PerBlock => 128,
    };
    s.a.clear();
    s.a.resize(rows_pad * kp, zp);
    s.a_scale.clear();
    s.a_scale.resize(rows_pad * nb, 0.0);
    for r in 0..rows {
        let x = &a[r * k..(r + 1) * k];
        let q = &mut s.a[r * kp..r * kp + k];
        match act {
            ActQuant::Static { scale, zero } => {
                simd_dispatch!(isa, quantize_static(x, q, scale, zero));
                s.a_scale[r * nb..(r + 1) * nb].fill(1.0);
            }
            ActQuant::PerBlock => {
                for b in 0..nb {
                    let (lo, hi) = (b * bl, ((b + 1) * bl).min(k));
                    let sc = simd_dispatch!(isa, quantize_symmetric(&x[lo..hi], &mut q[lo..hi]));
                    s.a_scale[r * nb + b] = sc;
                }
            }
        }
    }
}

/// Call `$f(args)` compiled for the instruction set `$isa` (one the CPU supports: `matmul`
/// asserts it), else the plain build: the element-wise loops below vectorize 8 or 16 lanes wide
/// and compute the same numbers either way.
macro_rules! simd_dispatch {
    ($isa:expr, $f:ident($($arg:expr),*)) => {{
        match $isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `matmul` asserted that the CPU supports the selected instruction set.
            Isa::Avx512Vnni => unsafe { x86_avx512::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { x86_avx2::$f($($arg),*) },
            _ => $f($($arg),*),
        }
    }};
}
use simd_dispatch;

use super::isa::Isa;
#[cfg(target_arch = "aarch64")]
mod aarch64_neon;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
use portable::{quantize_static, quantize_symmetric, unpack_nibbles};

/// The inputs of one `MR x 32` output tile: `MR` quantized activation rows against one panel.
struct Tile<'a> {
    /// `MR` rows of `kp` bytes.
    a: &'a [u8],
    kp: usize,
    /// `[MR][nb]` activation scales.
    a_scale: &'a [f32],
    nb: usize,
    /// Rows of K per block.
    block: usize,
    /// The panel's weights, `[nb][block / 4][32][4]`.
    w: &'a [i8],
    /// The panel's zero-point corrections, `[nb][32]`.
    corr: &'a [i32],
    /// The panel's scales, `[nb][32]`.
    scales: &'a [f32],
    /// Every weight lies in `-8..=7` (4-bit codes): kernels may sum several products in `i16`.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    narrow: bool,
}

impl Tile<'_> {
    /// Write the tile (`[MR][32]` f32) into `out` with the kernel of `isa` (one the CPU
    /// supports: `matmul` asserts it): every kernel gives the same numbers.
    fn run(&self, isa: Isa, out: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512 F/BW/VNNI (`matmul` asserts it), and the slices hold MR
            // rows of kp bytes and nb blocks of the panel.
            Isa::Avx512Vnni => unsafe { self.kernel_vnni(out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 and FMA (`matmul` asserts it); slices as above.
            Isa::Avx2 => unsafe { self.kernel_avx2(out) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: the CPU has NEON and dotprod (`matmul` asserts it); slices as above; the
            // corrections were taken at `zp - 128` (`Isa::signed_activations`).
            Isa::NeonDot => unsafe { self.kernel_neon_dot(out) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON (`matmul` asserts it); slices and corrections as above.
            Isa::Neon => unsafe { self.kernel_neon(out) },
            _ => self.kernel_portable(out),
        }
    }
}

#[cfg(test)]
mod tests;
