//! ONNX graph surgery with tract-onnx's protobuf types: find the Linear layers (MatMul with a
//! rank-2 float initializer as `B`), and rewrite them into standard QDQ form.
//!
//! Forms written (all standard ONNX, opset 17):
//! - per-channel weights: int8 initializer + `DequantizeLinear(axis=1)` (bits < 8 use the int8
//!   container with codes inside the narrower range);
//! - group-wise weights: int8 `[K/g, g, N]` -> `Cast` -> `Mul` by scales `[K/g, 1, N]` -> `Reshape`
//!   (an explicit float subgraph every backend runs; opset-21 blocked DequantizeLinear is refused
//!   by tract);
//! - static per-tensor activations: `QuantizeLinear`/`DequantizeLinear` (uint8) for 8 bits, the
//!   same arithmetic as a float subgraph (`Div`, `Round`, `Add`, `Clip`, `Sub`, `Mul`) below 8 bits;
//! - dynamic per-token activations: a float subgraph computing min/max over the last axis.
//!
//! Only MatMul inputs are touched, so no Q/DQ ever surrounds Softmax (a pattern tract turns into
//! a wrong lookup table).

use super::weights::QuantWeight;
use crate::error::{QwmError, Result};
use prost::Message;
use tract_onnx::pb::{
    self, tensor_proto::DataType, AttributeProto, ModelProto, NodeProto, TensorProto,
};

/// A Linear layer of an exported graph.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LinearLayer {
    /// MatMul node name (e.g. `/blocks.0/attn/qkv/MatMul`).
    pub node: String,
    /// Weight initializer name.
    pub weight: String,
    /// Activation input tensor name.
    pub input: String,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
}

/// How one Linear input is quantized.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum ActQuant {
    /// Static per-tensor, unsigned asymmetric.
    Static {
        /// Bits.
        bits: u32,
        /// Scale.
        scale: f32,
        /// Zero point in [0, 2^bits - 1].
        zero_point: f32,
    },
    /// Dynamic per-token (min/max over the last axis at run time).
    PerToken {
        /// Bits.
        bits: u32,
    },
}

/// Unsigned asymmetric parameters for a range, as the study computes them.
pub fn act_params(min: f64, max: f64, bits: u32) -> (f32, f32) {
    let qmax = ((1u64 << bits) - 1) as f64;
    let scale = ((max - min) / qmax).max(1e-8);
    let zp = (-(min / scale).round_ties_even()).clamp(0.0, qmax);
    (scale as f32, zp as f32)
}

/// Decode an ONNX file.
pub fn decode(bytes: &[u8], what: &str) -> Result<ModelProto> {
    ModelProto::decode(bytes)
        .map_err(|e| QwmError::Usage(format!("{what}: not a valid ONNX protobuf: {e}")))
}

/// Encode an ONNX model.
pub fn encode(m: &ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

/// Float values of an initializer.
pub fn read_f32(t: &TensorProto) -> Result<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return Err(QwmError::Usage(format!(
            "initializer '{}' is not float32",
            t.name
        )));
    }
    let n: i64 = t.dims.iter().product();
    let v: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if v.len() as i64 != n {
        return Err(QwmError::Usage(format!(
            "initializer '{}' has {} values for dims {:?}",
            t.name,
            v.len(),
            t.dims
        )));
    }
    Ok(v)
}

/// Bytes of the float32 initializers of a graph (its weights as stored in f32).
pub fn float_initializer_bytes(m: &ModelProto) -> u64 {
    m.graph
        .as_ref()
        .map(|g| {
            g.initializer
                .iter()
                .filter(|t| t.data_type == DataType::Float as i32)
                .map(|t| 4 * t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>())
                .sum()
        })
        .unwrap_or(0)
}

/// A float32 initializer.
pub fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub(crate) fn i8_tensor(name: &str, dims: &[i64], data: &[i8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int8 as i32,
        raw_data: data.iter().map(|v| *v as u8).collect(),
        ..Default::default()
    }
}

pub(crate) fn u8_tensor(name: &str, dims: &[i64], data: &[u8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Uint8 as i32,
        raw_data: data.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn i64_tensor(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A graph input or output of element type `elem` and shape `dims`; a negative dimension is the
/// symbolic batch (`batch`).
pub fn value_info(name: &str, elem: DataType, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(if d < 0 {
                                Value::DimParam("batch".into())
                            } else {
                                Value::DimValue(d)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub(crate) fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

pub(crate) fn graph_mut(m: &mut ModelProto) -> Result<&mut pb::GraphProto> {
    m.graph
        .as_mut()
        .ok_or_else(|| QwmError::Usage("ONNX model has no graph".into()))
}

/// The Linear layers of a graph, in node order.
pub fn find_linears(m: &ModelProto) -> Vec<LinearLayer> {
    let Some(g) = m.graph.as_ref() else {
        return vec![];
    };
    let inits: std::collections::HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    g.node
        .iter()
        .filter(|n| n.op_type == "MatMul" && n.input.len() == 2)
        .filter_map(|n| {
            let w = inits.get(n.input[1].as_str())?;
            (w.dims.len() == 2 && w.data_type == DataType::Float as i32).then(|| LinearLayer {
                node: n.name.clone(),
                weight: w.name.clone(),
                input: n.input[0].clone(),
                k: w.dims[0] as usize,
                n: w.dims[1] as usize,
            })
        })
        .collect()
}

/// Replace a float weight initializer by its quantized form (DQ per channel, or a group subgraph).
pub fn rewrite_weight(m: &mut ModelProto, layer: &LinearLayer, q: &QuantWeight) -> Result<()> {
    let g = graph_mut(m)?;
    let pos = g
        .initializer
        .iter()
        .position(|t| t.name == layer.weight)
        .ok_or_else(|| QwmError::Usage(format!("initializer '{}' not found", layer.weight)))?;
    g.initializer.remove(pos);
    g.input.retain(|i| i.name != layer.weight);
    let w = layer.weight.as_str();
    let (k, n) = (q.k as i64, q.n as i64);
    let (qn, sn) = (format!("{w}_quant"), format!("{w}_scale"));
    let mut new_nodes = vec![];
    match q.group {
        None => {
            let zn = format!("{w}_zero_point");
            g.initializer.push(i8_tensor(&qn, &[k, n], &q.codes));
            g.initializer.push(f32_tensor(&sn, &[n], &q.scales));
            g.initializer.push(i8_tensor(&zn, &[n], &vec![0i8; q.n]));
            new_nodes.push(node(
                "DequantizeLinear",
                &format!("{w}_DequantizeLinear"),
                &[&qn, &sn, &zn],
                &[w],
                vec![attr_i("axis", 1)],
            ));
        }
        Some(gs) => {
            let gs = gs.min(q.k) as i64;
            let blocks = q.groups() as i64;
            let padded = blocks * gs;
            let (cf, mul, shp) = (
                format!("{w}_quant_float"),
                format!("{w}_dequant_blocks"),
                format!("{w}_shape"),
            );
            // Codes padded with zero rows to whole groups; the padding is sliced off after.
            let mut codes = q.codes.clone();
            codes.resize((padded * n) as usize, 0);
            g.initializer.push(i8_tensor(&qn, &[blocks, gs, n], &codes));
            g.initializer
                .push(f32_tensor(&sn, &[blocks, 1, n], &q.scales));
            g.initializer.push(i64_tensor(&shp, &[2], &[padded, n]));
            new_nodes.push(node(
                "Cast",
                &format!("{w}_Cast"),
                &[&qn],
                &[&cf],
                vec![attr_i("to", DataType::Float as i64)],
            ));
            new_nodes.push(node(
                "Mul",
                &format!("{w}_Mul"),
                &[&cf, &sn],
                &[&mul],
                vec![],
            ));
            if padded == k {
                new_nodes.push(node(
                    "Reshape",
                    &format!("{w}_Reshape"),
                    &[&mul, &shp],
                    &[w],
                    vec![],
                ));
            } else {
                let (full, st, en, ax) = (
                    format!("{w}_padded"),
                    format!("{w}_slice_start"),
                    format!("{w}_slice_end"),
                    format!("{w}_slice_axis"),
                );
                g.initializer.push(i64_tensor(&st, &[1], &[0]));
                g.initializer.push(i64_tensor(&en, &[1], &[k]));
                g.initializer.push(i64_tensor(&ax, &[1], &[0]));
                new_nodes.push(node(
                    "Reshape",
                    &format!("{w}_Reshape"),
                    &[&mul, &shp],
                    &[&full],
                    vec![],
                ));
                new_nodes.push(node(
                    "Slice",
                    &format!("{w}_Slice"),
                    &[&full, &st, &en, &ax],
                    &[w],
                    vec![],
                ));
            }
        }
    }
    insert_before_consumer(g, &layer.node, new_nodes)
}

fn insert_before_consumer(
    g: &mut pb::GraphProto,
    consumer: &str,
    nodes: Vec<NodeProto>,
) -> Result<()> {
    let at = g
        .node
        .iter()
        .position(|n| n.name == consumer)
        .ok_or_else(|| QwmError::Usage(format!("node '{consumer}' not found")))?;
    g.node.splice(at..at, nodes);
    Ok(())
}

/// Quantize-dequantize the activation input of a Linear layer.
pub fn rewrite_activation(m: &mut ModelProto, layer: &LinearLayer, a: ActQuant) -> Result<()> {
    let g = graph_mut(m)?;
    let x = layer.input.as_str();
    let p = format!("{}_act", layer.node);
    let out = format!("{p}_dq");
    let mut nodes = vec![];
    match a {
        ActQuant::Static {
            bits: 8,
            scale,
            zero_point,
        } => {
            let (sn, zn, qn) = (
                format!("{p}_scale"),
                format!("{p}_zero_point"),
                format!("{p}_q"),
            );
            g.initializer.push(f32_tensor(&sn, &[], &[scale]));
            g.initializer.push(u8_tensor(&zn, &[], &[zero_point as u8]));
            nodes.push(node(
                "QuantizeLinear",
                &format!("{p}_QuantizeLinear"),
                &[x, &sn, &zn],
                &[&qn],
                vec![],
            ));
            nodes.push(node(
                "DequantizeLinear",
                &format!("{p}_DequantizeLinear"),
                &[&qn, &sn, &zn],
                &[&out],
                vec![],
            ));
        }
        ActQuant::Static {
            bits,
            scale,
            zero_point,
        } => {
            let qmax = ((1u32 << bits) - 1) as f32;
            let names: Vec<String> = [
                "scale",
                "zero_point",
                "lo",
                "hi",
                "div",
                "round",
                "shift",
                "clip",
                "unshift",
            ]
            .iter()
            .map(|s| format!("{p}_{s}"))
            .collect();
            g.initializer.push(f32_tensor(&names[0], &[], &[scale]));
            g.initializer
                .push(f32_tensor(&names[1], &[], &[zero_point]));
            g.initializer.push(f32_tensor(&names[2], &[], &[0.0]));
            g.initializer.push(f32_tensor(&names[3], &[], &[qmax]));
            nodes.push(node(
                "Div",
                &format!("{p}_Div"),
                &[x, &names[0]],
                &[&names[4]],
                vec![],
            ));
            nodes.push(node(
                "Round",
                &format!("{p}_Round"),
                &[&names[4]],
                &[&names[5]],
                vec![],
            ));
            nodes.push(node(
                "Add",
                &format!("{p}_Add"),
                &[&names[5], &names[1]],
                &[&names[6]],
                vec![],
            ));
            nodes.push(node(
                "Clip",
                &format!("{p}_Clip"),
                &[&names[6], &names[2], &names[3]],
                &[&names[7]],
                vec![],
            ));
            nodes.push(node(
                "Sub",
                &format!("{p}_Sub"),
                &[&names[7], &names[1]],
                &[&names[8]],
                vec![],
            ));
            nodes.push(node(
                "Mul",
                &format!("{p}_Mul"),
                &[&names[8], &names[0]],
                &[&out],
                vec![],
            ));
        }
        ActQuant::PerToken { bits } => {
            let qmax = ((1u32 << bits) - 1) as f32;
            let n = |s: &str| format!("{p}_{s}");
            g.initializer.push(f32_tensor(&n("qmax"), &[], &[qmax]));
            g.initializer.push(f32_tensor(&n("zero"), &[], &[0.0]));
            g.initializer.push(f32_tensor(&n("eps"), &[], &[1e-8]));
            let red = |op: &str, o: &str| {
                node(
                    op,
                    &format!("{p}_{op}"),
                    &[x],
                    &[o],
                    vec![attr_ints("axes", &[-1]), attr_i("keepdims", 1)],
                )
            };
            nodes.push(red("ReduceMin", &n("min")));
            nodes.push(red("ReduceMax", &n("max")));
            let bin = |op: &str, a: &str, b: &str, o: &str, tag: &str| {
                node(op, &format!("{p}_{op}_{tag}"), &[a, b], &[o], vec![])
            };
            nodes.push(bin("Sub", &n("max"), &n("min"), &n("range"), "range"));
            nodes.push(bin(
                "Div",
                &n("range"),
                &n("qmax"),
                &n("scale_raw"),
                "scale",
            ));
            nodes.push(bin("Max", &n("scale_raw"), &n("eps"), &n("scale"), "scale"));
            nodes.push(bin("Div", &n("min"), &n("scale"), &n("min_q"), "minq"));
            nodes.push(node(
                "Round",
                &format!("{p}_Round_zp"),
                &[&n("min_q")],
                &[&n("min_q_r")],
                vec![],
            ));
            nodes.push(bin("Sub", &n("zero"), &n("min_q_r"), &n("zp_raw"), "zp"));
            nodes.push(node(
                "Clip",
                &format!("{p}_Clip_zp"),
                &[&n("zp_raw"), &n("zero"), &n("qmax")],
                &[&n("zp")],
                vec![],
            ));
            nodes.push(bin("Div", x, &n("scale"), &n("xs"), "x"));
            nodes.push(node(
                "Round",
                &format!("{p}_Round_x"),
                &[&n("xs")],
                &[&n("xr")],
                vec![],
            ));
            nodes.push(bin("Add", &n("xr"), &n("zp"), &n("xq"), "x"));
            nodes.push(node(
                "Clip",
                &format!("{p}_Clip_x"),
                &[&n("xq"), &n("zero"), &n("qmax")],
                &[&n("xc")],
                vec![],
            ));
            nodes.push(bin("Sub", &n("xc"), &n("zp"), &n("xu"), "x"));
            nodes.push(bin("Mul", &n("xu"), &n("scale"), &out, "x"));
        }
    }
    insert_before_consumer(g, &layer.node, nodes)?;
    let mm = g
        .node
        .iter_mut()
        .find(|nd| nd.name == layer.node)
        .expect("consumer exists");
    mm.input[0] = out;
    Ok(())
}

/// Add graph outputs for intermediate tensors (for calibration).
pub fn expose(m: &mut ModelProto, tensors: &[String]) -> Result<()> {
    let g = graph_mut(m)?;
    for t in tensors {
        if !g.output.iter().any(|o| &o.name == t) {
            g.output.push(pb::ValueInfoProto {
                name: t.clone(),
                ..Default::default()
            });
        }
    }
    Ok(())
}

/// Divide a Linear layer's input channels by `s` (SmoothQuant / AWQ migration): folded into the
/// preceding LayerNormalization's scale and bias when it feeds only this layer, otherwise an
/// explicit `Mul` by `1/s` before the MatMul. Returns where it went and the tensor that now
/// feeds the MatMul (activation quantization must wrap that one).
pub fn scale_input_channels(
    m: &mut ModelProto,
    layer: &LinearLayer,
    s: &[f32],
) -> Result<(&'static str, String)> {
    let g = graph_mut(m)?;
    let consumers = g
        .node
        .iter()
        .filter(|n| n.input.iter().any(|i| i == &layer.input))
        .count();
    let producer = g
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == &layer.input))
        .cloned();
    if let Some(ln) = producer
        .filter(|p| p.op_type == "LayerNormalization" && consumers == 1 && p.input.len() == 3)
    {
        let is_init = |name: &str| g.initializer.iter().any(|t| t.name == name);
        if is_init(&ln.input[1]) && is_init(&ln.input[2]) {
            for slot in [1, 2] {
                let name = ln.input[slot].clone();
                let t = g
                    .initializer
                    .iter()
                    .find(|t| t.name == name)
                    .expect("checked")
                    .clone();
                let v = read_f32(&t)?;
                if v.len() != s.len() {
                    return Err(QwmError::Usage(format!(
                        "'{name}' has {} channels, expected {}",
                        v.len(),
                        s.len()
                    )));
                }
                let scaled: Vec<f32> = v.iter().zip(s).map(|(a, b)| a / b).collect();
                // A private copy: exporters share identical initializers between LayerNorms.
                let private = format!("{name}_for_{}", layer.node);
                g.initializer.push(f32_tensor(&private, &t.dims, &scaled));
                let node = g
                    .node
                    .iter_mut()
                    .find(|n| n.name == ln.name)
                    .expect("producer exists");
                node.input[slot] = private;
            }
            return Ok(("layernorm", layer.input.clone()));
        }
    }
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    let (sn, out) = (
        format!("{}_smooth_inv", layer.node),
        format!("{}_smoothed", layer.node),
    );
    g.initializer.push(f32_tensor(&sn, &[s.len() as i64], &inv));
    insert_before_consumer(
        g,
        &layer.node,
        vec![node(
            "Mul",
            &format!("{}_smooth_Mul", layer.node),
            &[&layer.input, &sn],
            &[&out],
            vec![],
        )],
    )?;
    let mm = g
        .node
        .iter_mut()
        .find(|nd| nd.name == layer.node)
        .expect("consumer exists");
    mm.input[0] = out.clone();
    Ok(("mul", out))
}

fn find_initializer<'a>(m: &'a ModelProto, name: &str) -> Result<&'a TensorProto> {
    m.graph
        .as_ref()
        .and_then(|g| g.initializer.iter().find(|t| t.name == name))
        .ok_or_else(|| QwmError::Usage(format!("initializer '{name}' not found")))
}

/// Replace a float initializer's values (same shape).
pub fn set_initializer(m: &mut ModelProto, name: &str, data: &[f32]) -> Result<()> {
    let dims = find_initializer(m, name)?.dims.clone();
    let g = graph_mut(m)?;
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .expect("found above");
    *t = f32_tensor(name, &dims, data);
    Ok(())
}

/// Float values of a named initializer.
pub fn initializer(m: &ModelProto, name: &str) -> Result<Vec<f32>> {
    read_f32(find_initializer(m, name)?)
}
