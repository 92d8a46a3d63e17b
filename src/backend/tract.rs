//! The tract backend (pure Rust, the default).
//!
//! The ONNX protobuf is decoded straight from the memory map (no intermediate copy of the file);
//! tract then owns its own copy of the weights. Plans are optimized for a concrete batch size
//! and cached per size (CEM evaluates candidates in fixed chunks, so there are few sizes).
//! Threads split a batch into contiguous parts run concurrently, each on its own plan state.

use super::{split_ranges, Backend, LoadOptions, Session, Tensor, TensorRef};
use crate::bundle::MappedGraph;
use crate::error::{QwmError, Result};
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

/// The tract engine.
pub struct TractBackend;

/// A graph loaded in tract.
pub struct TractSession {
    name: String,
    bytes: Arc<memmap2::Mmap>,
    inputs: Vec<(String, Vec<i64>)>,
    outputs: Vec<String>,
    threads: usize,
    plans: Mutex<HashMap<usize, Plan>>,
}

fn err(graph: &str, msg: impl std::fmt::Display) -> QwmError {
    QwmError::Backend {
        backend: "tract",
        graph: graph.to_string(),
        msg: msg.to_string(),
    }
}

/// Names and declared shapes (dim_param as -1) of an ONNX graph's inputs and outputs.
fn declared_io(proto: &tract_onnx::pb::ModelProto) -> (Vec<(String, Vec<i64>)>, Vec<String>) {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    let graph = match &proto.graph {
        Some(g) => g,
        None => return (vec![], vec![]),
    };
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let ins = graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| {
            let shape = i
                .r#type
                .as_ref()
                .and_then(|t| match &t.value {
                    Some(tract_onnx::pb::type_proto::Value::TensorType(tt)) => tt.shape.as_ref(),
                    _ => None,
                })
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(Value::DimValue(v)) => *v,
                            _ => -1,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (i.name.clone(), shape)
        })
        .collect();
    let outs = graph.output.iter().map(|o| o.name.clone()).collect();
    (ins, outs)
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, graph: &MappedGraph, opts: &LoadOptions) -> Result<Box<dyn Session>> {
        let name = graph.spec.file.clone();
        let proto = tract_onnx::pb::ModelProto::decode(&graph.bytes[..])
            .map_err(|e| err(&name, format!("not a valid ONNX protobuf: {e}")))?;
        let (declared_in, declared_out) = declared_io(&proto);
        drop(proto);
        // The graph must declare exactly the manifest's tensors, with the same fixed dimensions.
        let want_in: Vec<&str> = graph.spec.inputs.iter().map(|t| t.name.as_str()).collect();
        let have_in: Vec<&str> = declared_in.iter().map(|(n, _)| n.as_str()).collect();
        if want_in != have_in {
            return Err(err(
                &name,
                format!("graph inputs {have_in:?} disagree with the manifest's {want_in:?}"),
            ));
        }
        let want_out: Vec<&str> = graph.spec.outputs.iter().map(|t| t.name.as_str()).collect();
        if want_out != declared_out {
            return Err(err(
                &name,
                format!("graph outputs {declared_out:?} disagree with the manifest's {want_out:?}"),
            ));
        }
        for ((n, shape), spec) in declared_in.iter().zip(&graph.spec.inputs) {
            let agrees = shape.len() == spec.shape.len()
                && shape
                    .iter()
                    .zip(&spec.shape)
                    .all(|(a, b)| *a == *b || *a == -1 || *b == -1);
            if !agrees {
                return Err(err(
                    &name,
                    format!(
                        "input '{n}': graph declares shape {shape:?}, manifest says {:?}",
                        spec.shape
                    ),
                ));
            }
        }
        // The session shares the mapping: plans for new batch sizes decode from it.
        let bytes = graph.bytes.clone();
        let session = TractSession {
            name,
            bytes,
            inputs: graph
                .spec
                .inputs
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect(),
            outputs: want_out.iter().map(|s| s.to_string()).collect(),
            threads: opts.threads.max(1),
            plans: Mutex::new(HashMap::new()),
        };
        // Build the batch-1 plan now: the graph must type-check with the manifest's shapes.
        session.plan(1)?;
        Ok(Box::new(session))
    }
}

impl TractSession {
    /// The optimized plan for a batch size (built once, then cached).
    fn plan(&self, batch: usize) -> Result<Plan> {
        if let Some(p) = self.plans.lock().expect("plan cache").get(&batch) {
            return Ok(p.clone());
        }
        let proto = tract_onnx::pb::ModelProto::decode(&self.bytes[..])
            .map_err(|e| err(&self.name, format!("not a valid ONNX protobuf: {e}")))?;
        let mut model = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .map_err(|e| err(&self.name, format!("cannot import graph: {e:#}")))?;
        drop(proto);
        for (i, (n, shape)) in self.inputs.iter().enumerate() {
            let dims: Vec<usize> = shape
                .iter()
                .map(|d| if *d < 0 { batch } else { *d as usize })
                .collect();
            model
                .set_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), dims.clone()))
                .map_err(|e| err(&self.name, format!("input '{n}' {dims:?}: {e:#}")))?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| err(&self.name, format!("graph does not type-check with the manifest's shapes at batch {batch}: {e:#}")))?;
        let mut cache = self.plans.lock().expect("plan cache");
        if cache.len() >= 6 {
            cache.clear(); // bounded: sizes beyond a few come from unusual chunkings
        }
        cache.insert(batch, plan.clone());
        Ok(plan)
    }

    fn run_part(
        &self,
        inputs: &[TensorRef<'_>],
        range: std::ops::Range<usize>,
    ) -> Result<Vec<Tensor>> {
        let b = range.len();
        let plan = self.plan(b)?;
        let mut tv: TVec<TValue> = tvec![];
        for (t, (n, _)) in inputs.iter().zip(&self.inputs) {
            let row: usize = t.shape[1..].iter().product();
            let mut shape = t.shape.to_vec();
            shape[0] = b;
            let data = &t.data[range.start * row..range.end * row];
            let tensor = tract_onnx::prelude::Tensor::from_shape(&shape, data)
                .map_err(|e| err(&self.name, format!("input '{n}': {e}")))?;
            tv.push(tensor.into_tvalue());
        }
        let out = plan
            .run(tv)
            .map_err(|e| err(&self.name, format!("run failed: {e:#}")))?;
        out.iter()
            .zip(&self.outputs)
            .map(|(o, n)| {
                let view = o
                    .to_plain_array_view::<f32>()
                    .map_err(|e| err(&self.name, format!("output '{n}': {e}")))?;
                Ok(Tensor {
                    shape: view.shape().to_vec(),
                    data: view.iter().copied().collect(),
                })
            })
            .collect()
    }
}

/// Concatenate per-part outputs along the batch axis.
fn concat_parts(parts: Vec<Vec<Tensor>>) -> Vec<Tensor> {
    let mut it = parts.into_iter();
    let mut acc = it.next().unwrap_or_default();
    for part in it {
        for (a, p) in acc.iter_mut().zip(part) {
            a.shape[0] += p.shape[0];
            a.data.extend_from_slice(&p.data);
        }
    }
    acc
}

impl Session for TractSession {
    fn run(&self, inputs: &[(&str, TensorRef<'_>)]) -> Result<Vec<Tensor>> {
        let (ordered, batch) = super::order_inputs("tract", &self.name, &self.inputs, inputs)?;
        let ranges = split_ranges(batch, self.threads);
        if ranges.len() == 1 {
            return self.run_part(&ordered, 0..batch);
        }
        let results: Vec<Result<Vec<Tensor>>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .iter()
                .cloned()
                .map(|r| {
                    let ordered = &ordered;
                    s.spawn(move || self.run_part(ordered, r))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(err(&self.name, "worker thread panicked")))
                })
                .collect()
        });
        let parts = results.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(concat_parts(parts))
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|(n, _)| n.clone()).collect()
    }

    fn output_names(&self) -> Vec<String> {
        self.outputs.clone()
    }
}
