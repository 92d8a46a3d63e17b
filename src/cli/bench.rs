//! `qwm bench`: time one graph on an engine, or compare bundles side by side (one fresh process
//! per graph and bundle, so each peak RSS is its own).

use super::args::{resolve_run_settings, RunArgs};
use crate::bundle::Bundle;
use crate::engine::{make_backend_with, BackendKind};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct BenchArgs {
    /// Bundle folder. Repeat it to compare bundles side by side (e.g. the float model, its
    /// simulate form and its deploy form): each graph of each bundle is timed in a fresh qwm
    /// process (so peak RSS is its own), and a table gives ratios against the first bundle.
    #[arg(long, default_value = "models/wall")]
    pub model: Vec<PathBuf>,
    /// Graph to time: predictor, encoder, or both (default: predictor; both when comparing).
    #[arg(long)]
    pub graph: Option<String>,
    /// Batch of encoder calls when comparing (frames per call; MPC encodes one per step).
    #[arg(long, default_value_t = 1)]
    pub encoder_batch: usize,
    /// Batch size (CEM candidates per predictor call; DINO-WM's Wall budget is 300).
    #[arg(long, default_value_t = 300)]
    pub batch: usize,
    #[command(flatten)]
    pub run: RunArgs,
    /// Timed calls.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Untimed warm-up calls.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also time onnxruntime's Python API on the same graph (runs --python-script) and print
    /// qwm's throughput relative to it.
    #[arg(long)]
    pub vs_python: bool,
    /// Python interpreter for --vs-python.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The reference script for --vs-python.
    #[arg(long, default_value = "models/bench_ort.py")]
    pub python_script: PathBuf,
    /// Write the result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One row of `qwm bench --model A --model B ...`.
#[derive(serde::Serialize)]
pub struct CompareRow {
    pub model: PathBuf,
    pub form: String,
    pub predictor: Option<crate::runtime::bench::BenchResult>,
    pub encoder: Option<crate::runtime::bench::BenchResult>,
}

fn bench_compare(args: &BenchArgs, threads: usize, backend: BackendKind) -> Result<()> {
    let graphs: Vec<&str> = match args.graph.as_deref() {
        None | Some("both") => vec!["predictor", "encoder"],
        Some(g @ ("predictor" | "encoder")) => vec![g],
        Some(other) => bail!("--graph {other}: expected predictor, encoder or both"),
    };
    if args.encoder_batch == 0 {
        bail!("--encoder-batch must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the qwm executable")?;
    // A fresh folder of its own (random name, created exclusively) for the children's reports.
    let tmp_dir = tempfile::Builder::new()
        .prefix("qwm-bench-")
        .tempdir()
        .context("creating a temporary folder")?;
    let tmp = tmp_dir.path().to_path_buf();
    let mut rows = vec![];
    for model in &args.model {
        let b = Bundle::open(model)?;
        let q = &b.manifest.quantization;
        let (e, p) = (q.encoder.describe(), q.predictor.describe());
        let form = if e == p {
            e
        } else {
            format!("enc {e} / pred {p}")
        };
        let mut row = CompareRow {
            model: model.clone(),
            form,
            predictor: None,
            encoder: None,
        };
        for g in &graphs {
            let json = tmp.join(format!("{g}.json"));
            let batch = if *g == "encoder" {
                args.encoder_batch
            } else {
                args.batch
            };
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("bench").arg("--model").arg(model);
            cmd.args(["--graph", g, "--backend", backend.name()]);
            cmd.args([
                "--batch",
                &batch.to_string(),
                "--threads",
                &threads.to_string(),
            ]);
            cmd.args(["--iters", &args.iters.to_string()]);
            cmd.args(["--warmup", &args.warmup.to_string()]);
            cmd.args(["--seed", &args.seed.to_string()]);
            cmd.arg("--json").arg(&json);
            if let Some(l) = &args.run.ort_lib {
                cmd.arg("--ort-lib").arg(l);
            }
            if args.run.low_mem {
                cmd.arg("--low-mem");
            }
            let out = cmd.output().context("running qwm bench")?;
            if !out.status.success() {
                bail!(
                    "{} {g}: {}",
                    model.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = crate::util::fs::read_text(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            let report: crate::runtime::bench::BenchReport = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a qwm bench report", json.display()))?;
            let r = report.qwm;
            eprintln!("  {} {g}: {:.1} items/s", model.display(), r.items_per_s);
            if *g == "encoder" {
                row.encoder = Some(r);
            } else {
                row.predictor = Some(r);
            }
        }
        rows.push(row);
    }
    drop(tmp_dir);
    println!(
        "qwm bench on {backend} ({threads} threads): predictor batch {}, encoder batch {}, {} calls each; x = ratio to the first bundle",
        args.batch, args.encoder_batch, args.iters
    );
    println!(
        "{:<28} {:<22} {:>16} {:>14} {:>8} {:>15} {:>15} {:>15}",
        "bundle",
        "form",
        "predictor cand/s",
        "encoder fr/s",
        "load s",
        "resident",
        "load peak",
        "peak RSS run"
    );
    let base = &rows[0];
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".into()
        }
    };
    for r in &rows {
        let name = r.model.display().to_string();
        let name = if name.len() > 28 {
            format!("..{}", &name[name.len() - 26..])
        } else {
            name
        };
        let thr = |x: &Option<crate::runtime::bench::BenchResult>,
                   b: &Option<crate::runtime::bench::BenchResult>| match (x, b) {
            (Some(x), Some(b)) => format!(
                "{:.1} {}",
                x.items_per_s,
                ratio(x.items_per_s, b.items_per_s)
            ),
            _ => "-".into(),
        };
        // Memory and load time of the predictor process (else the encoder's).
        let m = r.predictor.as_ref().or(r.encoder.as_ref());
        let mb = base.predictor.as_ref().or(base.encoder.as_ref());
        let (load, res, pl, pr) = match (m, mb) {
            (Some(m), Some(b)) => (
                format!("{:.3}", m.load_s),
                format!(
                    "{} {}",
                    crate::util::fmt::fmt_bytes(m.resident_bytes()),
                    ratio(m.resident_bytes() as f64, b.resident_bytes() as f64)
                ),
                crate::util::fmt::fmt_bytes(m.load_peak_bytes()),
                crate::util::fmt::fmt_bytes(m.peak_rss_run),
            ),
            _ => Default::default(),
        };
        println!(
            "{:<28} {:<22} {:>16} {:>14} {:>8} {:>15} {:>15} {:>15}",
            name,
            r.form,
            thr(&r.predictor, &base.predictor),
            thr(&r.encoder, &base.encoder),
            load,
            res,
            pl,
            pr
        );
    }
    println!("resident = RSS after loading the predictor minus RSS before (what the backend keeps: weights, prepacked or packed, and plans);");
    println!("load peak = peak RSS while loading minus RSS before; peak RSS run = the process's VmHWM after the timed calls (the mapped bundle included)");
    if let Some(path) = &args.json {
        crate::util::fs::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let (threads, backend_name, _) = resolve_run_settings(&args.run)?;
    if args.model.len() > 1 || args.graph.as_deref() == Some("both") {
        return bench_compare(&args, threads, backend_name);
    }
    let model = args.model[0].clone();
    let graph = args.graph.clone().unwrap_or_else(|| "predictor".into());
    let bundle = Bundle::open(&model)?;
    let backend = make_backend_with(backend_name, args.run.ort_lib.as_deref())?;
    let cfg = crate::runtime::bench::BenchConfig {
        graph: graph.clone(),
        batch: args.batch,
        threads,
        iters: args.iters,
        warmup: args.warmup,
        seed: args.seed,
        low_mem: args.run.low_mem,
    };
    let r = crate::runtime::bench::bench_graph(&bundle, backend.as_ref(), &cfg)?;
    println!(
        "qwm bench: {} {} on {} ({threads} threads), batch {}, {} calls",
        model.display(),
        graph,
        r.backend,
        args.batch,
        args.iters
    );
    println!("  load + first call  {:.3} s", r.load_s);
    println!(
        "  call               p50 {:.2} ms, p95 {:.2} ms, mean {:.2} ms",
        r.p50_ms, r.p95_ms, r.mean_ms
    );
    println!("  throughput         {:.0} items/s", r.items_per_s);
    let fb = crate::util::fmt::fmt_bytes;
    println!(
        "  memory             resident {}, load peak {} (RSS); heap {} after load, {} at most while loading",
        fb(r.resident_bytes()),
        fb(r.load_peak_bytes()),
        fb(r.heap_after_load),
        fb(r.heap_peak_load)
    );
    let mut py = None;
    if args.vs_python {
        let spec = if graph == "encoder" {
            &bundle.manifest.graphs.encoder
        } else {
            &bundle.manifest.graphs.predictor
        };
        let p = crate::runtime::bench::bench_python(
            &args.python,
            &args.python_script,
            &model.join(&spec.file),
            &cfg,
        )?;
        println!(
            "  onnxruntime-python {} p50 {:.2} ms, mean {:.2} ms",
            p.onnxruntime, p.p50_ms, p.mean_ms
        );
        println!(
            "  qwm/{} throughput vs onnxruntime-python: {:.3}x (mean), {:.3}x (p50)",
            r.backend,
            p.mean_ms / r.mean_ms,
            p.p50_ms / r.p50_ms
        );
        py = Some(p);
    }
    if let Some(path) = &args.json {
        let v = crate::runtime::bench::BenchReport {
            onnxruntime_python: py,
            qwm: r,
        };
        crate::util::fs::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
