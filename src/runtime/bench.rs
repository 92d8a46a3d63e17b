//! `qwm bench`: the speed of one graph call at a batch size, on any backend.
//!
//! Inputs are seeded standard-normal tensors of the manifest's shapes (the batch dimension set to
//! `--batch`), so two backends, or qwm and onnxruntime's Python API (`models/bench_ort.py`), time
//! exactly the same work. Warm-up calls are excluded; every timed call's outputs are checked to
//! be finite, so a backend that silently produces NaN cannot look fast.

use crate::bundle::Bundle;
use crate::engine::random_inputs;
use crate::engine::{Backend, LoadOptions, TensorRef};
use crate::error::{QwmError, Result};
use crate::util::stats::quantile;
use serde::Serialize;
use std::time::Instant;

/// What to time.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BenchConfig {
    /// Graph role: "encoder" or "predictor".
    pub graph: String,
    /// Batch size (candidates per predictor call, frames per encoder call).
    pub batch: usize,
    /// Worker threads.
    pub threads: usize,
    /// Timed calls.
    pub iters: usize,
    /// Untimed calls first.
    pub warmup: usize,
    /// Seed of the random inputs.
    pub seed: u64,
    /// Weights kept in the mapped file where the engine allows it (`--low-mem`).
    #[serde(default)]
    pub low_mem: bool,
}

/// Timings of one graph on one backend.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BenchResult {
    /// Backend name.
    pub backend: String,
    /// The settings.
    pub config: BenchConfig,
    /// Loading (parse + optimize) time, seconds.
    pub load_s: f64,
    /// Per-call wall time, milliseconds.
    pub call_ms: Vec<f64>,
    /// Median call, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile call, milliseconds.
    pub p95_ms: f64,
    /// Mean call, milliseconds.
    pub mean_ms: f64,
    /// Batch items per second at the mean.
    pub items_per_s: f64,
    /// Process RSS before the graph was loaded (the bundle already mapped and checked), bytes.
    pub rss_before_load: u64,
    /// Process RSS after loading (before any call), bytes.
    pub rss_after_load: u64,
    /// Peak RSS (VmHWM) up to the end of loading, bytes.
    pub peak_rss_load: u64,
    /// Peak RSS (VmHWM) at the end of the timed calls, bytes.
    pub peak_rss_run: u64,
    /// Rust heap held after loading (tract's weights and plans; ONNX Runtime allocates outside
    /// it), bytes.
    pub heap_after_load: u64,
    /// Most Rust heap held at once while loading, above its level before, bytes: with
    /// [`heap_after_load`](Self::heap_after_load) it shows how many copies of the weights a
    /// load makes on the way.
    #[serde(default)]
    pub heap_peak_load: u64,
}

impl BenchResult {
    /// What loading the graph kept resident: RSS after load minus RSS before it.
    pub fn resident_bytes(&self) -> u64 {
        self.rss_after_load.saturating_sub(self.rss_before_load)
    }

    /// How far RSS rose above its level before loading, at its peak during loading.
    pub fn load_peak_bytes(&self) -> u64 {
        self.peak_rss_load.saturating_sub(self.rss_before_load)
    }
}

/// Time `cfg.iters` calls of one graph of `bundle` on `backend`.
pub fn bench_graph(
    bundle: &Bundle,
    backend: &dyn Backend,
    cfg: &BenchConfig,
) -> Result<BenchResult> {
    let graph = match cfg.graph.as_str() {
        "encoder" => &bundle.encoder,
        "predictor" => &bundle.predictor,
        other => {
            return Err(QwmError::Usage(format!(
                "--graph {other}: expected encoder or predictor"
            )))
        }
    };
    if cfg.batch == 0 || cfg.iters == 0 {
        return Err(QwmError::Usage(
            "--batch and --iters must be at least 1".into(),
        ));
    }
    // The inputs of one call, before they are drawn.
    let spec = &graph.spec;
    let elems: u128 = spec
        .inputs
        .iter()
        .map(|t| {
            t.shape
                .iter()
                .map(|&d| if d < 0 { cfg.batch as u128 } else { d as u128 })
                .product::<u128>()
        })
        .sum();
    crate::util::mem::ensure_fits(&format!("--batch {}", cfg.batch), elems * 4 * 2)?;
    let rss_before_load = crate::util::proc::rss_bytes();
    let heap_before = crate::util::mem::current_bytes();
    crate::util::mem::reset_peak();
    let t0 = Instant::now();
    let session = backend.load(
        graph,
        &LoadOptions {
            low_mem: cfg.low_mem,
            ..LoadOptions::with_threads(cfg.threads)
        },
    )?;
    let (rss_after_load, peak_rss_load) = (
        crate::util::proc::rss_bytes(),
        crate::util::proc::peak_rss_bytes(),
    );
    let heap_after_load = crate::util::mem::current_bytes().saturating_sub(heap_before) as u64;
    let heap_peak_load = crate::util::mem::peak_bytes().saturating_sub(heap_before) as u64;
    let inputs = random_inputs(graph, cfg.batch, cfg.seed);
    let refs: Vec<(&str, TensorRef<'_>)> = inputs
        .iter()
        .map(|(n, s, d)| (n.as_str(), TensorRef { shape: s, data: d }))
        .collect();
    // The first call also builds per-batch plans (tract): it counts as load.
    session.run(&refs)?;
    let load_s = t0.elapsed().as_secs_f64();
    for _ in 0..cfg.warmup {
        session.run(&refs)?;
    }
    let mut call_ms = Vec::with_capacity(cfg.iters);
    for _ in 0..cfg.iters {
        let t = Instant::now();
        let out = session.run(&refs)?;
        call_ms.push(t.elapsed().as_secs_f64() * 1e3);
        for (t, name) in out.iter().zip(session.output_names()) {
            if let Some(bad) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(QwmError::Backend {
                    backend: "bench",
                    graph: graph.spec.file.clone(),
                    msg: format!("output '{name}' has a non-finite value at {bad}"),
                });
            }
        }
    }
    let mean_ms = call_ms.iter().sum::<f64>() / call_ms.len() as f64;
    Ok(BenchResult {
        backend: backend.name().to_string(),
        config: cfg.clone(),
        load_s,
        p50_ms: quantile(&call_ms, 0.5),
        p95_ms: quantile(&call_ms, 0.95),
        mean_ms,
        items_per_s: cfg.batch as f64 / (mean_ms / 1e3),
        call_ms,
        rss_before_load,
        rss_after_load,
        peak_rss_load,
        peak_rss_run: crate::util::proc::peak_rss_bytes(),
        heap_after_load,
        heap_peak_load,
    })
}

/// Timings reported by `models/bench_ort.py` (onnxruntime's Python API on the same graph).
/// What `qwm bench --json` writes for one graph: qwm's timing and, with `--vs-python`,
/// onnxruntime's Python API on the same graph.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BenchReport {
    /// onnxruntime-python's timing (with `--vs-python`).
    pub onnxruntime_python: Option<PythonBench>,
    /// qwm's timing.
    pub qwm: BenchResult,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PythonBench {
    /// onnxruntime version.
    pub onnxruntime: String,
    /// Median call, milliseconds.
    pub p50_ms: f64,
    /// Mean call, milliseconds.
    pub mean_ms: f64,
}

/// Run `models/bench_ort.py` (next to the bundle's repository, or `script`) with the same graph,
/// batch, threads and iterations, and parse its JSON line.
pub fn bench_python(
    python: &str,
    script: &std::path::Path,
    graph_path: &std::path::Path,
    cfg: &BenchConfig,
) -> Result<PythonBench> {
    let out = std::process::Command::new(python)
        .arg(script)
        .arg("--graph")
        .arg(graph_path)
        .args(["--batch", &cfg.batch.to_string()])
        .args(["--threads", &cfg.threads.to_string()])
        .args(["--iters", &cfg.iters.to_string()])
        .args(["--warmup", &cfg.warmup.to_string()])
        .output()
        .map_err(|e| {
            QwmError::Usage(format!(
                "--vs-python: cannot run {python} {}: {e}",
                script.display()
            ))
        })?;
    if !out.status.success() {
        return Err(QwmError::Usage(format!(
            "--vs-python: {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| {
        QwmError::Usage(format!(
            "--vs-python: unexpected output from {} ({e}): {line}",
            script.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_seeded_and_shaped() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/wall");
        let b = Bundle::open(&dir).unwrap();
        let a = random_inputs(&b.predictor, 7, 3);
        let c = random_inputs(&b.predictor, 7, 3);
        assert_eq!(a, c);
        assert_eq!(a[0].1, vec![7, 1, 16, 64]);
        assert_ne!(random_inputs(&b.predictor, 7, 4)[0].2, a[0].2);
    }

    #[test]
    fn bench_times_the_tiny_model_and_refuses_bad_settings() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_h3");
        let b = Bundle::open(&dir).unwrap();
        let backend = crate::engine::make_backend("tract").unwrap();
        let mut cfg = BenchConfig {
            graph: "predictor".into(),
            batch: 4,
            threads: 1,
            iters: 3,
            warmup: 1,
            seed: 0,
            low_mem: false,
        };
        let r = bench_graph(&b, backend.as_ref(), &cfg).unwrap();
        assert_eq!(r.call_ms.len(), 3);
        assert!(r.p50_ms > 0.0 && r.items_per_s > 0.0);
        cfg.graph = "decoder".into();
        let e = bench_graph(&b, backend.as_ref(), &cfg).unwrap_err();
        assert!(e.to_string().contains("--graph decoder"), "{e}");
        cfg.graph = "encoder".into();
        cfg.batch = 0;
        assert!(bench_graph(&b, backend.as_ref(), &cfg).is_err());
    }
}
