//! What tract's two linear operators share: reading constant inputs while importing ([`konst`]),
//! the input checks and output allocation of a `[.., K] -> [.., N]` operator ([`eval_linear`],
//! [`linear_output_facts`]), and the fused int8 product [`Int8Linear`] that both the fused int8
//! chains ([`super::int8`]) and `MatMulNBits` at accuracy level 4 ([`super::nbits`]) run as.

use crate::kernels::int8_gemm::{self, ActQuant, PackedWeights};
use tract_onnx::tract_hir::internal::*;

/// The constant value of an input of operator `op` (its `what`), or an error saying it must be one.
pub fn konst(
    model: &TypedModel,
    outlet: OutletId,
    op: &str,
    what: &str,
) -> TractResult<Arc<Tensor>> {
    model
        .outlet_fact(outlet)?
        .konst
        .clone()
        .with_context(|| format!("{op}: {what} must be a constant"))
}

/// Evaluate an operator that maps the last axis (K) of its one f32 input to N: checks the input,
/// allocates the output (zeroed when `zeroed`, else uninitialized for `f` to overwrite whole) and
/// calls `f(input, rows, output)` unless there are no rows. Shared by [`super::nbits::PackedMatMul`] and
/// [`Int8Linear`].
pub fn eval_linear(
    op: &str,
    inputs: TVec<TValue>,
    k: usize,
    n: usize,
    zeroed: bool,
    f: impl FnOnce(&[f32], usize, &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    ensure!(inputs.len() == 1, "{op} expects one input");
    let a = &inputs[0];
    let shape = a.shape();
    ensure!(
        shape.last() == Some(&k),
        "{op}: input shape {shape:?}, expected last dimension K {k}"
    );
    let m: usize = shape[..shape.len() - 1].iter().product();
    let mut out_shape: TVec<usize> = shape.into();
    *out_shape.last_mut().expect("rank >= 1") = n;
    let mut out = if zeroed {
        Tensor::zero::<f32>(&out_shape)?
    } else {
        // SAFETY: `f` writes every element (the callers' contract).
        unsafe { Tensor::uninitialized::<f32>(&out_shape)? }
    };
    if m > 0 {
        let a_ram = a.try_as_plain_ram()?;
        let mut out_ram = out.try_as_plain_ram_mut()?;
        f(a_ram.as_slice()?, m, out_ram.as_slice_mut()?)?;
    }
    Ok(tvec!(out.into_tvalue()))
}

/// The output fact of such an operator: the input's shape with its last axis K replaced by N.
pub fn linear_output_facts(
    op: &str,
    inputs: &[&TypedFact],
    k: usize,
    n: usize,
) -> TractResult<TVec<TypedFact>> {
    ensure!(inputs.len() == 1, "{op} expects one input");
    ensure!(
        inputs[0].datum_type == f32::datum_type(),
        "{op}: input must be f32"
    );
    let rank = inputs[0].rank();
    ensure!(rank >= 1, "{op}: input must have rank >= 1");
    ensure!(
        inputs[0].shape[rank - 1] == k.to_dim(),
        "{op}: input last dimension {:?}, expected K {k}",
        inputs[0].shape[rank - 1]
    );
    let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
    shape[rank - 1] = n.to_dim();
    Ok(tvec!(f32::fact(shape)))
}

/// `Y[.., n] = (sum_k (quant(X)[.., k] - zero) * W[k, n]) * scale[n]` on [`int8_gemm`]: the
/// fused chain of the module docs. Also used for `MatMulNBits` at accuracy level 4 with
/// [`ActQuant::PerBlock`].
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Linear {
    /// The weights in the kernel's layout.
    pub weights: Arc<PackedWeights>,
    /// How the activations are quantized.
    pub act: ActQuant,
    /// Added to every output row after the rescale (the chain's bias `Add`, fused), in f32.
    pub bias: Option<Arc<Vec<f32>>>,
}

impl Eq for Int8Linear {}

impl Op for Int8Linear {
    fn name(&self) -> StaticName {
        "QwmInt8Linear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "K {} N {} {:?} ({} bytes resident, {})",
            self.weights.k(),
            self.weights.n(),
            self.act,
            self.weights.resident_bytes(),
            crate::kernels::isa::Isa::selected().name()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Int8Linear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (k, n) = (self.weights.k(), self.weights.n());
        // Uninitialized output: the product writes every element.
        eval_linear("QwmInt8Linear", inputs, k, n, false, |a, m, out| {
            int8_gemm::matmul(
                a,
                m,
                &self.weights,
                self.act,
                out,
                crate::kernels::isa::Isa::selected(),
            );
            if let Some(b) = &self.bias {
                // The chain's Add: one f32 addition per output, as tract's Add computed it.
                for row in out.chunks_exact_mut(n) {
                    for (o, b) in row.iter_mut().zip(b.iter()) {
                        *o += *b;
                    }
                }
            }
            Ok(())
        })
    }
}

impl TypedOp for Int8Linear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (k, n) = (self.weights.k(), self.weights.n());
        linear_output_facts("QwmInt8Linear", inputs, k, n)
    }

    /// Leading axes pass through; K (input) and N (output) are the op's own.
    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        _outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        let lead: String = ('a'..='w').take(inputs[0].rank() - 1).collect();
        AxesMapping::from_strs(&[format!("{lead}y")], &[format!("{lead}z")])
    }

    /// A slice of the output's columns is a product with those weight columns (tract's
    /// `PushSliceUp` then runs q, k and v as three products instead of copying slices out of one).
    fn slice(
        &self,
        patch: &mut TypedModelPatch,
        _model: &TypedModel,
        _node: &TypedNode,
        prefix: &str,
        inputs: &[OutletId],
        output_axis: usize,
        start: &TDim,
        end: &TDim,
    ) -> TractResult<Option<TVec<OutletId>>> {
        let rank = patch.outlet_fact(inputs[0])?.rank();
        if output_axis + 1 < rank {
            // A leading axis: rows are independent, the sliced input gives the sliced output.
            return patch.wire_node(prefix, self.clone(), inputs).map(Some);
        }
        let (Ok(s), Ok(e)) = (start.to_usize(), end.to_usize()) else {
            return Ok(None);
        };
        let Some(w) = self.weights.columns(s..e) else {
            return Ok(None);
        };
        let op = Int8Linear {
            weights: Arc::new(w),
            act: self.act,
            bias: self.bias.as_ref().map(|b| Arc::new(b[s..e].to_vec())),
        };
        patch.wire_node(prefix, op, inputs).map(Some)
    }

    as_op!();
}
