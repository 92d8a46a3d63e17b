//! qwm's fused attention operator for tract: the exported chain
//! `Einsum(q, k) -> Mul(scale) -> [Where(mask)] -> Softmax -> Einsum(., v)` becomes one operator
//! running [`super::attention`].
//!
//! Why: tract 0.23 runs the chain as separate passes over the whole `[batch, heads, n, m]` score
//! tensor, with transposes around its batched products. On the full-size predictor at batch 16
//! that was about 730 ms of both the float call (1950 ms) and the int8 call (1150 ms): the
//! largest single cost once the linear layers ran on int8, and what kept tract's int8 predictor
//! under 2x float (issue 8). Fused, each head's scores stay in L2.
//!
//! The fusion is a rewrite of the graph's protobuf before tract imports it
//! ([`fuse_attention`]), like [`super::tract_int8`]'s: a chain is fused only when every tensor
//! between its nodes has one consumer, the equations are `bnhd,bmhd->bhnm` and `bhnm,bmhd->bnhd`
//! (any letters in those roles: PyTorch's export of `einsum` attention, DINOv2's and DINO-WM's
//! alike), the scale and the fill value are provably single numbers (initializers, constants,
//! or arithmetic on them and on single dimensions of a shape), and the softmax is along the last
//! axis. The mask itself may be any tensor that broadcasts to the scores; it is read at each
//! call. `QWM_TRACT_ATTENTION=tract` turns the fusion off (tract's own operators), for
//! comparisons.

use super::attention::{self, Dims, Mask};
use std::collections::HashMap;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

/// Operator type of a fused chain in the rewritten protobuf.
pub const OP_TYPE: &str = "QwmAttention";

/// Route fused chains ([`OP_TYPE`] nodes) of graphs imported by `onnx` to [`Attention`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(OP_TYPE, parse);
}

/// Whether fusion is on (`QWM_TRACT_ATTENTION` is not `tract`).
pub fn enabled() -> bool {
    std::env::var("QWM_TRACT_ATTENTION").as_deref() != Ok("tract")
}

/// [`fuse_attention`] on a model's graph when fusion is [`enabled`]; how many chains it fused.
pub fn fuse_model(m: &mut tract_onnx::pb::ModelProto) -> usize {
    let opset = m
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    match m.graph.as_mut() {
        Some(g) if enabled() => fuse_attention(g, opset),
        _ => 0,
    }
}

/// The four single-letter axis labels of each term of an `Einsum` equation `a,b->c`.
fn einsum_terms(node: &NodeProto) -> Option<[[u8; 4]; 3]> {
    let eq = node.attribute.iter().find(|a| a.name == "equation")?;
    let eq: Vec<u8> =
        eq.s.iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
    let eq = std::str::from_utf8(&eq).ok()?;
    let (lhs, out) = eq.split_once("->")?;
    let (a, b) = lhs.split_once(',')?;
    let term = |s: &str| -> Option<[u8; 4]> {
        let t: [u8; 4] = s.as_bytes().try_into().ok()?;
        let distinct = (0..4).all(|i| (i + 1..4).all(|j| t[i] != t[j]));
        (t.iter().all(u8::is_ascii_alphabetic) && distinct).then_some(t)
    };
    Some([term(a)?, term(b)?, term(out)?])
}

/// `q [b n h d], k [b m h d] -> scores [b h n m]`.
fn is_scores_product(node: &NodeProto) -> bool {
    let Some([[b, n, h, d], k, o]) = einsum_terms(node) else {
        return false;
    };
    let m = k[1];
    ![b, n, h, d].contains(&m) && k == [b, m, h, d] && o == [b, h, n, m]
}

/// `weights [b h n m], v [b m h e] -> out [b n h e]`.
fn is_values_product(node: &NodeProto) -> bool {
    let Some([[b, h, n, m], v, o]) = einsum_terms(node) else {
        return false;
    };
    let e = v[3];
    ![b, h, n, m].contains(&e) && v == [b, m, h, e] && o == [b, n, h, e]
}

/// Rewrite every fusable attention chain of `g` (see the module docs) into one [`OP_TYPE`] node
/// with inputs `(q, k, v, scale)` or `(q, k, v, scale, cond, fill)` and the attribute `fill_when`
/// (1: fill where `cond` is true). `opset` is the model's default-domain opset (Softmax's axis
/// defaults to the last one from 13). Returns how many chains were fused.
pub fn fuse_attention(g: &mut GraphProto, opset: i64) -> usize {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    for o in &g.output {
        *uses.entry(o.name.as_str()).or_default() += 1;
    }
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for inp in &n.input {
            consumers.entry(inp.as_str()).or_default().push(i);
        }
    }
    let sole_consumer = |name: &str| -> Option<usize> {
        (uses.get(name) == Some(&1)).then(|| consumers.get(name).map(|c| c[0]))?
    };
    let single = Single {
        g,
        producer: &producer,
    };
    let plain = |n: &NodeProto, op: &str| n.op_type == op && n.domain.is_empty();
    // (scores product, scale Mul, Where if any, Softmax, values product) and what the fused
    // node needs from them.
    struct Chain {
        nodes: Vec<usize>,
        inputs: Vec<String>,
        fill_when: bool,
    }
    let mut chains = vec![];
    for (ei, e1) in g.node.iter().enumerate() {
        if !plain(e1, "Einsum") || e1.input.len() != 2 || !is_scores_product(e1) {
            continue;
        }
        let Some(mi) = sole_consumer(&e1.output[0]) else {
            continue;
        };
        let mul = &g.node[mi];
        if !plain(mul, "Mul") || mul.input.len() != 2 {
            continue;
        }
        let scale = if mul.input[0] == e1.output[0] {
            &mul.input[1]
        } else {
            &mul.input[0]
        };
        if !single.is_single(scale, 0) {
            continue;
        }
        let Some(mut next) = sole_consumer(&mul.output[0]) else {
            continue;
        };
        let mut nodes = vec![ei, mi];
        let mut inputs = vec![
            e1.input[0].clone(),
            e1.input[1].clone(),
            String::new(),
            scale.clone(),
        ];
        let mut fill_when = true;
        let w = &g.node[next];
        if plain(w, "Where") && w.input.len() == 3 {
            let (fill, when) = if w.input[2] == mul.output[0] {
                (&w.input[1], true)
            } else if w.input[1] == mul.output[0] {
                (&w.input[2], false)
            } else {
                continue;
            };
            if !single.is_single(fill, 0) || w.input[0] == mul.output[0] {
                continue;
            }
            inputs.push(w.input[0].clone());
            inputs.push(fill.clone());
            fill_when = when;
            nodes.push(next);
            let Some(n) = sole_consumer(&w.output[0]) else {
                continue;
            };
            next = n;
        }
        let sm = &g.node[next];
        let axis = sm.attribute.iter().find(|a| a.name == "axis").map(|a| a.i);
        let last_axis = match axis {
            Some(a) => a == -1 || a == 3,
            None => opset >= 13,
        };
        if !plain(sm, "Softmax") || !last_axis {
            continue;
        }
        nodes.push(next);
        let Some(e2i) = sole_consumer(&sm.output[0]) else {
            continue;
        };
        let e2 = &g.node[e2i];
        if !plain(e2, "Einsum")
            || e2.input.len() != 2
            || e2.input[0] != sm.output[0]
            || !is_values_product(e2)
        {
            continue;
        }
        inputs[2] = e2.input[1].clone();
        nodes.push(e2i);
        chains.push(Chain {
            nodes,
            inputs,
            fill_when,
        });
    }
    let fused = chains.len();
    let mut drop = vec![false; g.node.len()];
    for c in chains {
        let &last = c.nodes.last().expect("a chain has nodes");
        let e2 = &g.node[last];
        let node = NodeProto {
            input: c.inputs,
            output: e2.output.clone(),
            name: format!("{}.qwm_attention", e2.name),
            op_type: OP_TYPE.into(),
            domain: String::new(),
            attribute: vec![AttributeProto {
                name: "fill_when".into(),
                r#type: AttributeType::Int as i32,
                i: c.fill_when as i64,
                ..Default::default()
            }],
            doc_string: String::new(),
        };
        // The fused node takes the last product's place: every input it reads is produced
        // before that, everything it feeds comes after.
        g.node[last] = node;
        for &i in &c.nodes[..c.nodes.len() - 1] {
            drop[i] = true;
        }
    }
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !drop[i - 1]
    });
    fused
}

/// Which tensors of a graph provably hold one number.
struct Single<'a> {
    g: &'a GraphProto,
    producer: &'a HashMap<&'a str, usize>,
}

impl Single<'_> {
    /// One element, at most rank 4 (so it broadcasts into the scores without changing their
    /// shape): an initializer or `Constant`, elementwise arithmetic on such tensors, or one
    /// dimension picked out of a `Shape`.
    fn is_single(&self, name: &str, depth: usize) -> bool {
        let one = |dims: &[i64]| dims.len() <= 4 && dims.iter().product::<i64>() == 1;
        if depth > 32 {
            return false;
        }
        if let Some(t) = self.g.initializer.iter().find(|t| t.name == name) {
            return one(&t.dims);
        }
        let Some(&pi) = self.producer.get(name) else {
            return false;
        };
        let p = &self.g.node[pi];
        if !p.domain.is_empty() {
            return false;
        }
        match p.op_type.as_str() {
            "Constant" => p.attribute.iter().any(|a| match a.name.as_str() {
                "value" => a.t.as_ref().is_some_and(|t| one(&t.dims)),
                "value_float" | "value_int" => true,
                _ => false,
            }),
            "Cast" | "Pow" | "Sqrt" | "Reciprocal" | "Div" | "Mul" | "Add" | "Sub" | "Neg"
            | "Identity" => p.input.iter().all(|i| self.is_single(i, depth + 1)),
            // A scalar index into a shape (rank 1) gives a scalar.
            "Gather" => {
                p.input.len() == 2
                    && self
                        .producer
                        .get(p.input[0].as_str())
                        .is_some_and(|&s| self.g.node[s].op_type == "Shape")
                    && self.is_rank0_constant(&p.input[1])
            }
            _ => false,
        }
    }

    fn is_rank0_constant(&self, name: &str) -> bool {
        if let Some(t) = self.g.initializer.iter().find(|t| t.name == name) {
            return t.dims.is_empty();
        }
        self.producer.get(name).is_some_and(|&pi| {
            let p = &self.g.node[pi];
            p.op_type == "Constant"
                && p.attribute.iter().any(|a| match a.name.as_str() {
                    "value" => a.t.as_ref().is_some_and(|t| t.dims.is_empty()),
                    "value_int" => true,
                    _ => false,
                })
        })
    }
}

fn parse(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!(
        node.input.len() == 4 || node.input.len() == 6,
        "{OP_TYPE} '{}': expected 4 or 6 inputs, got {}",
        node.name,
        node.input.len()
    );
    let fill_when = node
        .attribute
        .iter()
        .find(|a| a.name == "fill_when")
        .is_none_or(|a| a.i != 0);
    Ok((expand(AttentionExpansion { fill_when }), vec![]))
}

#[derive(Debug, Clone)]
struct AttentionExpansion {
    fill_when: bool,
}

impl Expansion for AttentionExpansion {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if inputs.len() != 4 && inputs.len() != 6 {
            bail!("{OP_TYPE}: expected 4 or 6 inputs, got {}", inputs.len());
        }
        check_output_arity(outputs, 1)?;
        for t in &inputs[..3] {
            s.equals(&t.datum_type, f32::datum_type())?;
            s.equals(&t.rank, 4)?;
        }
        s.equals(&inputs[3].datum_type, f32::datum_type())?;
        if inputs.len() == 6 {
            s.equals(&inputs[4].datum_type, bool::datum_type())?;
            s.equals(&inputs[5].datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].rank, 4)?;
        for ax in 0..3 {
            s.equals(&outputs[0].shape[ax], &inputs[0].shape[ax])?;
        }
        s.equals(&outputs[0].shape[3], &inputs[2].shape[3])?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let op = Attention {
            fill_when: self.fill_when,
        };
        model.wire_node(format!("{prefix}.attention"), op, inputs)
    }
}

/// `softmax(mask(scale * Q K^T)) V` per batch item and head on [`attention::attention`].
/// Inputs: `q [b, n, h, d]`, `k [b, m, h, d]`, `v [b, m, h, e]`, the scale (one number) and,
/// when masked, the condition (bool, broadcast to `[b, h, n, m]`) and the fill value; output
/// `[b, n, h, e]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attention {
    /// Fill where the condition is true (else where it is false).
    pub fill_when: bool,
}

/// The one f32 value of a tensor that must hold one.
fn single_f32(t: &Tensor, what: &str) -> TractResult<f32> {
    ensure!(
        t.len() == 1,
        "{OP_TYPE}: the {what} must be one number, got shape {:?}",
        t.shape()
    );
    t.cast_to_scalar::<f32>()
}

/// Element strides that broadcast a row-major tensor of `shape` to `target` (0 along broadcast
/// axes), or `None` if it does not broadcast.
fn broadcast_strides(shape: &[usize], target: [usize; 4]) -> Option<[usize; 4]> {
    if shape.len() > 4 {
        return None;
    }
    let mut full = [1usize; 4];
    full[4 - shape.len()..].copy_from_slice(shape);
    let mut strides = [0usize; 4];
    let mut step = 1;
    for ax in (0..4).rev() {
        if full[ax] == target[ax] && full[ax] != 1 {
            strides[ax] = step;
        } else if full[ax] != 1 {
            return None;
        }
        step *= full[ax];
    }
    Some(strides)
}

impl Op for Attention {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "fill where the mask is {} (matrixmultiply products, fused softmax)",
            self.fill_when
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.run(inputs)
    }
}

impl Attention {
    /// The operator on its input values.
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 4 || inputs.len() == 6,
            "{OP_TYPE}: expected 4 or 6 inputs, got {}",
            inputs.len()
        );
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        ensure!(
            qs.len() == 4
                && ks.len() == 4
                && vs.len() == 4
                && ks[0] == qs[0]
                && vs[0] == qs[0]
                && ks[2] == qs[2]
                && vs[2] == qs[2]
                && ks[3] == qs[3]
                && vs[1] == ks[1],
            "{OP_TYPE}: q {qs:?}, k {ks:?} and v {vs:?} are not [b, n, h, d], [b, m, h, d], \
             [b, m, h, e]"
        );
        let dims = Dims {
            batch: qs[0],
            queries: qs[1],
            keys: ks[1],
            heads: qs[2],
            head_dim: qs[3],
            value_dim: vs[3],
        };
        let scale = single_f32(&inputs[3], "scale")?;
        let mut out = unsafe {
            // SAFETY: `attention` writes every element.
            Tensor::uninitialized::<f32>(&[dims.batch, dims.queries, dims.heads, dims.value_dim])?
        };
        {
            let (q, k, v) = (
                q.try_as_plain_ram()?,
                k.try_as_plain_ram()?,
                v.try_as_plain_ram()?,
            );
            let mut out_ram = out.try_as_plain_ram_mut()?;
            let (q, k, v, o) = (
                q.as_slice::<f32>()?,
                k.as_slice::<f32>()?,
                v.as_slice::<f32>()?,
                out_ram.as_slice_mut::<f32>()?,
            );
            if inputs.len() == 6 {
                let cond = &inputs[4];
                let target = [dims.batch, dims.heads, dims.queries, dims.keys];
                let strides = broadcast_strides(cond.shape(), target).with_context(|| {
                    format!(
                        "{OP_TYPE}: mask of shape {:?} does not broadcast to the scores {target:?}",
                        cond.shape()
                    )
                })?;
                let fill = single_f32(&inputs[5], "fill value")?;
                let cond_ram = cond.try_as_plain_ram()?;
                let mask = Mask {
                    cond: cond_ram.as_slice::<bool>()?,
                    strides,
                    fill,
                    fill_when: self.fill_when,
                };
                attention::attention(q, k, v, dims, scale, Some(&mask), o);
            } else {
                attention::attention(q, k, v, dims, scale, None, o);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 4 || inputs.len() == 6,
            "{OP_TYPE}: expected 4 or 6 inputs"
        );
        for (t, what) in inputs[..3].iter().zip(["q", "k", "v"]) {
            ensure!(
                t.datum_type == f32::datum_type() && t.rank() == 4,
                "{OP_TYPE}: {what} must be an f32 tensor of rank 4, got {t:?}"
            );
        }
        let (q, v) = (&inputs[0].shape, &inputs[2].shape);
        Ok(tvec!(f32::fact([
            q[0].clone(),
            q[1].clone(),
            q[2].clone(),
            v[3].clone()
        ])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{tensor_proto::DataType, ModelProto, TensorProto, ValueInfoProto};

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: format!("n_{output}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn with_attr(mut n: NodeProto, a: AttributeProto) -> NodeProto {
        n.attribute.push(a);
        n
    }

    fn einsum(inputs: &[&str], output: &str, eq: &str) -> NodeProto {
        with_attr(
            node("Einsum", inputs, output),
            AttributeProto {
                name: "equation".into(),
                r#type: AttributeType::String as i32,
                s: eq.as_bytes().to_vec(),
                ..Default::default()
            },
        )
    }

    fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    fn vi(name: &str, dims: &[i64], dt: DataType) -> ValueInfoProto {
        use tract_onnx::pb::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto};
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: dt as i32,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| tensor_shape_proto::Dimension {
                                value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
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

    /// `q, k, v [b, n, h, d]` (and `cond [n, n]` when masked) through the exporters' attention
    /// chain to `y`, with `x` (= q) also read by an Add so that the inputs have other consumers.
    fn chain(b: i64, n: i64, h: i64, d: i64, masked: bool) -> ModelProto {
        let mut nodes = vec![
            einsum(&["q", "k"], "s", "bnhd,bmhd->bhnm"),
            node("Mul", &["s", "scale"], "ss"),
        ];
        let mut sm_in = "ss";
        if masked {
            nodes.push(node("Where", &["cond", "fill", "ss"], "sw"));
            sm_in = "sw";
        }
        nodes.push(with_attr(
            node("Softmax", &[sm_in], "p"),
            AttributeProto {
                name: "axis".into(),
                r#type: AttributeType::Int as i32,
                i: -1,
                ..Default::default()
            },
        ));
        nodes.push(einsum(&["p", "v"], "y", "bhnm,bmhd->bnhd"));
        let mut inputs = vec![
            vi("q", &[b, n, h, d], DataType::Float),
            vi("k", &[b, n, h, d], DataType::Float),
            vi("v", &[b, n, h, d], DataType::Float),
        ];
        if masked {
            inputs.push(vi("cond", &[n, n], DataType::Bool));
        }
        ModelProto {
            opset_import: vec![tract_onnx::pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: nodes,
                initializer: vec![
                    f32_init("scale", &[], &[1.0 / (d as f32).sqrt()]),
                    f32_init("fill", &[], &[f32::NEG_INFINITY]),
                ],
                input: inputs,
                output: vec![vi("y", &[b, n, h, d], DataType::Float)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ops(g: &GraphProto) -> Vec<&str> {
        g.node.iter().map(|n| n.op_type.as_str()).collect()
    }

    /// Masked and unmasked chains become one node in the last product's place, reading the
    /// chain's own inputs.
    #[test]
    fn the_chain_is_fused_in_place() {
        let mut m = chain(2, 5, 3, 4, true);
        let g = m.graph.as_mut().unwrap();
        assert_eq!(fuse_attention(g, 17), 1);
        assert_eq!(ops(g), [OP_TYPE]);
        assert_eq!(g.node[0].input, ["q", "k", "v", "scale", "cond", "fill"]);
        assert_eq!(g.node[0].output, ["y"]);
        assert_eq!(g.node[0].attribute[0].i, 1);
        let mut m = chain(2, 5, 3, 4, false);
        let g = m.graph.as_mut().unwrap();
        assert_eq!(fuse_attention(g, 17), 1);
        assert_eq!(g.node[0].input, ["q", "k", "v", "scale"]);
    }

    /// Chains that compute something else are left to tract.
    #[test]
    fn chains_that_do_not_fit_are_left_alone() {
        type Change = fn(&mut GraphProto);
        let cases: [(&str, Change); 6] = [
            ("scores are also a graph output", |g| {
                g.output.push(vi("s", &[], DataType::Float))
            }),
            ("softmax over another axis", |g| {
                g.node[3].attribute[0].i = 2;
            }),
            ("keys not contracted", |g| {
                g.node[0].attribute[0].s = b"bnhd,bmhd->bhnd".to_vec();
            }),
            ("values in another layout", |g| {
                g.node[4].attribute[0].s = b"bhnm,bhmd->bnhd".to_vec();
            }),
            ("a scale per head", |g| {
                g.initializer[0] = f32_init("scale", &[1, 3, 1, 1], &[0.5; 3]);
            }),
            ("a fill value from a graph input", |g| {
                g.initializer.remove(1);
                g.input.push(vi("fill", &[], DataType::Float));
            }),
        ];
        for (what, change) in cases {
            let mut m = chain(2, 5, 3, 4, true);
            let g = m.graph.as_mut().unwrap();
            change(g);
            assert_eq!(fuse_attention(g, 17), 0, "{what}");
            assert_eq!(g.node.len(), 5, "{what}");
        }
        // Before opset 13 Softmax without an axis is not along the last axis.
        let mut m = chain(2, 5, 3, 4, false);
        let g = m.graph.as_mut().unwrap();
        g.node[2].attribute.clear();
        assert_eq!(fuse_attention(g, 11), 0);
        assert_eq!(fuse_attention(g, 13), 1);
    }

    fn run(m: &ModelProto, inputs: TVec<TValue>) -> Tensor {
        let mut onnx = tract_onnx::onnx();
        register(&mut onnx);
        let model = onnx
            .model_for_proto_model(m)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        model.run(inputs).unwrap().remove(0).into_tensor()
    }

    /// Through tract, the fused operator gives what tract's own operators give for the same
    /// graph: masked (causal, -inf) and unmasked, within 1e-6 (outputs of order 1).
    #[test]
    fn fused_matches_tract_on_the_same_graph() {
        let (b, n, h, d) = (2usize, 11usize, 3usize, 8usize);
        let len = b * n * h * d;
        let val = |seed: usize| -> Tensor {
            let v: Vec<f32> = (0..len)
                .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0) * 2.0)
                .collect();
            Tensor::from_shape(&[b, n, h, d], &v).unwrap()
        };
        let cond: Vec<bool> = (0..n * n).map(|i| i % n > i / n).collect();
        let cond = Tensor::from_shape(&[n, n], &cond).unwrap();
        for masked in [false, true] {
            let plain = chain(b as i64, n as i64, h as i64, d as i64, masked);
            let mut fused = plain.clone();
            assert_eq!(fuse_attention(fused.graph.as_mut().unwrap(), 17), 1);
            let mut inputs: TVec<TValue> = tvec![val(1).into(), val(2).into(), val(3).into()];
            if masked {
                inputs.push(cond.clone().into());
            }
            let want = run(&plain, inputs.clone());
            let got = run(&fused, inputs);
            assert_eq!(got.shape(), want.shape());
            let (got, want) = (
                got.try_as_plain_ram().unwrap(),
                want.try_as_plain_ram().unwrap(),
            );
            let (g, w) = (
                got.as_slice::<f32>().unwrap(),
                want.as_slice::<f32>().unwrap(),
            );
            let err = g
                .iter()
                .zip(w)
                .map(|(a, b)| {
                    assert!(a.is_finite() && b.is_finite());
                    (a - b).abs()
                })
                .fold(0f32, f32::max);
            assert!(err < 1e-6, "masked {masked}: max abs err {err}");
        }
    }

    /// A mask that does not broadcast to the scores is an error naming the operator, not a panic.
    #[test]
    fn a_mask_of_the_wrong_shape_is_an_error() {
        let op = Attention { fill_when: true };
        let t = |shape: &[usize]| -> TValue { Tensor::zero::<f32>(shape).unwrap().into_tvalue() };
        let cond = Tensor::from_shape(&[3, 2], &[true; 6])
            .unwrap()
            .into_tvalue();
        let fill = Tensor::from(f32::NEG_INFINITY).into_tvalue();
        let scale = Tensor::from(1f32).into_tvalue();
        let e = op
            .run(tvec![
                t(&[1, 4, 2, 8]),
                t(&[1, 4, 2, 8]),
                t(&[1, 4, 2, 8]),
                scale,
                cond,
                fill
            ])
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("QwmAttention: mask of shape [3, 2]"),
            "{e:#}"
        );
        assert_eq!(broadcast_strides(&[4, 4], [1, 2, 4, 4]), Some([0, 0, 4, 1]));
        assert_eq!(
            broadcast_strides(&[2, 1, 1, 4], [2, 3, 4, 4]),
            Some([4, 0, 0, 1])
        );
        assert_eq!(broadcast_strides(&[1], [2, 3, 4, 4]), Some([0, 0, 0, 0]));
    }
}
