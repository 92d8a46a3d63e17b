//! The "deploy" form: quantized Linear layers lowered to operators with real integer or packed
//! low-bit kernels, computing the same function as the "simulate" (QDQ) form.
//!
//! - Weight-only 4-bit group-wise (`w4-g<B>`, B a power of two >= 16): `com.microsoft.MatMulNBits`
//!   (bits 4, block B, symmetric: the int4 codes stored as uint4 = code + 8, the default zero
//!   point, weights `[N, K/B, B/2]` bytes, scales `[N * K/B]`). Lossless against the simulate
//!   form. ONNX Runtime runs it natively; on tract qwm registers its own operator
//!   (`engine::tract::nbits`) that keeps the codes packed and dequantizes per call.
//! - 8-bit weights with static per-tensor 8-bit activations (`w8a8`): `QuantizeLinear` (uint8, the
//!   calibrated scale / zero point) -> `MatMulInteger` (uint8 x int8 -> int32, exact) -> `Cast` ->
//!   `Mul` by `a_scale x w_scale[n]` (one per output column, so per-channel weight scales stay
//!   exact: no operator ever sees a per-channel scale it might read as per-tensor). The integer
//!   accumulation is exact, so it differs from the simulate form by float rounding only.
//!
//! Other schemes have no deploy form yet and are refused by name.

use super::scheme::Scheme;
use super::weights::QuantWeight;
use crate::error::{QwmError, Result};
use crate::onnx::proto::{attr_i, f32_tensor, graph_mut, i8_tensor, node, u8_tensor, LinearLayer};
use tract_onnx::pb::{self, tensor_proto::DataType, ModelProto, OperatorSetIdProto};

pub use crate::bundle::record::Lowering;

/// The deploy lowering for a scheme, or an error naming what is available.
pub fn lowering_for(scheme: Scheme) -> Result<Lowering> {
    match (scheme.weight_bits, scheme.act_bits, scheme.group, scheme.per_token) {
        (Some(4), None, Some(g), _) if g >= 16 && g.is_power_of_two() => Ok(Lowering::MatMulNBits),
        (Some(8), Some(8), None, false) => Ok(Lowering::MatMulInteger),
        _ => Err(QwmError::Usage(format!(
            "--form deploy: scheme {scheme} has no deploy form yet (available: w4-g16/32/64/128 as \
             MatMulNBits, w8a8 with static per-tensor activations as MatMulInteger); use --form simulate"
        ))),
    }
}

/// Remove the float weight initializer of a layer and return the MatMul node's index.
fn take_matmul(g: &mut pb::GraphProto, layer: &LinearLayer) -> Result<usize> {
    let pos = g
        .initializer
        .iter()
        .position(|t| t.name == layer.weight)
        .ok_or_else(|| QwmError::Usage(format!("initializer '{}' not found", layer.weight)))?;
    g.initializer.remove(pos);
    g.input.retain(|i| i.name != layer.weight);
    g.node
        .iter()
        .position(|n| n.name == layer.node && n.op_type == "MatMul")
        .ok_or_else(|| QwmError::Usage(format!("MatMul node '{}' not found", layer.node)))
}

fn ensure_ms_domain(m: &mut ModelProto) {
    if !m.opset_import.iter().any(|o| o.domain == "com.microsoft") {
        m.opset_import.push(OperatorSetIdProto {
            domain: "com.microsoft".into(),
            version: 1,
        });
    }
}

/// Pack 4-bit codes (signed, within [-8, 7]) of a `[K, N]` group-wise weight into MatMulNBits'
/// layout: `[N, ceil(K/B), B/2]` bytes of uint4 = code + 8 (low nibble first), zero-padded past
/// K (code 0, i.e. uint4 8, dequantizes to 0); scales `[N * ceil(K/B)]`, column-major.
pub fn pack_nbits(q: &QuantWeight) -> Result<(Vec<u8>, Vec<f32>, usize)> {
    let b = q
        .group
        .ok_or_else(|| QwmError::Usage("MatMulNBits needs group-wise weights".into()))?;
    if q.bits != 4 || b < 2 || b % 2 != 0 {
        return Err(QwmError::Usage(format!(
            "MatMulNBits: {} bits in groups of {b} cannot be packed as 4-bit blocks",
            q.bits
        )));
    }
    let (k, n) = (q.k, q.n);
    let blocks = k.div_ceil(b);
    let blob = b / 2;
    let mut packed = vec![0u8; n * blocks * blob];
    let mut scales = vec![0f32; n * blocks];
    for col in 0..n {
        for blk in 0..blocks {
            scales[col * blocks + blk] = q.scales[blk * n + col];
            for i in 0..b {
                let kk = blk * b + i;
                let code = if kk < k { q.codes[kk * n + col] } else { 0 };
                if !(-8..=7).contains(&code) {
                    return Err(QwmError::Numeric(format!(
                        "4-bit code {code} out of range at row {kk}, column {col}"
                    )));
                }
                let u = (code + 8) as u8;
                packed[(col * blocks + blk) * blob + i / 2] |= u << (4 * (i % 2));
            }
        }
    }
    Ok((packed, scales, blocks))
}

/// Replace a layer's MatMul by MatMulNBits over its 4-bit group-wise weights. `accuracy_level`
/// is ONNX Runtime's: 0 keeps float activations (the scheme's exact function); 4 lets ONNX Runtime
/// quantize activations to int8 per block (faster, approximate; tract ignores the attribute).
pub fn lower_nbits(
    m: &mut ModelProto,
    layer: &LinearLayer,
    q: &QuantWeight,
    accuracy_level: i64,
) -> Result<()> {
    if accuracy_level != 0 && accuracy_level != 4 {
        return Err(QwmError::Usage(format!(
            "--accuracy-level {accuracy_level}: expected 0 (float activations) or 4 (int8 activations per block)"
        )));
    }
    let (packed, scales, blocks) = pack_nbits(q)?;
    let b = q.group.expect("checked by pack_nbits");
    let w = layer.weight.as_str();
    let (bn, sn) = (format!("{w}_nbits"), format!("{w}_nbits_scales"));
    let g = graph_mut(m)?;
    let at = take_matmul(g, layer)?;
    g.initializer.push(u8_tensor(
        &bn,
        &[q.n as i64, blocks as i64, (b / 2) as i64],
        &packed,
    ));
    g.initializer
        .push(f32_tensor(&sn, &[scales.len() as i64], &scales));
    let out = g.node[at].output[0].clone();
    // K need not be a multiple of the block: the last block's missing rows are zero codes.
    let mut nb = node(
        "MatMulNBits",
        &format!("{}_nbits", layer.node),
        &[&layer.input, &bn, &sn],
        &[&out],
        vec![
            attr_i("K", q.k as i64),
            attr_i("N", q.n as i64),
            attr_i("bits", 4),
            attr_i("block_size", b as i64),
            attr_i("accuracy_level", accuracy_level),
        ],
    );
    nb.domain = "com.microsoft".into();
    g.node[at] = nb;
    ensure_ms_domain(m);
    Ok(())
}

/// Replace a layer's MatMul by uint8 activation quantization + MatMulInteger + rescale.
pub fn lower_int8(
    m: &mut ModelProto,
    layer: &LinearLayer,
    q: &QuantWeight,
    act_scale: f32,
    act_zero_point: f32,
) -> Result<()> {
    if q.bits != 8 || q.group.is_some() {
        return Err(QwmError::Usage(format!(
            "MatMulInteger: {}-bit weights with groups {:?} are not per-channel int8",
            q.bits, q.group
        )));
    }
    if !(0.0..=255.0).contains(&act_zero_point) || act_zero_point.fract() != 0.0 {
        return Err(QwmError::Numeric(format!(
            "activation zero point {act_zero_point} of {} is not a uint8",
            layer.node
        )));
    }
    let p = format!("{}_int8", layer.node);
    let names: Vec<String> = [
        "a_scale", "a_zero", "a_q", "w_q", "acc", "acc_f", "scale", "w_zero",
    ]
    .iter()
    .map(|s| format!("{p}_{s}"))
    .collect();
    let g = graph_mut(m)?;
    let at = take_matmul(g, layer)?;
    let out = g.node[at].output[0].clone();
    g.initializer.push(f32_tensor(&names[0], &[], &[act_scale]));
    g.initializer
        .push(u8_tensor(&names[1], &[], &[act_zero_point as u8]));
    g.initializer
        .push(i8_tensor(&names[3], &[q.k as i64, q.n as i64], &q.codes));
    g.initializer.push(i8_tensor(&names[7], &[], &[0]));
    let scale: Vec<f32> = q
        .scales
        .iter()
        .map(|s| (*s as f64 * act_scale as f64) as f32)
        .collect();
    g.initializer
        .push(f32_tensor(&names[6], &[q.n as i64], &scale));
    let nodes = vec![
        node(
            "QuantizeLinear",
            &format!("{p}_QuantizeLinear"),
            &[&layer.input, &names[0], &names[1]],
            &[&names[2]],
            vec![],
        ),
        node(
            "MatMulInteger",
            &format!("{p}_MatMulInteger"),
            &[&names[2], &names[3], &names[1], &names[7]],
            &[&names[4]],
            vec![],
        ),
        node(
            "Cast",
            &format!("{p}_Cast"),
            &[&names[4]],
            &[&names[5]],
            vec![attr_i("to", DataType::Float as i64)],
        ),
        node(
            "Mul",
            &format!("{p}_Mul"),
            &[&names[5], &names[6]],
            &[&out],
            vec![],
        ),
    ];
    g.node.splice(at..at + 1, nodes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::weights::{quantize_matrix, Observer};

    #[test]
    fn nbits_packing_round_trips_codes_and_scales() {
        // K = 40 is not a multiple of the block: the last block is zero-padded.
        let (k, n) = (40, 3);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.1)
            .collect();
        let q = quantize_matrix(&w, k, n, 4, Some(16), Observer::Rtn).unwrap();
        let (packed, scales, blocks) = pack_nbits(&q).unwrap();
        assert_eq!(blocks, 3);
        assert_eq!(packed.len(), n * blocks * 8);
        let deq = q.dequantize();
        for col in 0..n {
            for kk in 0..blocks * 16 {
                let (blk, i) = (kk / 16, kk % 16);
                let byte = packed[(col * blocks + blk) * 8 + i / 2];
                let u = (byte >> (4 * (i % 2))) & 15;
                let v = (u as f32 - 8.0) * scales[col * blocks + blk];
                let want = if kk < k { deq[kk * n + col] } else { 0.0 };
                assert_eq!(v, want, "row {kk} col {col}");
            }
        }
    }

    #[test]
    fn schemes_without_a_deploy_form_are_refused_by_name() {
        for s in ["w3", "w4", "w8", "w6a6", "w8a8-token", "w4-g8"] {
            let e = lowering_for(Scheme::parse(s, "--predictor").unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains("no deploy form"), "{s}: {e}");
        }
        assert_eq!(
            lowering_for(Scheme::parse("w4-g32", "x").unwrap()).unwrap(),
            Lowering::MatMulNBits
        );
        assert_eq!(
            lowering_for(Scheme::parse("w8a8", "x").unwrap()).unwrap(),
            Lowering::MatMulInteger
        );
    }
}
