//! qwm's fused attention operator for tract: the exported chain
//! `Einsum(q, k) -> Mul(scale) -> [Where(mask)] -> Softmax -> Einsum(., v)` becomes one operator
//! running [`crate::kernels::attention`].
//!
//! Why: tract 0.23 runs the chain as separate passes over the whole `[batch, heads, n, m]` score
//! tensor, with transposes around its batched products. On the full-size predictor at batch 16
//! that was about 730 ms of both the float call (1950 ms) and the int8 call (1150 ms): the
//! largest single cost once the linear layers ran on int8, and what kept tract's int8 predictor
//! under 2x float. Fused, each head's scores stay in L2.
//!
//! The fusion is a rewrite of the graph's protobuf before tract imports it
//! ([`fuse_attention`]), like [`crate::engine::tract::int8`]'s: a chain is fused only when every tensor
//! between its nodes has one consumer, the equations are `bnhd,bmhd->bhnm` and `bhnm,bmhd->bnhd`
//! (any letters in those roles: PyTorch's export of `einsum` attention, DINOv2's and DINO-WM's
//! alike), the scale and the fill value are provably single numbers (initializers, constants,
//! or arithmetic on them and on single dimensions of a shape), and the softmax is along the last
//! axis. The mask itself may be any tensor that broadcasts to the scores; it is read at each
//! call. `QWM_TRACT_ATTENTION=off` ([`crate::engine::Tuning`]) turns the fusion off (tract's own operators), for
//! comparisons.

use crate::kernels::attention::{self, Dims, Mask};
use crate::onnx::index::{find_attention_chains, splice};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

/// Operator type of a fused chain in the rewritten protobuf.
pub const OP_TYPE: &str = "QwmAttention";

/// Route fused chains ([`OP_TYPE`] nodes) of graphs imported by `onnx` to [`Attention`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(OP_TYPE, parse);
}

/// [`fuse_attention`] on a model's graph ([`crate::engine::Tuning`] decides whether it runs); how many chains it fused.
pub fn fuse_model(m: &mut tract_onnx::pb::ModelProto) -> usize {
    let opset = crate::onnx::index::default_opset(m);
    match m.graph.as_mut() {
        Some(g) => fuse_attention(g, opset),
        _ => 0,
    }
}

/// Rewrite every attention chain of `g` ([`find_attention_chains`]) into one [`OP_TYPE`] node
/// with inputs `(q, k, v, scale)` or `(q, k, v, scale, cond, fill)` and the attribute `fill_when`
/// (1: fill where `cond` is true). `opset` is the model's default-domain opset. Returns how many
/// chains were fused.
pub fn fuse_attention(g: &mut GraphProto, opset: i64) -> usize {
    let chains = find_attention_chains(g, opset);
    let mut edits = vec![];
    let mut drop = vec![];
    for c in &chains {
        let &last = c.nodes.last().expect("a chain has nodes");
        let e2 = &g.node[last];
        let node = NodeProto {
            input: c.inputs.clone(),
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
        edits.push((last, vec![node]));
        drop.extend_from_slice(&c.nodes[..c.nodes.len() - 1]);
    }
    splice(g, edits, &drop);
    chains.len()
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
    use crate::onnx::proto::f32_tensor;
    use tract_onnx::pb::{tensor_proto::DataType, ModelProto, ValueInfoProto};

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        crate::onnx::proto::node(op, &format!("n_{output}"), inputs, &[output], vec![])
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

    fn vi(name: &str, dims: &[i64], dt: DataType) -> ValueInfoProto {
        crate::onnx::proto::value_info(name, dt, dims)
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
                    f32_tensor("scale", &[], &[1.0 / (d as f32).sqrt()]),
                    f32_tensor("fill", &[], &[f32::NEG_INFINITY]),
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
                g.initializer[0] = f32_tensor("scale", &[1, 3, 1, 1], &[0.5; 3]);
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
