//! `qwm profile`: where time and memory go (load, resident weights, activation peak, per-module
//! time over a short planning run, per-operator time).

use super::args::{resolve_run_settings, RunArgs};
use crate::bundle::Bundle;
use crate::engine::{make_backend_with, BackendKind};
use crate::plan::cem::Cem;
use crate::runtime::controller::{Controller, PlanShape};
use crate::runtime::episode::run_episode;
use crate::runtime::model::WorldModel;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct ProfileArgs {
    /// Bundle folder.
    #[arg(long, default_value = "models/wall")]
    pub model: PathBuf,
    /// CEM candidates per optimization step (and per predictor call unless chunked).
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// CEM elites.
    #[arg(long, default_value_t = 30)]
    pub topk: usize,
    /// Optimization steps per plan.
    #[arg(long, default_value_t = 10)]
    pub opt_steps: usize,
    /// Planning horizon.
    #[arg(long, default_value_t = 5)]
    pub horizon: usize,
    /// MPC steps of the timed planning run (one episode).
    #[arg(long, default_value_t = 1)]
    pub max_iter: usize,
    /// Candidates per predictor call (default: all samples, or what --mem-limit allows).
    #[arg(long)]
    pub chunk: Option<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Timed calls per graph in the per-operator profile (0: skip it).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Slowest nodes to list per graph.
    #[arg(long, default_value_t = 8)]
    pub top: usize,
    /// Write the profile as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn profile(args: ProfileArgs) -> Result<()> {
    use crate::util::fmt::fmt_bytes;
    let (threads, backend_name, mem_limit) = resolve_run_settings(&args.run)?;
    let planner = Cem::new(args.samples, args.topk, args.opt_steps, 1.0)?;
    let mut shape = PlanShape {
        horizon: args.horizon,
        n_taken: args.horizon.min(5),
        chunk: args.chunk.unwrap_or(args.samples),
    };
    shape.validate()?;
    if args.max_iter == 0 {
        anyhow::bail!("--max-iter must be at least 1");
    }
    let backend = make_backend_with(backend_name, args.run.ort_lib.as_deref())?;
    let heap0 = crate::util::mem::current_bytes() as u64;
    let t0 = Instant::now();
    let bundle = Bundle::open(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    crate::runtime::budget::check_request(
        &bundle.manifest,
        args.samples,
        args.horizon,
        args.chunk,
        &format!("--samples {} x --horizon {}", args.samples, args.horizon),
    )?;
    let mut wm = WorldModel::load(&bundle, backend.as_ref(), &args.run.load_options(threads))?;
    let load_s = t0.elapsed().as_secs_f64();
    let heap_loaded = crate::util::mem::current_bytes() as u64;
    let rss_loaded = crate::util::proc::rss_bytes();
    let file_bytes = bundle.file_bytes();
    if let Some(l) = mem_limit {
        let cost = crate::runtime::budget::measure(&mut wm, threads)?;
        let (fit, _) = crate::runtime::budget::choose_chunk(
            &cost,
            &wm,
            l as usize,
            args.samples,
            args.horizon,
        )?;
        shape.chunk = args.chunk.unwrap_or(fit).min(fit);
    }
    let mut env = crate::env::make_env(&bundle.manifest.env)?;
    crate::util::mem::reset_peak();
    let heap_before = crate::util::mem::current_bytes() as u64;
    let mut ctl = Controller::new(wm, Box::new(planner), shape, 0)?;
    let r = run_episode(&mut ctl, env.as_mut(), args.max_iter, 0, 1, None)
        .context("the timed planning episode")?;
    let heap_peak = crate::util::mem::peak_bytes() as u64;
    let steps = r.timings.len().max(1) as f64;
    let sum = |f: &dyn Fn(&crate::runtime::episode::StepTiming) -> f64| {
        r.timings.iter().map(f).sum::<f64>() / steps
    };
    let (enc, plan_s, pred, env_s) = (
        sum(&|t| t.encode_s),
        sum(&|t| t.plan_s),
        sum(&|t| t.predict_s),
        sum(&|t| t.env_s),
    );
    let step = enc + plan_s + env_s;
    println!(
        "qwm profile: {} on {} ({threads} threads), CEM {} samples x {} opt steps, horizon {}, {} candidates per predictor call, {} MPC step(s)",
        args.model.display(),
        backend_name,
        args.samples,
        args.opt_steps,
        args.horizon,
        shape.chunk,
        r.timings.len()
    );
    println!(
        "load                 {load_s:.3} s ({} of ONNX files)",
        fmt_bytes(file_bytes)
    );
    println!(
        "memory               weights resident {} (heap after load); activation + planner peak {} (heap peak {}); RSS after load {}, peak RSS {}{}",
        fmt_bytes(heap_loaded.saturating_sub(heap0)),
        fmt_bytes(heap_peak.saturating_sub(heap_before)),
        fmt_bytes(heap_peak),
        fmt_bytes(rss_loaded),
        fmt_bytes(crate::util::proc::peak_rss_bytes()),
        mem_limit
            .map(|l| format!("; limit {}", fmt_bytes(l)))
            .unwrap_or_default()
    );
    println!("per MPC step         {:.3} s", step);
    let module_rows = [
        ("render + encode observation", enc),
        ("predictor", pred),
        ("planner (CEM, rollout assembly)", plan_s - pred),
        ("env steps (executing actions)", env_s),
    ];
    for (name, t) in module_rows {
        println!(
            "  {name:<32} {:>10.2} ms {:>6.1}%",
            t * 1e3,
            100.0 * t / step.max(1e-12)
        );
    }
    let mut ops = vec![];
    if args.reps > 0 {
        let part = shape.chunk.div_ceil(threads);
        for (graph, batch) in [(&bundle.encoder, 1), (&bundle.predictor, shape.chunk)] {
            let p = op_profile(backend_name, &args, graph, batch, part, threads)?;
            println!(
                "operators of {} at batch {} ({}): {:.2} ms per call",
                p.graph,
                p.batch,
                if backend_name == BackendKind::Tract {
                    "tract's plan node by node, one thread's share of the call"
                } else {
                    "ONNX Runtime's profiler, kernel times"
                },
                p.total_ms
            );
            for o in &p.by_op {
                if o.share >= 0.005 {
                    println!(
                        "  {:<32} {:>10.2} ms {:>6.1}%  ({} nodes)",
                        o.name,
                        o.ms,
                        100.0 * o.share,
                        o.nodes
                    );
                }
            }
            println!("  slowest nodes:");
            for o in &p.top_nodes {
                println!(
                    "    {:<60} {:>8.2} ms {:>6.1}%",
                    o.name,
                    o.ms,
                    100.0 * o.share
                );
            }
            ops.push(p);
        }
    }
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "model": args.model.display().to_string(),
            "backend": backend_name,
            "threads": threads,
            "chunk": shape.chunk,
            "load_s": load_s,
            "file_bytes": file_bytes,
            "weights_resident_bytes": heap_loaded.saturating_sub(heap0),
            "activation_peak_bytes": heap_peak.saturating_sub(heap_before),
            "heap_peak_bytes": heap_peak,
            "rss_after_load_bytes": rss_loaded,
            "peak_rss_bytes": crate::util::proc::peak_rss_bytes(),
            "mem_limit_bytes": mem_limit,
            "per_mpc_step_s": {"encoder": enc, "predictor": pred, "planner": plan_s - pred, "env": env_s, "total": step},
            "operators": ops,
        });
        crate::util::fs::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Per-operator profile of one graph: tract evaluates its plan node by node at one thread's
/// share of the batch (`part`); ONNX Runtime profiles whole calls with its own profiler.
fn op_profile(
    backend: BackendKind,
    args: &ProfileArgs,
    graph: &crate::bundle::MappedGraph,
    batch: usize,
    part: usize,
    threads: usize,
) -> Result<crate::engine::OpProfile> {
    let _ = threads;
    match backend {
        BackendKind::Tract => Ok(crate::engine::tract::op_profile(
            graph,
            if batch == 1 { 1 } else { part },
            args.reps,
            args.top,
        )?),
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(
            crate::engine::ort::OrtBackend::new(args.run.ort_lib.as_deref())?
                .op_profile(graph, batch, threads, args.reps, args.top)?,
        ),
        #[cfg(not(feature = "ort"))]
        other => anyhow::bail!("--backend {other}: no per-operator profile for this backend"),
    }
}
