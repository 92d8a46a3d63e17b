//! The simulate form's graph rewrites: a float weight replaced by its quantized codes and a
//! DequantizeLinear (per channel or per group), an activation wrapped in Quantize/Dequantize
//! (static or per token), and channel scales migrated between a Linear's input and its weight
//! (SmoothQuant, AWQ).

use super::weights::QuantWeight;
use crate::error::{QwmError, Result};
use crate::onnx::proto::*;
use tract_onnx::pb::{self, tensor_proto::DataType, ModelProto, NodeProto};

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
