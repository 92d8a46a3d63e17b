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

/// Refuse tensors that keep their data in another file (ONNX external data) anywhere in a graph:
/// initializers, sparse initializers, and the tensors of node attributes (a `Constant`'s value),
/// in subgraphs too. A bundle's sha256 covers only its `.onnx` files, and a location such as
/// `etc/passwd` would make an engine read whatever file it resolves to. The error names the
/// tensor. `initializers: false` skips the top graph's initializers, for a protobuf whose large
/// initializers qwm itself turned into external data (after checking them).
pub fn refuse_external_data(m: &ModelProto, initializers: bool) -> std::result::Result<(), String> {
    fn tensor(t: &TensorProto, what: &str) -> std::result::Result<(), String> {
        if !t.external_data.is_empty() || t.data_location == Some(1) {
            return Err(format!(
                "{what} '{}' keeps its data in a separate file (ONNX external data); a qwm \
                 bundle's graphs must hold their own data",
                t.name
            ));
        }
        Ok(())
    }
    fn graph(g: &pb::GraphProto, initializers: bool) -> std::result::Result<(), String> {
        for t in g.initializer.iter().filter(|_| initializers) {
            tensor(t, "initializer")?;
        }
        for s in &g.sparse_initializer {
            for t in s.values.iter().chain(&s.indices) {
                tensor(t, "sparse initializer")?;
            }
        }
        for n in &g.node {
            for a in &n.attribute {
                let what = format!("attribute '{}' of node '{}'", a.name, n.name);
                for t in a.t.iter().chain(&a.tensors) {
                    tensor(t, &what)?;
                }
                for s in a.sparse_tensor.iter().chain(&a.sparse_tensors) {
                    for t in s.values.iter().chain(&s.indices) {
                        tensor(t, &what)?;
                    }
                }
                for sub in a.g.iter().chain(&a.graphs) {
                    graph(sub, true)?;
                }
            }
        }
        Ok(())
    }
    match &m.graph {
        Some(g) => graph(g, initializers),
        None => Ok(()),
    }
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

/// Refuse initializers no engine here can hold: a STRING (or unknown) type, a negative
/// dimension, more elements than can be addressed, or stored values that disagree with the
/// dims; and, with `float_weights` (a float bundle about to be quantized), MatMul weights that
/// are not float32 (the quantizer must not skip such a layer and write a bundle that cannot
/// load). `what` names the graph file.
pub fn check_initializers(m: &ModelProto, what: &str, float_weights: bool) -> Result<()> {
    let Some(g) = m.graph.as_ref() else {
        return Err(QwmError::Usage(format!("{what}: the model has no graph")));
    };
    let bad = |t: &TensorProto, msg: String| {
        QwmError::Usage(format!("{what}: initializer '{}' {msg}", t.name))
    };
    for t in &g.initializer {
        let width = match DataType::try_from(t.data_type) {
            Ok(DataType::Float | DataType::Int32 | DataType::Uint32) => 4,
            Ok(DataType::Int64 | DataType::Uint64 | DataType::Double) => 8,
            Ok(DataType::Int8 | DataType::Uint8 | DataType::Bool) => 1,
            Ok(DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16) => 2,
            Ok(other) => {
                return Err(bad(
                    t,
                    format!("has type {other:?}, which qwm does not support"),
                ))
            }
            Err(_) => return Err(bad(t, format!("has an unknown data type {}", t.data_type))),
        };
        if let Some(d) = t.dims.iter().find(|&&d| d < 0) {
            return Err(bad(
                t,
                format!("has a negative dimension {d} in {:?}", t.dims),
            ));
        }
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .filter(|&n| n <= (isize::MAX as u64) / 8)
            .ok_or_else(|| {
                bad(
                    t,
                    format!("has dims {:?}: more elements than can exist", t.dims),
                )
            })?;
        if !t.raw_data.is_empty() && t.raw_data.len() as u64 != n * width {
            return Err(bad(
                t,
                format!(
                    "stores {} bytes for dims {:?} ({} expected)",
                    t.raw_data.len(),
                    t.dims,
                    n * width
                ),
            ));
        }
    }
    if !float_weights {
        return Ok(());
    }
    let inits: std::collections::HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    for n in g
        .node
        .iter()
        .filter(|n| n.op_type == "MatMul" || n.op_type == "Gemm")
    {
        for w in n.input.iter().filter_map(|i| inits.get(i.as_str())) {
            if w.data_type != DataType::Float as i32 {
                return Err(bad(
                    w,
                    format!(
                        "feeds {} '{}' but is not float32 (a float bundle's weights are float32)",
                        n.op_type, n.name
                    ),
                ));
            }
        }
    }
    Ok(())
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
