//! Engines that execute graphs, behind one trait so that nothing above knows which one runs.
//!
//! A [`Backend`] loads a mapped graph into a [`Session`]; a session runs it on named f32 tensors.

pub mod tract;

use crate::bundle::MappedGraph;
use crate::error::{QwmError, Result};

/// An owned f32 tensor (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and data; errors if the lengths disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(QwmError::Usage(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }
    /// A borrowed view of this tensor.
    pub fn view(&self) -> TensorRef<'_> {
        TensorRef {
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// A borrowed f32 tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// Dimensions.
    pub shape: &'a [usize],
    /// Values.
    pub data: &'a [f32],
}

/// Options for loading a graph.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Worker threads for one call (the batch is split across them).
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { threads: 1 }
    }
}

/// A graph loaded into an engine, ready to run.
pub trait Session: Send + Sync {
    /// Run on named inputs (every graph input exactly once); outputs in the graph's order.
    /// The leading dimension of every input is the batch.
    fn run(&self, inputs: &[(&str, TensorRef<'_>)]) -> Result<Vec<Tensor>>;
    /// Input names in graph order.
    fn input_names(&self) -> Vec<String>;
    /// Output names in graph order.
    fn output_names(&self) -> Vec<String>;
}

/// An execution engine.
pub trait Backend: Send + Sync {
    /// Short name (`tract`, `ort`).
    fn name(&self) -> &'static str;
    /// Load a mapped graph.
    fn load(&self, graph: &MappedGraph, opts: &LoadOptions) -> Result<Box<dyn Session>>;
}

/// Names of the backends in this build.
pub fn backend_names() -> Vec<&'static str> {
    vec!["tract"]
}

/// Build a backend by name.
pub fn make_backend(name: &str) -> Result<Box<dyn Backend>> {
    match name {
        "tract" => Ok(Box::new(tract::TractBackend)),
        "ort" => Err(QwmError::Usage(
            "--backend ort: this qwm was built without the `ort` feature (rebuild with --features ort)".into(),
        )),
        other => Err(QwmError::Usage(format!(
            "--backend {other}: unknown backend (this build has: {})",
            backend_names().join(", ")
        ))),
    }
}

/// Split `n` items into at most `parts` contiguous ranges of nearly equal size.
pub fn split_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let base = n / parts;
    let extra = n % parts;
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        if len > 0 {
            out.push(start..start + len);
        }
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for n in 0..20 {
            for p in 1..5 {
                let r = split_ranges(n, p);
                let total: usize = r.iter().map(|r| r.len()).sum();
                assert_eq!(total, n);
                for w in r.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
            }
        }
    }
}
