//! qwm's LayerNorm operator for tract: ONNX `LayerNormalization` imported as one operator running
//! [`crate::kernels::layer_norm`] instead of tract's seven.
//!
//! Why: tract 0.23 expands `LayerNormalization` into means, a subtraction, a square, a reciprocal
//! square root and broadcasting products, each a pass over the whole activation; a world model
//! normalizes before every attention and MLP block, so those passes are a large share of what is
//! left of a call once its matrix products run on fast kernels (the Wall predictor on aarch64:
//! `scripts/arm-profile.py`).
//!
//! The importer's entry for `LayerNormalization` is replaced: nodes this operator covers (f32,
//! `stash_type` f32, only the first output used, scale and bias shaped like the normalized axes)
//! get it; every other node goes to tract's own importer, unchanged. `QWM_TRACT_LAYERNORM=off`
//! ([`crate::engine::Tuning`]) keeps tract's expansion for all of them, for comparisons.

use crate::kernels::layer_norm::layer_norm;
use std::sync::OnceLock;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Operator name in tract's plans and profiles.
pub const OP_NAME: &str = "QwmLayerNorm";

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `LayerNormalization` importer, for the nodes this operator leaves to it.
static TRACT_LAYER_NORM: OnceLock<Builder> = OnceLock::new();

/// Import ONNX `LayerNormalization` nodes with [`LayerNorm`] where it covers them.
pub fn register(reg: &mut OnnxOpRegister) {
    if let Some(&orig) = reg.0.get("LayerNormalization") {
        let _ = TRACT_LAYER_NORM.set(orig);
        reg.insert("LayerNormalization", parse);
    }
}

fn parse(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let axis: isize = node.get_attr_opt("axis")?.unwrap_or(-1);
    let eps: f32 = node.get_attr_opt("epsilon")?.unwrap_or(1e-5);
    let stash: DatumType = node.get_attr_opt("stash_type")?.unwrap_or(DatumType::F32);
    let only_y = node.output.iter().skip(1).all(|o| o.is_empty());
    let inputs = node.input.iter().filter(|i| !i.is_empty()).count();
    if stash == DatumType::F32 && only_y && (inputs == 2 || inputs == 3) && eps.is_finite() {
        return Ok((
            expand(LayerNormExpansion {
                axis,
                eps,
                have_bias: inputs == 3,
            }),
            vec![],
        ));
    }
    let orig = TRACT_LAYER_NORM
        .get()
        .context("tract's LayerNormalization importer is not registered")?;
    orig(ctx, node)
}

#[derive(Debug, Clone)]
struct LayerNormExpansion {
    axis: isize,
    eps: f32,
    have_bias: bool,
}

impl Expansion for LayerNormExpansion {
    fn name(&self) -> StaticName {
        OP_NAME.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2 + self.have_bias as usize)?;
        check_output_arity(outputs, 1)?;
        for t in inputs {
            s.equals(&t.datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let rank = model.outlet_fact(inputs[0])?.rank() as isize;
        let axis = if self.axis < 0 {
            self.axis + rank
        } else {
            self.axis
        };
        ensure!(
            (0..rank).contains(&axis),
            "LayerNormalization '{prefix}': axis {} out of range for rank {rank}",
            self.axis
        );
        let op = LayerNorm {
            axis: axis as usize,
            eps: self.eps,
        };
        model.wire_node(format!("{prefix}.layer_norm"), op, inputs)
    }
}

/// `LayerNormalization` over the axes from `axis` to the last: inputs `x`, `scale` and
/// optionally `bias` (both with the normalized axes' element count), output shaped like `x`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// First normalized axis (non-negative).
    pub axis: usize,
    /// Added to the variance.
    pub eps: f32,
}

impl std::hash::Hash for LayerNorm {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.axis.hash(h);
        self.eps.to_bits().hash(h);
    }
}

impl Eq for LayerNorm {}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        OP_NAME.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axes {}.., epsilon {:e}",
            self.axis, self.eps
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.run(inputs)
    }
}

impl LayerNorm {
    /// The operator on its input values.
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2 || inputs.len() == 3,
            "{OP_NAME}: expected 2 or 3 inputs, got {}",
            inputs.len()
        );
        let x = &inputs[0];
        ensure!(
            self.axis < x.rank(),
            "{OP_NAME}: axis {} out of range for an input of shape {:?}",
            self.axis,
            x.shape()
        );
        let row: usize = x.shape()[self.axis..].iter().product();
        for (t, what) in inputs[1..].iter().zip(["scale", "bias"]) {
            ensure!(
                t.len() == row,
                "{OP_NAME}: {what} of shape {:?} does not match the normalized axes {:?} of the input",
                t.shape(),
                &x.shape()[self.axis..]
            );
        }
        let mut out = unsafe {
            // SAFETY: `layer_norm` writes every element (an empty input has none to write).
            Tensor::uninitialized::<f32>(x.shape())?
        };
        if row > 0 && x.len() > 0 {
            let x_ram = x.try_as_plain_ram()?;
            let scale_ram = inputs[1].try_as_plain_ram()?;
            let bias_ram = inputs.get(2).map(|b| b.try_as_plain_ram()).transpose()?;
            let bias = bias_ram.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
            let mut out_ram = out.try_as_plain_ram_mut()?;
            layer_norm(
                x_ram.as_slice::<f32>()?,
                row,
                scale_ram.as_slice::<f32>()?,
                bias,
                self.eps,
                out_ram.as_slice_mut::<f32>()?,
            );
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2 || inputs.len() == 3,
            "{OP_NAME}: expected 2 or 3 inputs"
        );
        for t in inputs {
            ensure!(
                t.datum_type == f32::datum_type(),
                "{OP_NAME}: inputs must be f32, got {t:?}"
            );
        }
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{f32_tensor, node, value_info};
    use tract_onnx::pb::{
        attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto,
        ModelProto, OperatorSetIdProto,
    };

    /// One `LayerNormalization` node over the last axis of `[2, 3, d]`, optionally with extra
    /// outputs (which this operator leaves to tract).
    fn model(d: usize, bias: bool, extra_output: bool) -> ModelProto {
        let scale: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..d).map(|i| i as f32 * -0.2).collect();
        let mut inputs = vec!["x", "scale"];
        let mut initializer = vec![f32_tensor("scale", &[d as i64], &scale)];
        if bias {
            inputs.push("bias");
            initializer.push(f32_tensor("bias", &[d as i64], &b));
        }
        let outputs: &[&str] = if extra_output { &["y", "mean"] } else { &["y"] };
        let epsilon = AttributeProto {
            name: "epsilon".into(),
            r#type: AttributeType::Float as i32,
            f: 1e-5,
            ..Default::default()
        };
        let node = node("LayerNormalization", "ln", &inputs, outputs, vec![epsilon]);
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: vec![node],
                name: "g".into(),
                initializer,
                input: vec![value_info("x", DataType::Float, &[2, 3, d as i64])],
                output: vec![value_info("y", DataType::Float, &[2, 3, d as i64])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn run(m: &ModelProto, qwm: bool, x: &Tensor) -> (Tensor, Vec<String>) {
        let mut onnx = tract_onnx::onnx();
        if qwm {
            register(&mut onnx.op_register);
        }
        let plan = onnx
            .model_for_proto_model(m)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let ops = plan
            .model()
            .nodes()
            .iter()
            .map(|n| n.op().name().to_string())
            .collect();
        let y = plan.run(tvec!(x.clone().into_tvalue())).unwrap();
        (y[0].clone().into_tensor(), ops)
    }

    /// The fused operator replaces tract's expansion and agrees with it within 1e-6 of the
    /// largest output (the sums' order differs), with and without bias, on rows below and
    /// above the kernel's lanes.
    #[test]
    fn fused_matches_tract_expansion() {
        for d in [5usize, 8, 24] {
            for bias in [true, false] {
                let m = model(d, bias, false);
                let x = Tensor::from_shape(
                    &[2, 3, d],
                    &(0..6 * d)
                        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3 + 2.0)
                        .collect::<Vec<_>>(),
                )
                .unwrap();
                let (ours, ops) = run(&m, true, &x);
                let (theirs, their_ops) = run(&m, false, &x);
                assert!(ops.iter().any(|o| o == OP_NAME), "{ops:?}");
                assert!(!their_ops.iter().any(|o| o == OP_NAME), "{their_ops:?}");
                let (ours, theirs) = (
                    ours.try_as_plain_ram().unwrap(),
                    theirs.try_as_plain_ram().unwrap(),
                );
                let (a, b) = (
                    ours.as_slice::<f32>().unwrap(),
                    theirs.as_slice::<f32>().unwrap(),
                );
                let top = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (p, q) in a.iter().zip(b) {
                    assert!((p - q).abs() <= 1e-6 * top, "d {d} bias {bias}: {p} vs {q}");
                }
            }
        }
    }

    /// A node whose mean output is used stays with tract's importer.
    #[test]
    fn nodes_with_extra_outputs_keep_tracts_expansion() {
        let m = model(8, true, true);
        let mut onnx = tract_onnx::onnx();
        register(&mut onnx.op_register);
        let typed = onnx
            .model_for_proto_model(&m)
            .unwrap()
            .into_typed()
            .unwrap();
        assert!(!typed.nodes().iter().any(|n| n.op().name() == OP_NAME));
    }

    /// A scale that does not match the normalized axes is an error naming both shapes.
    #[test]
    fn a_scale_of_the_wrong_length_is_an_error() {
        let op = LayerNorm { axis: 1, eps: 1e-5 };
        let x = Tensor::from_shape(&[2, 4], &[1f32; 8]).unwrap();
        let s = Tensor::from_shape(&[3], &[1f32; 3]).unwrap();
        let e = op
            .run(tvec!(x.into_tvalue(), s.into_tvalue()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scale of shape [3]") && e.contains("[4]"), "{e}");
    }
}
