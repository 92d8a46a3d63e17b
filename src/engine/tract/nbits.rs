//! qwm's own tract operator for `com.microsoft.MatMulNBits`: the weight stays packed (4 bits a
//! weight plus one f32 scale a block) and each call dequantizes it into an f32 scratch matrix,
//! then runs an f32 matrix product.
//!
//! Why: tract 0.23 maps MatMulNBits (bits 4, block 32) onto its Q4_0 block-quant matmul, which
//! keeps the weight small but unpacks inside the matmul packer for every tile: at CEM's batch
//! sizes it ran at 0.43x the float model's throughput. Every other shape tract
//! dequantizes to a resident f32 weight, which loses the memory saving. Dequantizing once per
//! call costs `N x K` operations against the product's `M x N x K`, where M (candidates x
//! tokens) is in the thousands while planning, so the call runs at float speed while only the
//! packed bytes stay resident.
//!
//! Semantics are ONNX Runtime's: `Y = A @ dequant(B)^T (+ bias)` with
//! `dequant(B)[n, k] = (code - zero) * scale[n, k / block_size]`, codes packed low bits first,
//! `zero` from the optional packed `zero_points` input or `2^(bits - 1)`. Bits 2, 4 and 8 and any
//! block size and K (a partial last block included) are handled, so no shape falls back to a
//! resident f32 weight. The tests check it against a float64 reference.
//!
//! At `accuracy_level` 4 (int8 activations per block, as ONNX Runtime reads the attribute),
//! symmetric 4-bit weights run on qwm's int8 kernel instead ([`super::linear::Int8Linear`]
//! with [`crate::kernels::int8_gemm::ActQuant::PerBlock`]): 1.44x the float model's throughput on the
//! full-size predictor where the f32 path is at par.

use super::linear::{eval_linear, konst, linear_output_facts};
use ndarray::{ArrayView2, ArrayViewMut2};
use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast;

/// Route `MatMulNBits` nodes of graphs imported by `onnx` to [`PackedMatMul`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert("MatMulNBits", parse);
}

fn parse(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k: usize = node.get_attr("K")?;
    let n: usize = node.get_attr("N")?;
    let bits: usize = node.get_attr_opt("bits")?.unwrap_or(4);
    let block_size: usize = node.get_attr("block_size")?;
    let accuracy_level: i64 = node.get_attr_opt("accuracy_level")?.unwrap_or(0);
    ensure!(
        matches!(bits, 2 | 4 | 8),
        "MatMulNBits '{}': bits {bits} unsupported (2, 4 or 8)",
        node.name
    );
    ensure!(
        block_size >= 16 && block_size.is_power_of_two(),
        "MatMulNBits '{}': block_size {block_size} must be a power of two >= 16",
        node.name
    );
    ensure!(
        k > 0 && n > 0,
        "MatMulNBits '{}': K and N must be positive",
        node.name
    );
    let mut opt = optional_inputs(node).skip(3);
    let zp_input = opt.next().flatten();
    let gidx_input = opt.next().flatten();
    let bias_input = opt.next().flatten();
    ensure!(
        gidx_input.is_none(),
        "MatMulNBits '{}': g_idx (act-order) is unsupported",
        node.name
    );
    Ok((
        expand(NBitsExpansion {
            k,
            n,
            bits,
            block_size,
            accuracy_level,
            zp_input,
            bias_input,
        }),
        vec![],
    ))
}

#[derive(Debug, Clone)]
struct NBitsExpansion {
    k: usize,
    n: usize,
    bits: usize,
    block_size: usize,
    /// 4: int8 activations per block (see [`super::linear::Int8Linear`]); else float.
    accuracy_level: i64,
    zp_input: Option<usize>,
    bias_input: Option<usize>,
}

impl Expansion for NBitsExpansion {
    fn name(&self) -> StaticName {
        "MatMulNBits".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        let n = self.n.to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            s.equals(&outputs[0].rank, rank as i64)?;
            for ax in 0..rank - 1 {
                s.equals(&outputs[0].shape[ax], &inputs[0].shape[ax])?;
            }
            s.equals(&outputs[0].shape[rank - 1], n.clone())
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let (k, n, bits, bs) = (self.k, self.n, self.bits, self.block_size);
        let n_blocks = k.div_ceil(bs);
        let per_byte = 8 / bits;
        let blob = bs / per_byte;
        let b = konst(model, inputs[1], "MatMulNBits", "the quantized weight B")?;
        let b_ram = b.try_as_plain_ram()?;
        let codes: &[u8] = b_ram.as_slice()?;
        ensure!(
            codes.len() == n * n_blocks * blob,
            "{prefix}: B has {} bytes, expected N {n} x blocks {n_blocks} x {blob}",
            codes.len()
        );
        let scales = konst(model, inputs[2], "MatMulNBits", "scales")?;
        let scales = scales.cast_to::<f32>()?;
        let scales_ram = scales.try_as_plain_ram()?;
        let scales: &[f32] = scales_ram.as_slice()?;
        ensure!(
            scales.len() == n * n_blocks,
            "{prefix}: {} scales, expected N {n} x blocks {n_blocks}",
            scales.len()
        );
        let zeros = match self.zp_input {
            Some(i) => {
                let zp = konst(model, inputs[i], "MatMulNBits", "zero_points")?;
                let zp_ram = zp.try_as_plain_ram()?;
                let zp: &[u8] = zp_ram
                    .as_slice()
                    .context("MatMulNBits: zero_points must be uint8")?;
                let zp_blob = n_blocks.div_ceil(per_byte);
                ensure!(
                    zp.len() == n * zp_blob,
                    "{prefix}: {} zero-point bytes, expected {}",
                    zp.len(),
                    n * zp_blob
                );
                let mask = ((1u16 << bits) - 1) as u8;
                let z: Vec<u8> = (0..n * n_blocks)
                    .map(|i| {
                        let (col, blk) = (i / n_blocks, i % n_blocks);
                        (zp[col * zp_blob + blk / per_byte] >> (bits * (blk % per_byte))) & mask
                    })
                    .collect();
                Some(Arc::new(z))
            }
            None => None,
        };
        let dt = model.outlet_fact(inputs[0])?.datum_type;
        let mut a = inputs[0];
        if dt != f32::datum_type() {
            a = model.wire_node(format!("{prefix}.cast_a"), cast(f32::datum_type()), &[a])?[0];
        }
        // Accuracy level 4 (int8 activations per block, as ONNX Runtime): symmetric 4-bit
        // weights run on the int8 kernel; other shapes keep float activations.
        let mut y = if self.accuracy_level == 4 && bits == 4 && zeros.is_none() && bs % 4 == 0 {
            let op = super::linear::Int8Linear {
                weights: Arc::new(crate::kernels::int8_gemm::PackedWeights::from_nbits4(
                    k, n, bs, codes, scales,
                )),
                act: crate::kernels::int8_gemm::ActQuant::PerBlock,
                bias: None,
            };
            model.wire_node(format!("{prefix}.int8_matmul"), op, &[a])?[0]
        } else {
            let op = PackedMatMul {
                k,
                n,
                bits,
                block_size: bs,
                codes: Arc::new(codes.to_vec()),
                scales: Arc::new(scales.to_vec()),
                zeros,
            };
            model.wire_node(format!("{prefix}.packed_matmul"), op, &[a])?[0]
        };
        if dt != f32::datum_type() {
            y = model.wire_node(format!("{prefix}.cast_y"), cast(dt), &[y])?[0];
        }
        if let Some(i) = self.bias_input {
            y = wire_with_rank_broadcast(
                format!("{prefix}.bias"),
                model,
                tract_onnx::tract_core::ops::math::add(),
                &[y, inputs[i]],
            )?[0];
        }
        Ok(tvec!(y))
    }
}

/// `Y[.., n] = sum_k A[.., k] * dequant(B)[n, k]` with B kept packed (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatMul {
    k: usize,
    n: usize,
    bits: usize,
    block_size: usize,
    /// `[N, ceil(K / block_size), block_size * bits / 8]` packed codes, as MatMulNBits stores them.
    codes: Arc<Vec<u8>>,
    /// `[N, ceil(K / block_size)]`.
    scales: Arc<Vec<f32>>,
    /// Unpacked per-block zero points, `None` for the symmetric `2^(bits - 1)`.
    zeros: Option<Arc<Vec<u8>>>,
}

impl Eq for PackedMatMul {}

impl PackedMatMul {
    /// Output columns `cols` of the dequantized weight, `[cols.len(), K]` row-major, written into `w`.
    fn dequantize_into(&self, cols: std::ops::Range<usize>, w: &mut [f32]) {
        let (k, bs, bits) = (self.k, self.block_size, self.bits);
        let n_blocks = k.div_ceil(bs);
        let per_byte = 8 / bits;
        let blob = bs / per_byte;
        let mask = ((1u16 << bits) - 1) as u8;
        let default_zero = (1u32 << (bits - 1)) as f32;
        // Symmetric 4-bit (what `qwm quantize --form deploy` writes): one table lookup per byte
        // gives both centred codes, so a block costs 16 loads and 32 multiplies. At the encoder's
        // batch 1 (196 rows) dequantizing is a fifth of the product's time, so it has to be fast.
        let lut: Option<[[f32; 2]; 256]> = (bits == 4 && self.zeros.is_none())
            .then(|| std::array::from_fn(|b| [(b & 15) as f32 - 8.0, (b >> 4) as f32 - 8.0]));
        for (col, row) in cols.zip(w.chunks_exact_mut(k)) {
            for blk in 0..n_blocks {
                let i = col * n_blocks + blk;
                let s = self.scales[i];
                let bytes = &self.codes[i * blob..(i + 1) * blob];
                let out = &mut row[blk * bs..((blk + 1) * bs).min(k)];
                match &lut {
                    Some(lut) if out.len() == bs => {
                        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
                            let c = lut[*byte as usize];
                            pair[0] = c[0] * s;
                            pair[1] = c[1] * s;
                        }
                    }
                    _ => {
                        let z = self.zeros.as_ref().map_or(default_zero, |z| z[i] as f32);
                        for (j, o) in out.iter_mut().enumerate() {
                            let code = (bytes[j / per_byte] >> (bits * (j % per_byte))) & mask;
                            *o = (code as f32 - z) * s;
                        }
                    }
                }
            }
        }
    }

    /// Bytes this operator keeps resident (codes, scales, zero points).
    pub fn resident_bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len() + self.zeros.as_ref().map_or(0, |z| z.len())
    }
}

impl Op for PackedMatMul {
    fn name(&self) -> StaticName {
        "QwmPackedMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "K {} N {} bits {} block {} ({} bytes resident)",
            self.k,
            self.n,
            self.bits,
            self.block_size,
            self.resident_bytes()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for PackedMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        eval_linear(
            "QwmPackedMatMul",
            inputs,
            self.k,
            self.n,
            true,
            |a_slice, m, out_slice| {
                // One scratch matrix per thread, reused across calls: a fresh multi-megabyte buffer
                // would be mapped and page-faulted on every call.
                thread_local! {
                    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                let mut w = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
                let av = ArrayView2::from_shape((m, self.k), a_slice)?;
                let mut cv = ArrayViewMut2::from_shape((m, self.n), out_slice)?;
                // The whole weight at once: dequantizing in cache-sized column panels was measured
                // slower (encoder at batch 1: 0.73x float instead of 0.88x), as every panel repacks A.
                w.resize(self.n * self.k, 0.0);
                self.dequantize_into(0..self.n, &mut w);
                let wv = ArrayView2::from_shape((self.n, self.k), &w[..])?;
                ndarray::linalg::general_mat_mul(1.0, &av, &wv.t(), 0.0, &mut cv);
                SCRATCH.with(|s| *s.borrow_mut() = w);
                Ok(())
            },
        )
    }
}

impl TypedOp for PackedMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        linear_output_facts("QwmPackedMatMul", inputs, self.k, self.n)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pack `codes[n][k]` (values < 2^bits) as MatMulNBits does: `[N, blocks, blob]`, low bits
    /// first, a partial last block padded with zero codes.
    fn pack(codes: &[Vec<u8>], bits: usize, bs: usize) -> Vec<u8> {
        let per_byte = 8 / bits;
        let k = codes[0].len();
        let blocks = k.div_ceil(bs);
        let mut out = vec![0u8; codes.len() * blocks * bs / per_byte];
        for (col, row) in codes.iter().enumerate() {
            for (kk, c) in row.iter().enumerate() {
                let (blk, j) = (kk / bs, kk % bs);
                let byte = (col * blocks + blk) * (bs / per_byte) + j / per_byte;
                out[byte] |= c << (bits * (j % per_byte));
            }
        }
        out
    }

    /// The packed operator against a float64 reference of the same semantics, for every bit
    /// width, with and without zero points, K a multiple of the block and not.
    #[test]
    fn packed_matmul_matches_a_float64_reference() {
        for bits in [2usize, 4, 8] {
            for (k, bs) in [(64usize, 32usize), (40, 16), (404, 32), (50, 64)] {
                for with_zeros in [false, true] {
                    let n = 7;
                    let m = 5;
                    let blocks = k.div_ceil(bs);
                    let levels = 1u32 << bits;
                    let codes: Vec<Vec<u8>> = (0..n)
                        .map(|c| {
                            (0..k)
                                .map(|i| ((i * 31 + c * 17) as u32 % levels) as u8)
                                .collect()
                        })
                        .collect();
                    let scales: Vec<f32> = (0..n * blocks)
                        .map(|i| 0.01 + (i % 11) as f32 * 0.003)
                        .collect();
                    let zeros: Vec<u8> =
                        (0..n * blocks).map(|i| (i as u32 % levels) as u8).collect();
                    let op = PackedMatMul {
                        k,
                        n,
                        bits,
                        block_size: bs,
                        codes: Arc::new(pack(&codes, bits, bs)),
                        scales: Arc::new(scales.clone()),
                        zeros: with_zeros.then(|| Arc::new(zeros.clone())),
                    };
                    let a: Vec<f32> = (0..m * k)
                        .map(|i| ((i * 7919) % 97) as f32 / 48.5 - 1.0)
                        .collect();
                    let input = Tensor::from_shape(&[1, m, k], &a).unwrap();
                    let y = op
                        .eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue()))
                        .unwrap();
                    assert_eq!(y[0].shape(), &[1, m, n]);
                    let y = y[0].to_plain_array_view::<f32>().unwrap();
                    let y: Vec<f32> = y.iter().copied().collect();
                    let default_zero = (levels / 2) as f64;
                    let mut worst = 0f64;
                    let mut scale = 0f64;
                    for r in 0..m {
                        for c in 0..n {
                            let mut acc = 0f64;
                            for kk in 0..k {
                                let i = c * blocks + kk / bs;
                                let z = if with_zeros {
                                    zeros[i] as f64
                                } else {
                                    default_zero
                                };
                                let w = (codes[c][kk] as f64 - z) * scales[i] as f64;
                                acc += a[r * k + kk] as f64 * w;
                            }
                            let got = y[r * n + c] as f64;
                            assert!(got.is_finite());
                            worst = worst.max((got - acc).abs());
                            scale = scale.max(acc.abs());
                        }
                    }
                    assert!(
                        worst <= 1e-5 * scale.max(1.0),
                        "bits {bits} k {k} block {bs} zeros {with_zeros}: max err {worst} (scale {scale})"
                    );
                }
            }
        }
    }

    /// The operator refuses an input whose last axis is not K instead of reading past it.
    #[test]
    fn packed_matmul_checks_its_input() {
        let op = PackedMatMul {
            k: 32,
            n: 2,
            bits: 4,
            block_size: 32,
            codes: Arc::new(vec![0x88; 32]),
            scales: Arc::new(vec![1.0; 2]),
            zeros: None,
        };
        let bad = Tensor::from_shape(&[3, 31], &[0f32; 93]).unwrap();
        let e = op
            .eval(&EvalContext::out_of_plan(), tvec!(bad.into_tvalue()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected last dimension K 32"), "{e}");
        let fact = f32::fact([3usize, 31]);
        assert!(op.output_facts(&[&fact]).is_err());
        // All codes 8 = zero weight.
        let ok = Tensor::from_shape(&[3, 32], &[1f32; 96]).unwrap();
        let y = op
            .eval(&EvalContext::out_of_plan(), tvec!(ok.into_tvalue()))
            .unwrap();
        assert!(y[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .all(|v| *v == 0.0));
    }
}
