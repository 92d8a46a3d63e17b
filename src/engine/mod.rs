//! Engines that execute graphs, behind one trait so that nothing above knows which one runs.
//!
//! A [`Backend`] loads a mapped graph into a [`Session`]; a session runs it on named f32 tensors.

mod inputs;
#[cfg(feature = "ort")]
pub mod ort;
pub mod tract;

pub use inputs::random_inputs;

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
    /// Keep the weights in the mapped graph file where the engine allows it (ONNX Runtime:
    /// external data read from the file, prepacking off). tract ignores it: it always copies
    /// each weight once, straight from the mapping.
    pub low_mem: bool,
    /// Batch rows per call of tract's plan: a larger batch runs tile by tile. `None`: sized so
    /// that a tile's largest intermediate tensor fits [`tract::TILE_BYTES`] (or
    /// [`Tuning::tile_rows`]). ONNX Runtime ignores it.
    pub tile_rows: Option<usize>,
    /// The engines' own rewrites and plan choices (all on by default).
    pub tuning: Tuning,
}

/// Switches of the engines' rewrites and plans, for measurements and comparisons: every rewrite
/// is on by default and computes the same function (within each rewrite's stated tolerance).
/// [`Tuning::from_env`] is the one place that reads the `QWM_*` variables that set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// tract: fuse int8 chains into qwm's int8 operator (`QWM_TRACT_INT8=off`: tract's own
    /// lowering).
    pub tract_int8: bool,
    /// tract: fuse attention chains into qwm's attention operator (`QWM_TRACT_ATTENTION=off`).
    pub tract_attention: bool,
    /// tract: import ONNX LayerNormalization as qwm's one-pass operator
    /// (`QWM_TRACT_LAYERNORM=off`: tract's expansion).
    pub tract_layer_norm: bool,
    /// tract: one plan per batch size instead of one symbolic plan (`QWM_TRACT_PLAN=per-size`).
    pub per_size_plans: bool,
    /// tract: fixed batch rows per tile (`QWM_TRACT_TILE=N`), unless [`LoadOptions::tile_rows`].
    pub tile_rows: Option<usize>,
    /// ONNX Runtime: hand int8 products and attention to its fused kernels (`QWM_ORT_FUSE=off`).
    pub ort_fusion: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tract_int8: true,
            tract_attention: true,
            tract_layer_norm: true,
            per_size_plans: false,
            tile_rows: None,
            ort_fusion: true,
        }
    }
}

impl Tuning {
    /// The defaults, with the `QWM_*` variables applied. A switch is off when its variable is
    /// `off` (`tract` is still accepted for the two tract fusions, its earlier spelling).
    pub fn from_env() -> Tuning {
        let var = |k: &str| std::env::var(k).ok();
        let off = |k: &str, also: &str| var(k).is_some_and(|v| v == "off" || v == also);
        Tuning {
            tract_int8: !off("QWM_TRACT_INT8", "tract"),
            tract_attention: !off("QWM_TRACT_ATTENTION", "tract"),
            tract_layer_norm: !off("QWM_TRACT_LAYERNORM", "tract"),
            per_size_plans: var("QWM_TRACT_PLAN").as_deref() == Some("per-size"),
            tile_rows: var("QWM_TRACT_TILE").and_then(|v| v.parse::<usize>().ok()),
            ort_fusion: !off("QWM_ORT_FUSE", "off"),
        }
    }
}

impl LoadOptions {
    /// `threads` workers, weights loaded the engine's default way.
    pub fn with_threads(threads: usize) -> LoadOptions {
        LoadOptions {
            threads,
            low_mem: false,
            tile_rows: None,
            tuning: Tuning::from_env(),
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions::with_threads(1)
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

/// The execution engines qwm knows (whether this build has `ort` is [`backend_names`]).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract: pure Rust, the default.
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time (cargo feature `ort`).
    Ort,
}

impl BackendKind {
    /// Lower-case name (`tract`, `ort`), as flags, reports and board profiles write it.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
        }
    }

    /// Parse a name; the error names `what` (a flag or a file field).
    pub fn parse(name: &str, what: &str) -> Result<BackendKind> {
        match name {
            "tract" => Ok(BackendKind::Tract),
            "ort" => Ok(BackendKind::Ort),
            other => Err(QwmError::Usage(format!(
                "{what} {other}: unknown backend (this build has: {})",
                backend_names().join(", ")
            ))),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Names of the backends in this build.
pub fn backend_names() -> Vec<&'static str> {
    if cfg!(feature = "ort") {
        vec!["tract", "ort"]
    } else {
        vec!["tract"]
    }
}

/// Build a backend by name (library and test convenience; the command line passes a
/// [`BackendKind`] to [`make_backend_with`]).
pub fn make_backend(name: &str) -> Result<Box<dyn Backend>> {
    make_backend_with(BackendKind::parse(name, "--backend")?, None)
}

/// Build a backend, with an explicit ONNX Runtime library path (`ort_lib`) for `ort`.
pub fn make_backend_with(
    kind: BackendKind,
    ort_lib: Option<&std::path::Path>,
) -> Result<Box<dyn Backend>> {
    let _ = ort_lib;
    match kind {
        BackendKind::Tract => Ok(Box::new(tract::TractBackend)),
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Box::new(ort::OrtBackend::new(ort_lib)?)),
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => Err(QwmError::Usage(
            "--backend ort: this qwm was built without the `ort` feature (rebuild with --features ort)".into(),
        )),
    }
}

/// Order named inputs as a graph declares them, checking names, shapes (`-1` = batch) and a
/// common non-zero batch. Shared by every backend so they refuse the same things.
pub fn order_inputs<'a>(
    backend: &'static str,
    graph: &str,
    spec: &[(String, Vec<i64>)],
    inputs: &[(&str, TensorRef<'a>)],
) -> Result<(Vec<TensorRef<'a>>, usize)> {
    let err = |msg: String| QwmError::Backend {
        backend,
        graph: graph.to_string(),
        msg,
    };
    if inputs.len() != spec.len() {
        return Err(err(format!(
            "{} inputs given, the graph takes {}",
            inputs.len(),
            spec.len()
        )));
    }
    let mut ordered = Vec::with_capacity(spec.len());
    let mut batch = None;
    for (n, shape) in spec {
        let t = inputs
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| *t)
            .ok_or_else(|| err(format!("input '{n}' was not given")))?;
        let ok = !t.shape.is_empty()
            && t.shape.len() == shape.len()
            && t.shape
                .iter()
                .zip(shape)
                .all(|(a, b)| *b < 0 || *a as i64 == *b)
            && t.shape.iter().product::<usize>() == t.data.len();
        if !ok {
            return Err(err(format!(
                "input '{n}' has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        match batch {
            None => batch = Some(t.shape[0]),
            Some(b) if b != t.shape[0] => {
                return Err(err(format!(
                    "input '{n}' has batch {}, others {b}",
                    t.shape[0]
                )))
            }
            _ => {}
        }
        ordered.push(t);
    }
    let batch = batch.unwrap_or(0);
    if batch == 0 {
        return Err(err("empty batch".into()));
    }
    Ok((ordered, batch))
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

/// Time spent in one kind of operator (or one node) during a graph call.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpTime {
    /// Operator name as tract's optimized plan shows it (e.g. `EinSum`, `Softmax`), or the node
    /// name for per-node rows.
    pub name: String,
    /// Nodes of this operator in the plan.
    pub nodes: usize,
    /// Mean milliseconds per call.
    pub ms: f64,
    /// Share of the call.
    pub share: f64,
}

/// Per-operator profile of one graph call.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpProfile {
    /// Graph file.
    pub graph: String,
    /// Batch of the call.
    pub batch: usize,
    /// Mean wall time of a call evaluated node by node (ms).
    pub total_ms: f64,
    /// Per operator kind, slowest first.
    pub by_op: Vec<OpTime>,
    /// The slowest nodes.
    pub top_nodes: Vec<OpTime>,
}

/// Aggregate `(node, op, seconds)` samples of `reps` calls into a profile (per operator kind,
/// and the `top` slowest nodes); `total_s` is the mean wall time of a call.
pub fn summarize_op_times(
    graph: &str,
    batch: usize,
    total_s: f64,
    reps: usize,
    samples: Vec<(String, String, f64)>,
    top: usize,
) -> Result<OpProfile> {
    use std::collections::HashMap;
    let reps = reps.max(1) as f64;
    let mut by_op: HashMap<String, (f64, usize)> = HashMap::new();
    let mut by_node: HashMap<String, (f64, usize)> = HashMap::new();
    for (node, op, t) in samples {
        let e = by_op.entry(op.clone()).or_default();
        e.0 += t;
        e.1 += 1;
        let e = by_node.entry(format!("{node} ({op})")).or_default();
        e.0 += t;
        e.1 += 1;
    }
    let rows = |m: HashMap<String, (f64, usize)>, keep: usize| -> Vec<OpTime> {
        let mut v: Vec<OpTime> = m
            .into_iter()
            .map(|(k, (t, n))| OpTime {
                name: k,
                nodes: (n as f64 / reps).round() as usize,
                ms: t / reps * 1e3,
                share: t / reps / total_s.max(1e-12),
            })
            .collect();
        v.sort_by(|a, b| b.ms.total_cmp(&a.ms).then(a.name.cmp(&b.name)));
        v.truncate(keep);
        v
    };
    Ok(OpProfile {
        graph: graph.to_string(),
        batch,
        total_ms: total_s * 1e3,
        by_op: rows(by_op, usize::MAX),
        top_nodes: rows(by_node, top),
    })
}
