//! qwm's fused int8 linear layer for tract: the deploy form's chain
//! `QuantizeLinear -> MatMulInteger -> Cast -> Mul` becomes one operator that quantizes the
//! activations, multiplies them with the int8 weights in [`crate::kernels::int8_gemm`] and rescales on
//! registers.
//!
//! Why: tract 0.23 runs that chain as five passes over the activations (quantize, pack, integer
//! product with a zero-point correction, cast, multiply), each a separate tensor in memory. On the
//! full-size predictor at batch 16 the passes around its int8 product took 30% of the call, and
//! at the CEM batch (300 candidates) the int8 graph ran slower than the float one (0.91x).
//! Fused, the `u8` activations of a few hundred rows stay in L2 while every weight panel passes
//! them, and only the f32 result is written.
//!
//! The fusion is a rewrite of the graph's protobuf before tract imports it
//! ([`fuse_int8_linears`]): a chain is fused only when every tensor between its nodes has one
//! consumer, the weights are a constant 2-D `int8` initializer with a zero weight zero point, and
//! the activation scale and zero point are scalars shared by the quantize and the product. The
//! result is the chain's own arithmetic: the same `uint8` codes, the exact integer sum, one
//! conversion to f32 and one product with the chain's per-column scale.
//! `QWM_TRACT_INT8=off` ([`crate::engine::Tuning`]) turns the fusion off (tract's own lowering), for comparisons.

use super::linear::{konst, Int8Linear};
use crate::kernels::int8_gemm::{ActQuant, PackedWeights};
use crate::onnx::index::scalar_value;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{tensor_proto::DataType, GraphProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

/// Operator type of a fused chain in the rewritten protobuf.
pub const OP_TYPE: &str = "QwmInt8Linear";

/// Route fused chains ([`OP_TYPE`] nodes) of graphs imported by `onnx` to [`Int8Linear`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(OP_TYPE, parse);
}

/// [`fuse_int8_linears`] on a model's graph ([`crate::engine::Tuning`] decides whether it runs); how many chains it fused.
pub fn fuse_model(m: &mut tract_onnx::pb::ModelProto) -> usize {
    match m.graph.as_mut() {
        Some(g) => fuse_int8_linears(g),
        _ => 0,
    }
}

/// Rewrite every fusable `QuantizeLinear -> MatMulInteger -> Cast(float) -> Mul [-> Add(bias)]`
/// chain of `g` into one [`OP_TYPE`] node with inputs `(x, a_scale, a_zero, w, scale[, bias])`
/// (the bias is taken when it is a constant f32 `[N]` and the Mul's only reader is the Add).
/// Returns how many chains were fused; `MatMulInteger` nodes that do not fit the pattern stay as
/// they are.
pub fn fuse_int8_linears(g: &mut GraphProto) -> usize {
    let ix = crate::onnx::index::GraphIndex::new(g);
    let consumer = |name: &str| ix.sole_consumer(name);
    let is_scalar = |name: &str, dt: DataType| {
        ix.initializer(name)
            .is_some_and(|t| t.data_type == dt as i32 && scalar_value(t).is_some())
    };
    // (quantize, matmul, cast, mul) node indices of each chain.
    let mut chains = vec![];
    for (mi, mm) in g.node.iter().enumerate() {
        if mm.op_type != "MatMulInteger" || !mm.domain.is_empty() || mm.input.len() != 4 {
            continue;
        }
        let Some(qi) = ix.producer_index(&mm.input[0]) else {
            continue;
        };
        let q = &g.node[qi];
        let q_ok = q.op_type == "QuantizeLinear"
            && q.input.len() == 3
            && q.attribute.iter().all(|a| a.name == "axis")
            && is_scalar(&q.input[1], DataType::Float)
            && is_scalar(&q.input[2], DataType::Uint8)
            && mm.input[2] == q.input[2]
            && ix.uses(&q.output[0]) == 1;
        let w_ok = ix
            .initializer(&mm.input[1])
            .is_some_and(|t| t.data_type == DataType::Int8 as i32 && t.dims.len() == 2)
            && is_scalar(&mm.input[3], DataType::Int8)
            && ix.initializer(&mm.input[3]).and_then(scalar_value) == Some(0.0);
        if !q_ok || !w_ok {
            continue;
        }
        let Some(ci) = consumer(&mm.output[0]) else {
            continue;
        };
        let cast = &g.node[ci];
        let cast_ok = cast.op_type == "Cast"
            && cast
                .attribute
                .iter()
                .any(|a| a.name == "to" && a.i == DataType::Float as i64);
        let Some(ui) = cast_ok.then(|| consumer(&cast.output[0])).flatten() else {
            continue;
        };
        let mul = &g.node[ui];
        let n = ix.initializer(&mm.input[1]).expect("checked above").dims[1];
        let scale_input = mul.input.iter().find(|i| **i != cast.output[0]);
        let mul_ok = mul.op_type == "Mul"
            && mul.input.len() == 2
            && scale_input.is_some_and(|s| {
                ix.initializer(s)
                    .is_some_and(|t| t.data_type == DataType::Float as i32 && t.dims == [n])
            });
        if !mul_ok {
            continue;
        }
        // A bias `Add` of a constant [N] f32 vector after the Mul joins the fused node.
        let bias = consumer(&mul.output[0]).filter(|&ai| {
            let add = &g.node[ai];
            add.op_type == "Add"
                && add.domain.is_empty()
                && add.input.len() == 2
                && add.input.iter().filter(|i| **i == mul.output[0]).count() == 1
                && add
                    .input
                    .iter()
                    .find(|i| **i != mul.output[0])
                    .and_then(|b| ix.initializer(b))
                    .is_some_and(|t| t.data_type == DataType::Float as i32 && t.dims == [n])
        });
        chains.push((qi, mi, ci, ui, bias));
    }
    let fused = chains.len();
    let mut edits = vec![];
    let mut drop = vec![];
    for &(qi, mi, ci, ui, bias) in &chains {
        let (q, mm, mul) = (&g.node[qi], &g.node[mi], &g.node[ui]);
        let scale = mul
            .input
            .iter()
            .find(|i| **i != g.node[ci].output[0])
            .expect("checked above")
            .clone();
        let mut input = vec![
            q.input[0].clone(),
            q.input[1].clone(),
            q.input[2].clone(),
            mm.input[1].clone(),
            scale,
        ];
        let mut output = mul.output.clone();
        let mut last = ui;
        if let Some(ai) = bias {
            let add = &g.node[ai];
            input.push(
                add.input
                    .iter()
                    .find(|i| **i != mul.output[0])
                    .expect("checked above")
                    .clone(),
            );
            output = add.output.clone();
            drop.push(ui);
            last = ai;
        }
        let node = NodeProto {
            input,
            output,
            name: format!("{}.qwm_int8", mm.name),
            op_type: OP_TYPE.into(),
            domain: String::new(),
            attribute: vec![],
            doc_string: String::new(),
        };
        // The fused node takes the last fused node's place: everything it feeds comes after it.
        edits.push((last, vec![node]));
        drop.extend([qi, mi, ci]);
    }
    crate::onnx::index::splice(g, edits, &drop);
    fused
}

fn parse(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!(
        node.input.len() == 5 || node.input.len() == 6,
        "{OP_TYPE} '{}': expected 5 or 6 inputs",
        node.name
    );
    Ok((expand(Int8LinearExpansion), vec![]))
}

#[derive(Debug, Clone)]
struct Int8LinearExpansion;

impl Expansion for Int8LinearExpansion {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if inputs.len() != 5 {
            check_input_arity(inputs, 6)?;
        }
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[3].rank, 2)?;
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            s.equals(&outputs[0].rank, rank as i64)?;
            for ax in 0..rank - 1 {
                s.equals(&outputs[0].shape[ax], &inputs[0].shape[ax])?;
            }
            s.equals(&outputs[0].shape[rank - 1], &inputs[3].shape[1])?;
            s.equals(&inputs[0].shape[rank - 1], &inputs[3].shape[0])
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let a_scale = konst(model, inputs[1], OP_TYPE, "the activation scale")?;
        let a_zero = konst(model, inputs[2], OP_TYPE, "the activation zero point")?;
        let w = konst(model, inputs[3], OP_TYPE, "the int8 weight")?;
        let scale = konst(model, inputs[4], OP_TYPE, "the output scale")?;
        let a_scale: f32 = a_scale.cast_to_scalar()?;
        let a_zero: u8 = *a_zero
            .try_as_plain_ram()?
            .as_slice::<u8>()
            .context("activation zero point must be uint8")?
            .first()
            .context("empty activation zero point")?;
        let (k, n) = (w.shape()[0], w.shape()[1]);
        let w_ram = w.try_as_plain_ram()?;
        let w: &[i8] = w_ram.as_slice().context("weights must be int8")?;
        let scale = scale.cast_to::<f32>()?;
        let scale_ram = scale.try_as_plain_ram()?;
        let scale: &[f32] = scale_ram.as_slice()?;
        ensure!(
            scale.len() == n,
            "{prefix}: {} output scales for N {n}",
            scale.len()
        );
        ensure!(
            a_scale.is_finite() && a_scale > 0.0,
            "{prefix}: activation scale {a_scale} must be positive"
        );
        let bias = match inputs.get(5) {
            None => None,
            Some(&b) => {
                let b = konst(model, b, OP_TYPE, "the bias")?
                    .cast_to::<f32>()?
                    .into_owned();
                let b_ram = b.try_as_plain_ram()?;
                let b: &[f32] = b_ram.as_slice()?;
                ensure!(b.len() == n, "{prefix}: {} bias values for N {n}", b.len());
                Some(Arc::new(b.to_vec()))
            }
        };
        let op = Int8Linear {
            weights: Arc::new(PackedWeights::from_i8(k, n, w, scale)),
            act: ActQuant::Static {
                scale: a_scale,
                zero: a_zero,
            },
            bias,
        };
        model.wire_node(format!("{prefix}.int8_linear"), op, &[inputs[0]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{f32_tensor, find_linears, i8_tensor};
    use crate::quant::deploy::lower_int8;
    use crate::quant::weights::{quantize_matrix, Observer};
    use tract_onnx::pb::{GraphProto, ModelProto, ValueInfoProto};

    /// `x [?, k] -> MatMul(W) -> Add(bias) -> y`, lowered to the deploy form's int8 chain.
    fn lowered(k: usize, n: usize) -> ModelProto {
        let w: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let vi = |name: &str| ValueInfoProto {
            name: name.into(),
            ..Default::default()
        };
        let mut m = ModelProto {
            graph: Some(GraphProto {
                node: vec![
                    NodeProto {
                        op_type: "MatMul".into(),
                        name: "fc/MatMul".into(),
                        input: vec!["x".into(), "W".into()],
                        output: vec!["h".into()],
                        ..Default::default()
                    },
                    NodeProto {
                        op_type: "Add".into(),
                        name: "fc/Add".into(),
                        input: vec!["h".into(), "bias".into()],
                        output: vec!["y".into()],
                        ..Default::default()
                    },
                ],
                initializer: vec![
                    f32_tensor("W", &[k as i64, n as i64], &w),
                    f32_tensor("bias", &[n as i64], &vec![0.5; n]),
                ],
                input: vec![vi("x")],
                output: vec![vi("y")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let layer = find_linears(&m).remove(0);
        let q = quantize_matrix(&w, k, n, 8, None, Observer::Rtn).unwrap();
        lower_int8(&mut m, &layer, &q, 0.02, 128.0).unwrap();
        m
    }

    fn ops(g: &GraphProto) -> Vec<&str> {
        g.node.iter().map(|n| n.op_type.as_str()).collect()
    }

    /// The deploy chain and its bias Add become one node in the Add's place, with the chain's
    /// own inputs and the Add's output.
    #[test]
    fn the_deploy_chain_is_fused_in_place() {
        let mut m = lowered(8, 5);
        let g = m.graph.as_mut().unwrap();
        assert_eq!(
            ops(g),
            ["QuantizeLinear", "MatMulInteger", "Cast", "Mul", "Add"]
        );
        let y = g.node[4].output.clone();
        assert_eq!(fuse_int8_linears(g), 1);
        assert_eq!(ops(g), [OP_TYPE]);
        let f = &g.node[0];
        assert_eq!(f.input[0], "x");
        assert_eq!(f.output, y);
        assert!(
            f.input[3].ends_with("w_q") && f.input[4].ends_with("scale") && f.input[5] == "bias",
            "{f:?}"
        );
    }

    /// A bias that is not a constant [N] vector stays a separate Add after the fused node.
    #[test]
    fn a_bias_that_is_not_a_constant_vector_stays() {
        let mut m = lowered(8, 5);
        let g = m.graph.as_mut().unwrap();
        g.initializer.retain(|t| t.name != "bias");
        g.initializer.push(f32_tensor("bias", &[1, 5], &[0.5; 5]));
        assert_eq!(fuse_int8_linears(g), 1);
        assert_eq!(ops(g), [OP_TYPE, "Add"]);
        assert_eq!(g.node[0].input.len(), 5);
    }

    /// Chains whose intermediate tensors are read elsewhere, or whose weights have a zero point,
    /// are left to tract.
    #[test]
    fn chains_that_do_not_fit_are_left_alone() {
        // The integer product is also a graph output.
        let mut m = lowered(8, 5);
        let g = m.graph.as_mut().unwrap();
        let acc = g.node[1].output[0].clone();
        g.output.push(ValueInfoProto {
            name: acc,
            ..Default::default()
        });
        assert_eq!(fuse_int8_linears(g), 0);
        assert_eq!(g.node.len(), 5);
        // A non-zero weight zero point.
        let mut m = lowered(8, 5);
        let g = m.graph.as_mut().unwrap();
        let wz = g.node[1].input[3].clone();
        let t = g.initializer.iter_mut().find(|t| t.name == wz).unwrap();
        *t = i8_tensor(&wz, &[], &[3]);
        assert_eq!(fuse_int8_linears(g), 0);
        // A Cast to something other than float.
        let mut m = lowered(8, 5);
        let g = m.graph.as_mut().unwrap();
        g.node[2].attribute[0].i = DataType::Double as i64;
        assert_eq!(fuse_int8_linears(g), 0);
    }
}
