//! The tract backend (pure Rust, the default).
//!
//! The ONNX protobuf is decoded straight from the memory map (no intermediate copy of the file);
//! tract then owns its own copy of the weights. One plan, optimized with a symbolic batch
//! dimension, serves every batch size: one copy of the weights, and no re-optimization when CEM's
//! chunking or the thread split produces a new size (measured on the full-size synthetic model:
//! heap after load 165 MiB instead of 243, and no further copy per size; same speed on the shipped
//! model). Graphs that do not type-check symbolically fall back to one plan per size.
//! Threads split a batch into contiguous parts run concurrently, each on its own plan state.
//! Each part runs in tiles of a few batch rows, sized so that one tile's largest intermediate
//! tensor stays within [`TILE_BYTES`]: at DINO-WM's size a whole CEM batch of activations does
//! not fit the caches (one 300-candidate MLP activation is 470 MiB), and per-candidate throughput
//! fell by a third from batch 16 to batch 32 or 300 (int8 predictor: 20.3 -> 14.9 and 13.5
//! cand/s; float 9.5 -> 7.7 at 300). Tiles also bound a call's activation memory.

pub mod attention;
pub mod int8;
pub mod layer_norm;
pub mod linear;
pub mod nbits;

use super::{split_ranges, Backend, LoadOptions, Session, Tensor, TensorRef, Tuning};
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
    /// Plans by batch size; key 0 is the symbolic-batch plan.
    plans: Mutex<HashMap<usize, Plan>>,
    symbolic_failed: std::sync::atomic::AtomicBool,
    /// One plan per batch size from the start (graphs with integer matmuls).
    per_size: bool,
    /// Bytes of the largest intermediate tensor per batch row (0 until a plan is built).
    row_bytes: std::sync::atomic::AtomicUsize,
    /// [`LoadOptions::tile_rows`], else [`Tuning::tile_rows`].
    tile_rows: Option<usize>,
    /// The rewrites and plan choices it was loaded with.
    tuning: Tuning,
}

/// Working-set target of one tile of the batch: the largest intermediate tensor of a tile stays
/// within it. Measured on the full-size predictor (largest tensor 1.5 MiB per candidate, so
/// tiles of 16): tiles of 4 to 16 candidates run at the same speed, 32 and more lose a third.
pub const TILE_BYTES: usize = 24 << 20;

/// Batch rows per tile: `fixed` (the load option, else `QWM_TRACT_TILE`, read at load), or as
/// many rows as fit [`TILE_BYTES`] for a graph whose largest intermediate takes `row_bytes` per
/// row.
fn tile_rows(fixed: Option<usize>, row_bytes: usize) -> usize {
    if let Some(t) = fixed {
        return t.max(1);
    }
    if row_bytes == 0 {
        return usize::MAX;
    }
    (TILE_BYTES / row_bytes).max(1)
}

/// Bytes per batch row of the largest non-constant tensor of a plan built for `batch` rows
/// (`None`: symbolic, `sym` is the batch symbol).
fn largest_row_bytes(plan: &Plan, batch: Option<usize>, sym: &Symbol) -> usize {
    let values = SymbolValues::default().with(sym, 1);
    let rows = batch.unwrap_or(1).max(1);
    plan.model()
        .nodes()
        .iter()
        .flat_map(|n| n.outputs.iter())
        .filter(|o| o.fact.konst.is_none())
        .filter_map(|o| {
            let vol = o.fact.shape.volume().eval(&values).to_i64().ok()?;
            Some(vol.max(0) as usize * o.fact.datum_type.size_of() / rows)
        })
        .max()
        .unwrap_or(0)
}

fn err(graph: &str, msg: impl std::fmt::Display) -> QwmError {
    QwmError::Backend {
        backend: "tract",
        graph: graph.to_string(),
        msg: msg.to_string(),
    }
}

/// Names and declared shapes (dim_param as -1) of an ONNX graph's inputs and outputs.
type DeclaredInputs = Vec<(String, Vec<i64>, i32)>;

fn declared_io(proto: &tract_onnx::pb::ModelProto) -> (DeclaredInputs, Vec<String>) {
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
            let tensor_type = i.r#type.as_ref().and_then(|t| match &t.value {
                Some(tract_onnx::pb::type_proto::Value::TensorType(tt)) => Some(tt),
                _ => None,
            });
            let elem = tensor_type.map(|tt| tt.elem_type).unwrap_or(0);
            let shape = tensor_type
                .and_then(|tt| tt.shape.as_ref())
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
            (i.name.clone(), shape, elem)
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
        // A panic inside tract on a malformed graph becomes an error naming the graph.
        let name = graph.spec.file.clone();
        let r = caught(|| {
            crate::util::mem::with_large_allocations_unmapped(|| load_tract(graph, opts))
        })
        .unwrap_or_else(|p| Err(err(&name, format!("tract panicked while loading: {p}"))));
        crate::util::mem::release_free_memory();
        r
    }
}

/// tract's ONNX importer with qwm's operators registered (MatMulNBits kept packed: see
/// [`crate::engine::tract::nbits`]; LayerNormalization as one operator unless `tuning` says
/// otherwise: [`crate::engine::tract::layer_norm`]).
fn onnx(tuning: &Tuning) -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::engine::tract::nbits::register(&mut onnx);
    crate::engine::tract::int8::register(&mut onnx);
    crate::engine::tract::attention::register(&mut onnx);
    if tuning.tract_layer_norm {
        crate::engine::tract::layer_norm::register(&mut onnx.op_register);
    }
    onnx
}

/// Import a graph file with its weights read straight from the mapping: the protobuf is
/// rewritten with the large initializers as external data into the same file (see
/// [`crate::onnx::external_data`]), so only the graph's structure is decoded and each weight is copied
/// once, into its tract tensor. The usual decode peaked at twice the weights (full-size
/// predictor: 155 MiB of heap for 77 MiB of weights).
fn import(bytes: &Arc<memmap2::Mmap>, name: &str, tuning: &Tuning) -> Result<InferenceModel> {
    let ext = crate::onnx::external_data::externalize(
        &bytes[..],
        ".",
        crate::onnx::external_data::DEFAULT_MIN_BYTES,
    )
    .map_err(|e| err(name, format!("not a valid ONNX protobuf: {e}")))?;
    let mut proto = tract_onnx::pb::ModelProto::decode(&ext.proto[..])
        .map_err(|e| err(name, format!("not a valid ONNX protobuf: {e}")))?;
    drop(ext);
    let fused = if tuning.tract_int8 {
        crate::engine::tract::int8::fuse_model(&mut proto)
    } else {
        0
    };
    let attention = if tuning.tract_attention {
        crate::engine::tract::attention::fuse_model(&mut proto)
    } else {
        0
    };
    log::debug!("{name}: {fused} int8 linear chains and {attention} attention blocks fused");
    let mut onnx = onnx(tuning);
    onnx.provider = Arc::new(crate::onnx::external_data::MappedResolver {
        bytes: bytes.clone(),
    });
    // tract resolves a location against a model folder before asking the provider; "." inside
    // "/" always resolves, and the provider reads from the mapping whatever the path.
    let parsed = onnx
        .parse(&proto, Some("/"))
        .map_err(|e| err(name, format!("cannot import graph: {e:#}")))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(err(
            name,
            format!(
                "cannot import graph: unresolved inputs {:?}",
                parsed.unresolved_inputs
            ),
        ));
    }
    Ok(parsed.model)
}

thread_local! {
    /// Set while [`caught`] runs tract on this thread: its panics become errors, not output.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` (tract's import, optimization or a call), turning a panic into the panic's text. The
/// panic hook stays silent for it (the caller reports the text as an error naming the graph),
/// so no "panicked at" reaches the user; panics elsewhere print as before.
fn caught<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_text(&p));
    QUIET.with(|q| q.set(was));
    r
}

/// The text of a caught panic.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Most nodes a graph may have on tract: tract's graph building is quadratic in the node
/// count (20k nodes load in 2 s, 100k in over 30 s), so larger graphs are refused with a
/// clear error instead of appearing to hang.
pub const MAX_NODES: usize = 30_000;

fn load_tract(graph: &MappedGraph, opts: &LoadOptions) -> Result<Box<dyn Session>> {
    let name = graph.spec.file.clone();
    let mut proto = tract_onnx::pb::ModelProto::decode(&graph.bytes[..])
        .map_err(|e| err(&name, format!("not a valid ONNX protobuf: {e}")))?;
    crate::onnx::proto::refuse_external_data(&proto, true).map_err(|e| err(&name, e))?;
    // tract's importer checks each new node's name against every earlier one, so its load time
    // grows with the square of the node count (measured: 10k nodes 0.8 s, 20k 2.3 s, 40k 7.2 s);
    // a graph far beyond any world model's size is refused instead of taking minutes.
    let nodes = proto.graph.as_ref().map_or(0, |g| g.node.len());
    if nodes > MAX_NODES {
        return Err(err(
            &name,
            format!(
                "the graph has {nodes} nodes, more than the {MAX_NODES} this engine loads (a ViT-S/14 encoder has about 1,000; tract's import time grows with the square of the node count)"
            ),
        ));
    }
    // Impossible tensors are named here rather than left to tract's importer.
    crate::onnx::proto::check_initializers(&proto, &name, false)
        .map_err(|e| err(&name, e.to_string()))?;
    let (declared_in, declared_out) = declared_io(&proto);
    // Integer matmuls (the deploy form's MatMulInteger / QLinearMatMul) that qwm does not fuse
    // (see [`crate::engine::tract::int8`]) only reach tract's int8 kernels when the batch is concrete: with
    // a symbolic batch the plan was measured 3.9x slower (full-size encoder, batch 1: 332 ms vs
    // 85 ms). Their weights are int8, so per-size plans cost a quarter of what they cost float
    // graphs.
    if opts.tuning.tract_int8 {
        crate::engine::tract::int8::fuse_model(&mut proto);
    }
    let integer_ops = proto.graph.as_ref().is_some_and(|g| {
        g.node
            .iter()
            .any(|n| n.op_type == "MatMulInteger" || n.op_type == "QLinearMatMul")
    });
    drop(proto);
    // The graph must declare exactly the manifest's tensors, with the same fixed dimensions.
    let want_in: Vec<&str> = graph.spec.inputs.iter().map(|t| t.name.as_str()).collect();
    let have_in: Vec<&str> = declared_in.iter().map(|(n, _, _)| n.as_str()).collect();
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
    for ((n, shape, elem), spec) in declared_in.iter().zip(&graph.spec.inputs) {
        // qwm feeds float32 tensors; a graph declaring another type would be fed wrong bytes or
        // silently cast.
        if *elem != tract_onnx::pb::tensor_proto::DataType::Float as i32 {
            let t = tract_onnx::pb::tensor_proto::DataType::try_from(*elem)
                .map(|d| format!("{d:?}"))
                .unwrap_or_else(|_| format!("type {elem}"));
            return Err(err(
                &name,
                format!("input '{n}' is declared {t}; qwm feeds float32 inputs"),
            ));
        }
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
        symbolic_failed: std::sync::atomic::AtomicBool::new(false),
        per_size: integer_ops,
        row_bytes: std::sync::atomic::AtomicUsize::new(0),
        tile_rows: opts.tile_rows.or(opts.tuning.tile_rows),
        tuning: opts.tuning,
    };
    // Build the batch-1 plan now: the graph must type-check with the manifest's shapes.
    session.plan(1)?;
    Ok(Box::new(session))
}

impl TractSession {
    /// The optimized plan for a batch size (built once, then cached).
    /// The optimized plan for a batch size. By default one plan with a symbolic batch serves
    /// every size (one copy of the weights, one optimization); a graph that does not type-check
    /// symbolically, or `QWM_TRACT_PLAN=per-size`, gets one plan per concrete size instead
    /// (cached, each with its own weights).
    fn plan(&self, batch: usize) -> Result<Plan> {
        let per_size = self.tuning.per_size_plans
            || self.per_size
            || self
                .symbolic_failed
                .load(std::sync::atomic::Ordering::Relaxed);
        let key = if per_size { batch } else { 0 };
        if let Some(p) = self.plans.lock().expect("plan cache").get(&key) {
            return Ok(p.clone());
        }
        if !per_size {
            match self.build(None) {
                Ok(plan) => {
                    self.plans
                        .lock()
                        .expect("plan cache")
                        .insert(0, plan.clone());
                    return Ok(plan);
                }
                Err(e) => {
                    log::warn!(
                        "{}: symbolic-batch plan failed ({e}); building one plan per batch size",
                        self.name
                    );
                    self.symbolic_failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let plan = self.build(Some(batch))?;
        let mut cache = self.plans.lock().expect("plan cache");
        if cache.len() >= 6 {
            cache.clear(); // bounded: sizes beyond a few come from unusual chunkings
        }
        cache.insert(batch, plan.clone());
        Ok(plan)
    }

    /// Import, type and optimize the graph with the batch dimension fixed, or symbolic (`None`).
    fn build(&self, batch: Option<usize>) -> Result<Plan> {
        let phase = |what: &str| {
            log::debug!(
                "{}: {what}: heap {:.1} MiB (peak {:.1} MiB), RSS {:.1} MiB (peak {:.1} MiB)",
                self.name,
                crate::util::mem::current_bytes() as f64 / 1048576.0,
                crate::util::mem::peak_bytes() as f64 / 1048576.0,
                crate::util::proc::rss_bytes() as f64 / 1048576.0,
                crate::util::proc::peak_rss_bytes() as f64 / 1048576.0
            )
        };
        phase("before decoding");
        let mut model = import(&self.bytes, &self.name, &self.tuning)?;
        phase("imported");
        let sym = model.sym("B");
        let b: TDim = match batch {
            Some(b) => b.to_dim(),
            None => sym.to_dim(),
        };
        for (i, (n, shape)) in self.inputs.iter().enumerate() {
            let dims: Vec<TDim> = shape
                .iter()
                .map(|d| {
                    if *d < 0 {
                        b.clone()
                    } else {
                        (*d as usize).to_dim()
                    }
                })
                .collect();
            model
                .set_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), dims))
                .map_err(|e| err(&self.name, format!("input '{n}': {e:#}")))?;
        }
        let at = batch
            .map(|b| format!("batch {b}"))
            .unwrap_or_else(|| "a symbolic batch".into());
        let untyped = |e: TractError| {
            err(
                &self.name,
                format!("graph does not type-check with the manifest's shapes at {at}: {e:#}"),
            )
        };
        let typed = model.into_typed().map_err(untyped)?;
        phase("typed");
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(untyped)?;
        phase("optimized");
        let rows = largest_row_bytes(&plan, batch, &sym);
        log::debug!(
            "{}: largest intermediate {rows} bytes per batch row: tiles of {} rows",
            self.name,
            tile_rows(self.tile_rows, rows)
        );
        self.row_bytes
            .fetch_max(rows, std::sync::atomic::Ordering::Relaxed);
        Ok(plan)
    }

    /// Run the rows `range` of the batch, tile by tile (see [`TILE_BYTES`]).
    fn run_part(
        &self,
        inputs: &[TensorRef<'_>],
        range: std::ops::Range<usize>,
    ) -> Result<Vec<Tensor>> {
        let rows = self.row_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let tile = tile_rows(self.tile_rows, rows);
        if range.len() <= tile {
            return self.run_tile(inputs, range);
        }
        // Near-equal tiles: at most two sizes, so at most two plans where plans are per size.
        let parts = split_ranges(range.len(), range.len().div_ceil(tile))
            .into_iter()
            .map(|r| self.run_tile(inputs, range.start + r.start..range.start + r.end))
            .collect::<Result<Vec<_>>>()?;
        Ok(concat_parts(parts))
    }

    fn run_tile(
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
            return caught(|| self.run_part(&ordered, 0..batch)).unwrap_or_else(|p| {
                Err(err(
                    &self.name,
                    format!("tract panicked while running: {p}"),
                ))
            });
        }
        let results: Vec<Result<Vec<Tensor>>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .iter()
                .cloned()
                .map(|r| {
                    let ordered = &ordered;
                    s.spawn(move || {
                        caught(|| self.run_part(ordered, r)).unwrap_or_else(|p| {
                            Err(err(
                                &self.name,
                                format!("tract panicked while running: {p}"),
                            ))
                        })
                    })
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

/// Per-operator wall time of one call of `graph` at `batch` on one thread: tract's optimized plan
/// evaluated node by node on seeded random inputs, one warm-up call then `reps` timed ones.
pub fn op_profile(
    graph: &MappedGraph,
    batch: usize,
    reps: usize,
    top: usize,
) -> Result<super::OpProfile> {
    let name = graph.spec.file.clone();
    let mut model = import(&graph.bytes, &name, &Tuning::from_env())?;
    let inputs = crate::engine::random_inputs(graph, batch, 0);
    let mut tv: TVec<TValue> = tvec![];
    for (i, (n, shape, data)) in inputs.iter().enumerate() {
        model
            .set_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), shape.clone()))
            .map_err(|e| err(&name, format!("input '{n}': {e:#}")))?;
        tv.push(
            tract_onnx::prelude::Tensor::from_shape(shape, data)
                .map_err(|e| err(&name, format!("input '{n}': {e}")))?
                .into_tvalue(),
        );
    }
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| err(&name, format!("cannot optimize at batch {batch}: {e:#}")))?;
    let mut state = plan
        .spawn()
        .map_err(|e| err(&name, format!("cannot start: {e:#}")))?;
    state
        .run(tv.clone())
        .map_err(|e| err(&name, format!("run failed: {e:#}")))?;
    let mut times: Vec<(String, String, f64)> = Vec::new();
    let reps = reps.max(1);
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        state
            .run_plan_with_eval(tv.clone(), |ctx, st, node, input| {
                let t = std::time::Instant::now();
                let r = tract_core::plan::eval(ctx, st, node, input);
                times.push((
                    node.name.clone(),
                    node.op().name().to_string(),
                    t.elapsed().as_secs_f64(),
                ));
                r
            })
            .map_err(|e| err(&name, format!("run failed: {e:#}")))?;
    }
    let total = t0.elapsed().as_secs_f64() / reps as f64;
    super::summarize_op_times(&name, batch, total, reps, times, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_their_text_and_the_hook_is_restored_for_others() {
        let r: std::result::Result<(), String> = caught(|| panic!("bad graph {}", 7));
        assert_eq!(r.unwrap_err(), "bad graph 7");
        assert_eq!(caught(|| 3).unwrap(), 3);
        // Outside `caught` the flag is off again: other panics print through the usual hook.
        assert!(!QUIET.with(|q| q.get()));
    }
}
