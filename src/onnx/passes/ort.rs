//! Graph rewrites that hand ONNX Runtime its own fused CPU kernels (com.microsoft contrib ops) for
//! what qwm's graphs spell out in standard operators. Applied to the graph's structure when it is
//! loaded (`crate::engine::ort`, with the `ort` feature); the bundle's files stay standard ONNX.
//!
//! - The deploy form's int8 layer `MatMulInteger -> Cast(float) -> Mul(scale) [-> Add(bias)]`
//!   becomes `MatMulIntegerToFloat(a, w, 1, scale, a_zero, w_zero [, bias])`: the same integer
//!   product, rescaled and biased as it is written instead of in three more passes over the
//!   activations. `QuantizeLinear` before it stays.
//! - The exported attention chain ([`find_attention_chains`]) becomes `MultiHeadAttention` on
//!   `[batch, tokens, heads x dim]` views of q, k and v, with the mask as an additive bias
//!   (`-inf` where the chain fills `-inf`).
//!
//! Why: on the full-size predictor at batch 16, ONNX Runtime spent about 400 ms of a 940 ms int8
//! call in `Einsum`, `Where` and `Softmax`, and 95 ms in the `Cast` and `Mul` after its integer
//! products (its own optimizer fuses neither pattern). Rewritten, the call took 753 ms against
//! 984 ms. Against the unrewritten graphs, the predictors' outputs (full-size and shipped) are
//! bit-identical (same MLAS products and softmax) and the encoders' (no mask) within 5.1e-7 of
//! max |output|. Both rewrites apply to float and quantized graphs alike. `QWM_ORT_FUSE=off` ([`crate::engine::Tuning`])
//! turns them off, for comparisons.
//!
//! An attention chain is rewritten only when everything `MultiHeadAttention` needs is known from
//! the graph alone: the number of heads (a constant in the shape q is reshaped to), the scale (a
//! constant, or `head_dim^-0.5` computed from that same shape, which is the kernel's default),
//! and for a masked chain a fill of `-inf` and a condition whose rank (2 or 4) the graph fixes
//! (a constant, or element-wise operators and slices of one, as the exporters' frame-causal masks
//! are). Others stay as they are.

use crate::onnx::index::{find_attention_chains, splice, AttentionChain, GraphIndex};
use crate::onnx::proto::{attr_i, attr_ints, f32_tensor, i64_tensor, node, u8_tensor};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto,
};

/// What [`fuse_model`] rewrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fused {
    /// Integer products turned into `MatMulIntegerToFloat`.
    pub int8_linears: usize,
    /// Attention chains turned into `MultiHeadAttention`.
    pub attention: usize,
}

/// Both rewrites on a model (see the module docs).
pub fn fuse_model(m: &mut ModelProto) -> Fused {
    let opset = crate::onnx::index::default_opset(m);
    let Some(g) = m.graph.as_mut() else {
        return Fused::default();
    };
    let fused = Fused {
        int8_linears: fuse_int8_linears(g),
        attention: fuse_attention(g, opset),
    };
    if fused != Fused::default() && !m.opset_import.iter().any(|o| o.domain == "com.microsoft") {
        m.opset_import.push(OperatorSetIdProto {
            domain: "com.microsoft".into(),
            version: 1,
        });
    }
    fused
}

/// `MatMulInteger -> Cast(float) -> Mul(per-column or single scale) [-> Add(bias [N])]` into
/// `MatMulIntegerToFloat`. Returns how many were rewritten.
fn fuse_int8_linears(g: &mut GraphProto) -> usize {
    let ix = GraphIndex::new(g);
    let one = "qwm_ort_one";
    let mut edits = vec![];
    let mut drop = vec![];
    for (mi, mm) in g.node.iter().enumerate() {
        if mm.op_type != "MatMulInteger" || !mm.domain.is_empty() || mm.input.len() < 2 {
            continue;
        }
        let Some(n) = ix
            .initializer(&mm.input[1])
            .filter(|w| w.dims.len() == 2)
            .map(|w| w.dims[1])
        else {
            continue;
        };
        let Some(ci) = ix.sole_consumer(&mm.output[0]) else {
            continue;
        };
        let cast = &g.node[ci];
        let to_float = cast
            .attribute
            .iter()
            .any(|a| a.name == "to" && a.i == DataType::Float as i64);
        if cast.op_type != "Cast" || !to_float {
            continue;
        }
        let Some(ui) = ix.sole_consumer(&cast.output[0]) else {
            continue;
        };
        let mul = &g.node[ui];
        if mul.op_type != "Mul" || mul.input.len() != 2 {
            continue;
        }
        let scale = &mul.input[usize::from(mul.input[0] == cast.output[0])];
        let per_column = |name: &str| {
            ix.initializer(name).is_some_and(|t| {
                t.data_type == DataType::Float as i32
                    && (t.dims == [n] || t.dims.iter().product::<i64>() == 1 && t.dims.len() <= 1)
            })
        };
        if !per_column(scale) {
            continue;
        }
        let mut out = mul.output[0].clone();
        let mut bias = String::new();
        let mut last = ui;
        if let Some(ai) = ix.sole_consumer(&mul.output[0]) {
            let add = &g.node[ai];
            if add.op_type == "Add" && add.input.len() == 2 {
                let b = &add.input[usize::from(add.input[0] == mul.output[0])];
                if ix
                    .initializer(b)
                    .is_some_and(|t| t.data_type == DataType::Float as i32 && t.dims == [n])
                {
                    bias = b.clone();
                    out = add.output[0].clone();
                    last = ai;
                }
            }
        }
        let get = |i: usize| mm.input.get(i).cloned().unwrap_or_default();
        let mut inputs = vec![
            get(0),
            get(1),
            one.to_string(),
            scale.clone(),
            get(2),
            get(3),
            bias,
        ];
        while inputs.last().is_some_and(|s| s.is_empty()) {
            inputs.pop();
        }
        let fused = NodeProto {
            op_type: "MatMulIntegerToFloat".into(),
            domain: "com.microsoft".into(),
            name: format!("{}.qwm_ort", mm.name),
            input: inputs,
            output: vec![out],
            ..Default::default()
        };
        edits.push((last, vec![fused]));
        drop.extend([mi, ci, ui].into_iter().filter(|&i| i != last));
    }
    let count = edits.len();
    if count > 0 {
        splice(g, edits, &drop);
        g.initializer.push(f32_tensor(one, &[], &[1.0]));
    }
    count
}

/// Integer products with `int8` weights rewritten to `uint8` weights (`w + 128`, weight zero point
/// `+ 128`): `(a - za) (w - zw) = (a - za) ((w + 128) - (zw + 128))`, the same exact integers.
///
/// Why: without VNNI, ONNX Runtime's x86 kernel for `uint8 x int8` multiplies pairs with
/// `vpmaddubsw`, whose 16-bit sums saturate for full-range weights (255 x 127 x 2 > 32767), so
/// the deploy form's products come out wrong (measured 0.28 relative error on a 40-wide layer);
/// its `uint8 x uint8` kernel widens to 16 bits first and is exact. Applies to `MatMulInteger`
/// and `com.microsoft.MatMulIntegerToFloat` whose weights (and weight zero points, if any) are
/// `int8` initializers used by nothing else. `file` is the graph file that initializers stored as
/// external data point into (their `offset` / `length`), if any. Returns how many products it
/// rewrote.
pub fn unsigned_int8_weights(m: &mut ModelProto, file: Option<&[u8]>) -> usize {
    let Some(g) = m.graph.as_mut() else {
        return 0;
    };
    let ix = GraphIndex::new(g);
    let int8 = |name: &str| {
        ix.initializer(name)
            .filter(|t| t.data_type == DataType::Int8 as i32)
            .map(|t| (t.dims.clone(), int8_values(t, file)))
    };
    let mut plans = vec![];
    for (i, n) in g.node.iter().enumerate() {
        let product = (n.op_type == "MatMulInteger" && n.domain.is_empty())
            || (n.op_type == "MatMulIntegerToFloat" && n.domain == "com.microsoft");
        if !product || n.input.len() < 2 {
            continue;
        }
        let zero_at = if n.op_type == "MatMulInteger" { 3 } else { 5 };
        let sole_use = |name: &str| ix.uses(name) == 1;
        let Some((wd, Some(w))) = int8(&n.input[1]) else {
            continue;
        };
        if !sole_use(&n.input[1]) {
            continue;
        }
        let zero = match n.input.get(zero_at).filter(|z| !z.is_empty()) {
            None => None,
            Some(z) => match int8(z) {
                Some((zd, Some(v))) if sole_use(z) => Some((z.clone(), zd, v)),
                _ => continue,
            },
        };
        plans.push((i, zero_at, wd, w, zero));
    }
    let count = plans.len();
    for (i, zero_at, wd, w, zero) in plans {
        let n = &mut g.node[i];
        let shift = |v: &[i8]| {
            v.iter()
                .map(|x| (*x as i16 + 128) as u8)
                .collect::<Vec<u8>>()
        };
        let wname = format!("{}_qwm_u8", n.input[1]);
        g.initializer.push(u8_tensor(&wname, &wd, &shift(&w)));
        let (zname, zd, z) = match zero {
            Some((z, zd, v)) => (format!("{z}_qwm_u8"), zd, v),
            None => (format!("{}_qwm_u8_zero", n.input[1]), vec![], vec![0i8]),
        };
        g.initializer.push(u8_tensor(&zname, &zd, &shift(&z)));
        n.input[1] = wname;
        while n.input.len() <= zero_at {
            n.input.push(String::new());
        }
        n.input[zero_at] = zname;
    }
    // The int8 originals are unused now; drop them.
    let used: std::collections::HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    g.initializer
        .retain(|t| t.data_type != DataType::Int8 as i32 || used.contains(&t.name));
    count
}

/// The values of an `int8` tensor (raw bytes, `int32_data`, or external data in `file`); None
/// when they cannot be read or their count disagrees with the dims.
fn int8_values(t: &TensorProto, file: Option<&[u8]>) -> Option<Vec<i8>> {
    let len: i64 = t.dims.iter().product();
    let v: Vec<i8> = if !t.external_data.is_empty() {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .and_then(|e| e.value.parse::<usize>().ok())
        };
        let (offset, length) = (get("offset").unwrap_or(0), get("length")?);
        let bytes = file?.get(offset..offset.checked_add(length)?)?;
        bytes.iter().map(|b| *b as i8).collect()
    } else if !t.raw_data.is_empty() {
        t.raw_data.iter().map(|b| *b as i8).collect()
    } else {
        t.int32_data.iter().map(|x| *x as i8).collect()
    };
    (v.len() as i64 == len).then_some(v)
}

/// How one attention chain maps onto `MultiHeadAttention`, if it does.
struct MhaPlan {
    heads: i64,
    scale: Option<f32>,
    /// `(cond, cond rank, fill)` of a masked chain.
    mask: Option<(String, usize, String)>,
}

fn plan_mha(ix: &GraphIndex, c: &AttentionChain) -> Option<MhaPlan> {
    let (q, scale) = (&c.inputs[0], &c.inputs[3]);
    let reshape = ix.producer(q).filter(|p| p.op_type == "Reshape")?;
    let heads = ix.shape_element(&reshape.input[1], 2)?.ok()?;
    let scale = match ix.single_f32(scale) {
        Some(s) => Some(s),
        None => {
            // head_dim^-0.5 from the same tensor as q's last dimension: the kernel's default.
            let pow = ix.producer(scale).filter(|p| p.op_type == "Pow")?;
            if ix.single_f32(&pow.input[1]) != Some(-0.5) {
                return None;
            }
            let dim = match ix.shape_element(&reshape.input[1], 3)? {
                Ok(_) => return None,
                Err(piece) => piece,
            };
            if ix.through_casts(&pow.input[0]) != ix.through_casts(dim) {
                return None;
            }
            None
        }
    };
    let mask = if c.inputs.len() == 6 {
        let (cond, fill) = (&c.inputs[4], &c.inputs[5]);
        let fill_ok = ix.single_f32(fill) == Some(f32::NEG_INFINITY);
        let rank = ix.rank(cond)?;
        if !fill_ok || !(rank == 2 || rank == 4) {
            return None;
        }
        Some((cond.clone(), rank, fill.clone()))
    } else {
        None
    };
    Some(MhaPlan { heads, scale, mask })
}

/// Attention chains into `MultiHeadAttention` where [`plan_mha`] maps them. Returns how many.
fn fuse_attention(g: &mut GraphProto, opset: i64) -> usize {
    let chains = find_attention_chains(g, opset);
    let ix = GraphIndex::new(g);
    let mut edits = vec![];
    let mut drop = vec![];
    let mut inits = vec![];
    for (ci, c) in chains.iter().enumerate() {
        let Some(plan) = plan_mha(&ix, c) else {
            continue;
        };
        let p = format!("qwm_ort_mha{ci}");
        let t = |s: &str| format!("{p}_{s}");
        let flat = t("flat");
        inits.push(i64_tensor(&flat, &[3], &[0, 0, -1]));
        let mut nodes = vec![];
        let mut mha_in = vec![];
        for (x, name) in c.inputs[..3].iter().zip(["q", "k", "v"]) {
            nodes.push(node("Reshape", &t(name), &[x, &flat], &[&t(name)], vec![]));
            mha_in.push(t(name));
        }
        if let Some((cond, rank, fill)) = &plan.mask {
            let zero = t("zero");
            inits.push(f32_tensor(&zero, &[], &[0.0]));
            let (a, b) = if c.fill_when {
                (fill.as_str(), zero.as_str())
            } else {
                (zero.as_str(), fill.as_str())
            };
            let bias = t("bias");
            let bias2 = if *rank == 2 { t("bias2") } else { bias.clone() };
            nodes.push(node("Where", &bias2, &[cond, a, b], &[&bias2], vec![]));
            if *rank == 2 {
                if opset >= 13 {
                    let axes = t("axes");
                    inits.push(i64_tensor(&axes, &[2], &[0, 1]));
                    nodes.push(node("Unsqueeze", &bias, &[&bias2, &axes], &[&bias], vec![]));
                } else {
                    let attr = vec![attr_ints("axes", &[0, 1])];
                    nodes.push(node("Unsqueeze", &bias, &[&bias2], &[&bias], attr));
                }
            }
            // Inputs 3 (projection bias) and 4 (key padding mask) are absent.
            mha_in.extend([String::new(), String::new(), bias]);
        }
        let mut attrs = vec![attr_i("num_heads", plan.heads)];
        if let Some(s) = plan.scale {
            attrs.push(AttributeProto {
                name: "scale".into(),
                r#type: AttributeType::Float as i32,
                f: s,
                ..Default::default()
            });
        }
        let out = t("out");
        let mut mha = node(
            "MultiHeadAttention",
            &t("mha"),
            &mha_in.iter().map(String::as_str).collect::<Vec<_>>(),
            &[&out],
            attrs,
        );
        mha.domain = "com.microsoft".into();
        nodes.push(mha);
        let split = t("split");
        inits.push(i64_tensor(&split, &[4], &[0, 0, plan.heads, -1]));
        nodes.push(node(
            "Reshape",
            &t("unflat"),
            &[&out, &split],
            &[c.output(g)],
            vec![],
        ));
        let &last = c.nodes.last().expect("a chain has nodes");
        edits.push((last, nodes));
        drop.extend_from_slice(&c.nodes[..c.nodes.len() - 1]);
    }
    let count = edits.len();
    splice(g, edits, &drop);
    g.initializer.extend(inits);
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::i8_tensor;

    fn ops(g: &GraphProto) -> Vec<&str> {
        g.node.iter().map(|n| n.op_type.as_str()).collect()
    }

    /// `x -> QuantizeLinear -> MatMulInteger -> Cast -> Mul(scale [4]) -> Add(bias [4]) -> y`.
    fn int8_layer() -> GraphProto {
        GraphProto {
            node: vec![
                node("QuantizeLinear", "q", &["x", "s", "z"], &["xq"], vec![]),
                node(
                    "MatMulInteger",
                    "mm",
                    &["xq", "w", "z", "wz"],
                    &["acc"],
                    vec![],
                ),
                node("Cast", "c", &["acc"], &["accf"], vec![attr_i("to", 1)]),
                node("Mul", "m", &["accf", "scale"], &["h"], vec![]),
                node("Add", "a", &["bias", "h"], &["y"], vec![]),
            ],
            initializer: vec![
                i8_tensor("w", &[3, 4], &[1; 12]),
                f32_tensor("scale", &[4], &[0.1; 4]),
                f32_tensor("bias", &[4], &[0.5; 4]),
            ],
            ..Default::default()
        }
    }

    /// The chain becomes one `MatMulIntegerToFloat` with the bias, after the quantize.
    #[test]
    fn int8_layers_become_matmul_integer_to_float() {
        let mut g = int8_layer();
        assert_eq!(fuse_int8_linears(&mut g), 1);
        assert_eq!(ops(&g), ["QuantizeLinear", "MatMulIntegerToFloat"]);
        let f = &g.node[1];
        assert_eq!(f.domain, "com.microsoft");
        assert_eq!(
            f.input,
            ["xq", "w", "qwm_ort_one", "scale", "z", "wz", "bias"]
        );
        assert_eq!(f.output, ["y"]);
        // A scale that is not one per column, or a Cast to another type, is left alone.
        let mut g = int8_layer();
        g.initializer[1] = f32_tensor("scale", &[2], &[0.1; 2]);
        assert_eq!(fuse_int8_linears(&mut g), 0);
        let mut g = int8_layer();
        g.node[2].attribute[0].i = DataType::Double as i64;
        assert_eq!(fuse_int8_linears(&mut g), 0);
        assert_eq!(g.node.len(), 5);
    }

    /// Signed weights become unsigned ones with the same integer products: every code and the
    /// zero point move by 128, for both product operators; other weights are left alone.
    #[test]
    fn int8_weights_become_uint8_with_the_same_products() {
        let codes: Vec<i8> = vec![-128, -1, 0, 1, 127, 5, -7, 9, 100, -100, 3, -3];
        let mut g = int8_layer();
        g.initializer[0] = i8_tensor("w", &[3, 4], &codes);
        g.initializer.push(i8_tensor("wz", &[], &[2]));
        for fuse in [false, true] {
            let mut m = ModelProto {
                graph: Some(g.clone()),
                ..Default::default()
            };
            if fuse {
                assert_eq!(fuse_int8_linears(m.graph.as_mut().unwrap()), 1);
            }
            assert_eq!(unsigned_int8_weights(&mut m, None), 1);
            let g = m.graph.as_ref().unwrap();
            let mm = &g.node[1];
            let zero_at = if fuse { 5 } else { 3 };
            let find = |name: &str| g.initializer.iter().find(|t| t.name == name).unwrap();
            let (w, z) = (find(&mm.input[1]), find(&mm.input[zero_at]));
            assert_eq!(w.data_type, DataType::Uint8 as i32);
            assert_eq!(z.data_type, DataType::Uint8 as i32);
            for (u, s) in w.raw_data.iter().zip(&codes) {
                // (a - za)(u - uz) == (a - za)(s - sz) for any a: the differences agree.
                assert_eq!(*u as i32 - z.raw_data[0] as i32, *s as i32 - 2);
            }
            assert!(g
                .initializer
                .iter()
                .all(|t| t.name != "w" && t.name != "wz"));
        }
        // No weight zero point: the unsigned one is 128.
        let mut m = ModelProto {
            graph: Some(int8_layer()),
            ..Default::default()
        };
        m.graph.as_mut().unwrap().node[1].input.truncate(3);
        assert_eq!(unsigned_int8_weights(&mut m, None), 1);
        let g = m.graph.as_ref().unwrap();
        let z = g
            .initializer
            .iter()
            .find(|t| t.name == g.node[1].input[3])
            .unwrap();
        assert_eq!(z.raw_data, [128]);
        // Weights that are not an int8 initializer stay as they are.
        let mut m = ModelProto {
            graph: Some(int8_layer()),
            ..Default::default()
        };
        m.graph.as_mut().unwrap().initializer[0] = f32_tensor("w", &[3, 4], &[1.0; 12]);
        assert_eq!(unsigned_int8_weights(&mut m, None), 0);
    }
}
