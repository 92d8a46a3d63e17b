//! The `qwm` command line: clap definitions and glue; each subcommand calls library entry points.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use qwm::backend::{make_backend, make_backend_with, LoadOptions};
use qwm::bundle::Bundle;
use qwm::episode::{run_episode, MpcConfig};
use qwm::model::WorldModel;
use qwm::plan::{cem::Cem, mppi::Mppi, Planner, PlannerKind};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    allow_negative_numbers = true,
    name = "qwm",
    version,
    about = "Edge runtime for quantized latent world models (DINO-WM style)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run headless MPC planning episodes with a world model and report success, time and memory.
    Plan(PlanArgs),
    /// Generate a trajectory dataset (.npy files) from an environment's scripted policy.
    #[command(allow_negative_numbers = true)]
    Dataset {
        /// Environment: wall, pointmaze or pusht.
        #[arg(long, default_value = "wall")]
        env: String,
        /// Number of episodes.
        #[arg(long, default_value_t = 100)]
        episodes: usize,
        /// Steps per episode.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Frame side in pixels (the model's input size).
        #[arg(long, default_value_t = 64)]
        image_size: usize,
        /// Top per-axis speed of the scripted pushes and door runs (up to the action bound
        /// 2.45); the default keeps the original ranges (1.6 / 1.4). Planners sample up to the
        /// bound, so a model that never saw fast pushes into the wall mispredicts them.
        #[arg(long)]
        speed_max: Option<f64>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Post-training quantization of a float bundle into a new bundle (QDQ "simulate" form, or
    /// the "deploy" form on integer / packed operators).
    #[command(allow_negative_numbers = true)]
    Quantize {
        /// Float bundle.
        #[arg(long, default_value = "models/wall")]
        model: PathBuf,
        /// Output bundle folder.
        #[arg(long)]
        out: PathBuf,
        /// Method.
        #[arg(long, value_enum, default_value_t = qwm::quant::Method::Rtn)]
        method: qwm::quant::Method,
        /// Encoder scheme: float or w<bits>[a<bits>][-g<size>][-token].
        #[arg(long, default_value = "float")]
        encoder: String,
        /// Predictor scheme: float or w<bits>[a<bits>][-g<size>][-token].
        #[arg(long, default_value = "float")]
        predictor: String,
        /// Form: `simulate` (faithful QDQ fake quantization: measures accuracy) or `deploy` (the
        /// same function on integer / packed operators: w4-g16..128 as com.microsoft MatMulNBits,
        /// w8a8 static as MatMulInteger; other schemes are refused).
        #[arg(long, default_value = "simulate")]
        form: String,
        /// ONNX Runtime's MatMulNBits accuracy level for the deploy form's 4-bit layers: 0 (float
        /// activations: the scheme's exact function) or 4 (int8 activations per block: faster on
        /// ONNX Runtime, approximate; tract ignores it).
        #[arg(long, default_value_t = 0)]
        accuracy_level: u8,
        /// Calibration episodes (task seeds 99 n + 2, distinct from evaluation seeds 99 n + 1).
        #[arg(long, default_value_t = 4)]
        calib_episodes: usize,
        /// MPC iterations per calibration episode.
        #[arg(long, default_value_t = 2)]
        calib_iters: usize,
        /// CEM samples during calibration.
        #[arg(long, default_value_t = 100)]
        calib_samples: usize,
        /// SmoothQuant migration strength.
        #[arg(long, default_value_t = 0.5)]
        smooth_alpha: f32,
        /// Worker threads.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Time one graph call (encoder or predictor) at a batch size on a backend; optionally
    /// against onnxruntime's Python API on the same graph, inputs and threads.
    Bench(BenchArgs),
    /// Sweep quantization settings x planner budgets over episodes (resumable, shardable) and
    /// write a report with plots.
    Study(StudyArgs),
    /// Merge study results (files or study folders) into a markdown table and plots.
    Report {
        /// Results: `results*.jsonl` files, or study folders holding them.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Output folder for report.md and the plots.
        #[arg(long)]
        out: PathBuf,
        /// TrueType font for plot labels (default: DejaVu Sans or Liberation Sans from the system).
        #[arg(long)]
        font: Option<PathBuf>,
    },
    /// Choose per-layer weight bits that fit a weight-memory budget with the least distortion of
    /// the planning objective, write that bundle, and check it by planning against the best
    /// uniform scheme of at most the same size.
    Fit(FitArgs),
    /// Write a full-size DINO-WM-shaped bundle with random weights (ONNX built by qwm, no torch),
    /// for profiling and benchmarks at real scale.
    Synth {
        /// Architecture family.
        #[arg(long, default_value = "dinowm")]
        arch: String,
        /// Size preset: vits14-wall (DINOv2 ViT-S/14 at 196 px, predictor depth 6, num_hist 1) or
        /// vits14-h3 (3 history frames).
        #[arg(long, default_value = "vits14-wall")]
        preset: String,
        /// Output bundle folder.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Where time and memory go: load, resident weights, activation peak, per-module time over a
    /// short planning run, and per-operator time of encoder and predictor calls (tract).
    Profile(ProfileArgs),
    /// Show a bundle's manifest summary (and verify its files).
    Inspect {
        /// Bundle folder.
        model: PathBuf,
    },
    /// Check qwm's runtime against a bundle's PyTorch fixtures: encoder, predictor and (bundles
    /// from models/export_dinowm.py) a 5-step rollout; exits non-zero when any output is off.
    Verify {
        /// Bundle folder.
        #[arg(long, default_value = "models/wall")]
        model: PathBuf,
        /// Execution engine: tract or ort.
        #[arg(long, default_value = "tract")]
        backend: String,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Path of libonnxruntime for --backend ort.
        #[arg(long)]
        ort_lib: Option<PathBuf>,
        /// Write the result as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Where graphs run and within what limits: the settings `plan`, `bench` and `profile` share.
#[derive(Args, Debug, Clone, Default, serde::Serialize)]
struct RunArgs {
    /// Worker threads (default: the --target profile's, else available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Execution engine: tract or ort (ONNX Runtime; build with --features ort). Default: the
    /// --target profile's, else tract.
    #[arg(long)]
    backend: Option<String>,
    /// Board profile (targets/NAME.toml, or a path): applies its threads, memory budget (as
    /// --mem-limit) and backend unless those flags are given.
    #[arg(long)]
    target: Option<String>,
    /// Most heap memory qwm may use, e.g. 512M or 2G: an allocation over it stops the run with a
    /// clear error (exit status 3) instead of an OOM kill; the peak is reported against it.
    #[arg(long, allow_hyphen_values = true)]
    mem_limit: Option<String>,
    /// Path of libonnxruntime for --backend ort (else ORT_DYLIB_PATH, else the onnxruntime Python
    /// package).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Keep the weights in the mapped graph files where the engine allows it: ONNX Runtime reads
    /// them from the file as external data with weight prepacking off (less memory, some speed
    /// lost). tract always loads each weight once, straight from the mapping.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    low_mem: bool,
}

impl RunArgs {
    /// How the backend loads graphs: `threads` (as resolved from the flags and the target
    /// profile) and `--low-mem`.
    fn load_options(&self, threads: usize) -> LoadOptions {
        LoadOptions {
            low_mem: self.low_mem,
            ..LoadOptions::with_threads(threads)
        }
    }
}

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
struct BenchArgs {
    /// Bundle folder. Repeat it to compare bundles side by side (e.g. the float model, its
    /// simulate form and its deploy form): each graph of each bundle is timed in a fresh qwm
    /// process (so peak RSS is its own), and a table gives ratios against the first bundle.
    #[arg(long, default_value = "models/wall")]
    model: Vec<PathBuf>,
    /// Graph to time: predictor, encoder, or both (default: predictor; both when comparing).
    #[arg(long)]
    graph: Option<String>,
    /// Batch of encoder calls when comparing (frames per call; MPC encodes one per step).
    #[arg(long, default_value_t = 1)]
    encoder_batch: usize,
    /// Batch size (CEM candidates per predictor call; DINO-WM's Wall budget is 300).
    #[arg(long, default_value_t = 300)]
    batch: usize,
    #[command(flatten)]
    run: RunArgs,
    /// Timed calls.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed warm-up calls.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also time onnxruntime's Python API on the same graph (runs --python-script) and print
    /// qwm's throughput relative to it.
    #[arg(long)]
    vs_python: bool,
    /// Python interpreter for --vs-python.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The reference script for --vs-python.
    #[arg(long, default_value = "models/bench_ort.py")]
    python_script: PathBuf,
    /// Write the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
struct ProfileArgs {
    /// Bundle folder.
    #[arg(long, default_value = "models/wall")]
    model: PathBuf,
    /// CEM candidates per optimization step (and per predictor call unless chunked).
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// CEM elites.
    #[arg(long, default_value_t = 30)]
    topk: usize,
    /// Optimization steps per plan.
    #[arg(long, default_value_t = 10)]
    opt_steps: usize,
    /// Planning horizon.
    #[arg(long, default_value_t = 5)]
    horizon: usize,
    /// MPC steps of the timed planning run (one episode).
    #[arg(long, default_value_t = 1)]
    max_iter: usize,
    /// Candidates per predictor call (default: all samples, or what --mem-limit allows).
    #[arg(long)]
    chunk: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
    /// Timed calls per graph in the per-operator profile (0: skip it).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Slowest nodes to list per graph.
    #[arg(long, default_value_t = 8)]
    top: usize,
    /// Write the profile as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct FitArgs {
    /// Float bundle.
    #[arg(long, default_value = "models/wall")]
    model: PathBuf,
    /// Budget for the weights at their bit width (quantized Linear weights as integer codes plus
    /// scales, all other parameters f32), e.g. 600K or 1M: what a deploy form keeps resident.
    #[arg(long)]
    mem_limit: String,
    /// Output bundle folder; the best uniform scheme that fits goes to OUT-uniform-SCHEME.
    #[arg(long)]
    out: PathBuf,
    /// Weight-only schemes a layer may take (float is always allowed), comma-separated.
    #[arg(
        long,
        default_value = "w8,w6,w4-g32,w4,w3-g32,w3",
        value_delimiter = ','
    )]
    options: Vec<String>,
    /// Probe situations (calibration task seeds 99 n + 2).
    #[arg(long, default_value_t = 8)]
    tasks: usize,
    /// Random candidate action sequences per situation.
    #[arg(long, default_value_t = 64)]
    candidates: usize,
    /// Seed of the candidates (and of the check episodes' planner).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Episodes planned with the fitted bundle and with the uniform one (0: skip the check).
    #[arg(long, default_value_t = 20)]
    episodes: usize,
    /// Execution engine: tract or ort.
    #[arg(long, default_value = "tract")]
    backend: String,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Path of libonnxruntime for --backend ort.
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct StudyArgs {
    /// Study configuration (TOML): model, episodes, backend, planner and [[grid]] tables.
    #[arg(long)]
    config: PathBuf,
    /// Output folder (default: the config's `out`, else study/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Cells run at once, each its own process.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Threads per cell (default: the config's, else available cores / jobs).
    #[arg(long)]
    threads: Option<usize>,
    /// Episodes per cell, overriding the config (e.g. a quick smoke run).
    #[arg(long)]
    episodes: Option<usize>,
    /// Execution engine for every cell, overriding the config: tract or ort.
    #[arg(long)]
    backend: Option<String>,
    /// Run only slice K of N (K 0-based) of the id-sorted cells, into
    /// results.shard-K-of-N.jsonl: one array task per shard on a cluster, then `qwm report`.
    #[arg(long)]
    shard: Option<String>,
    /// Path of libonnxruntime for an ort study.
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// List the cells (id, bundle, episodes) and exit.
    #[arg(long)]
    list: bool,
    /// Do not write the report when the study is complete.
    #[arg(long)]
    no_report: bool,
    /// TrueType font for the report's plots.
    #[arg(long)]
    font: Option<PathBuf>,
}

#[derive(Args, Debug, serde::Serialize)]
#[command(allow_negative_numbers = true)]
struct PlanArgs {
    /// Bundle folder (manifest.json + encoder.onnx + predictor.onnx).
    #[arg(long, default_value = "models/wall")]
    model: PathBuf,
    /// Environment (defaults to the one the model was trained on).
    #[arg(long)]
    env: Option<String>,
    /// Episodes to run (the default is a short demonstration; evaluations use 50).
    #[arg(long, default_value_t = 3)]
    episodes: usize,
    /// Seed: episode i uses task seed 99 * (seed + i) + 1 (DINO-WM's evaluation seeds for seed 0)
    /// and planner noise derived from the seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Planner.
    #[arg(long, value_enum, default_value_t = PlannerKind::Cem)]
    planner: PlannerKind,
    /// Candidates per optimization step.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// CEM elites.
    #[arg(long, default_value_t = 30)]
    topk: usize,
    /// Optimization steps per plan.
    #[arg(long, default_value_t = 10)]
    opt_steps: usize,
    /// Planning horizon (model steps; each is frameskip environment steps).
    #[arg(long, default_value_t = 5)]
    horizon: usize,
    /// Planned model actions executed per MPC step.
    #[arg(long, default_value_t = 5)]
    n_taken: usize,
    /// Most MPC steps per episode.
    #[arg(long, default_value_t = 10)]
    max_iter: usize,
    /// CEM initial std / MPPI noise (normalized action units).
    #[arg(long, default_value_t = 1.0)]
    var_scale: f32,
    /// MPPI temperature relative to the spread of objectives.
    #[arg(long, default_value_t = 0.1)]
    temperature: f32,
    /// Candidates per predictor call (default: all samples at once).
    #[arg(long)]
    chunk: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    run: RunArgs,
    /// Write the full report as JSON (rewritten after every episode, so an interrupted run keeps
    /// its finished episodes).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Continue an interrupted run: keep the finished episodes in the --json file (which must come
    /// from the same settings) and run only the rest. Episodes are independent (each has its own
    /// seeds), so the result equals an uninterrupted run's.
    #[arg(long, requires = "json")]
    resume: bool,
    /// Write each episode's observed frames (and goal) as PNG files under this folder.
    #[arg(long)]
    save_frames: Option<PathBuf>,
}

#[global_allocator]
static ALLOC: qwm::mem::CountingAlloc = qwm::mem::CountingAlloc;

/// When the process started: `qwm plan` reports the start-up time to its first plan from it.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn main() {
    STARTED.get_or_init(Instant::now);
    qwm::mem::mark_installed();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Plan(args) => plan(args),
        Cmd::Dataset {
            env,
            episodes,
            steps,
            seed,
            image_size,
            speed_max,
            out,
        } => {
            let ds =
                qwm::env::dataset::generate(&env, episodes, steps, seed, image_size, speed_max)?;
            ds.write(&out)
                .with_context(|| format!("writing dataset to {}", out.display()))?;
            println!("wrote {episodes} episodes x {steps} steps of {env} ({image_size}x{image_size} frames) to {}", out.display());
            Ok(())
        }
        Cmd::Quantize {
            model,
            out,
            method,
            encoder,
            predictor,
            form,
            accuracy_level,
            calib_episodes,
            calib_iters,
            calib_samples,
            smooth_alpha,
            threads,
        } => {
            let form = qwm::quant::Form::parse(&form)?;
            let cfg = qwm::quant::QuantizeConfig {
                model: model.clone(),
                out: out.clone(),
                method,
                encoder: qwm::quant::scheme::Scheme::parse(&encoder, "--encoder")?,
                predictor: qwm::quant::scheme::Scheme::parse(&predictor, "--predictor")?,
                calib_episodes,
                calib_iters,
                calib_samples,
                smooth_alpha,
                threads: threads
                    .unwrap_or_else(|| {
                        std::thread::available_parallelism()
                            .map(|n| n.get())
                            .unwrap_or(1)
                    })
                    .max(1),
                form,
                accuracy_level,
                layer_schemes: Default::default(),
            };
            let t0 = Instant::now();
            let backend = make_backend("tract")?;
            qwm::quant::quantize_bundle(&cfg, backend.as_ref())
                .with_context(|| format!("quantizing {}", model.display()))?;
            println!(
                "wrote {} (encoder {encoder}, predictor {predictor}, {method:?}) in {:.1} s",
                out.display(),
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Bench(args) => bench(args),
        Cmd::Study(args) => study(args),
        Cmd::Fit(args) => fit(args),
        Cmd::Profile(args) => profile(args),
        Cmd::Synth {
            arch,
            preset,
            out,
            seed,
        } => {
            if arch != "dinowm" {
                bail!("--arch '{arch}': the only architecture is dinowm");
            }
            let a = qwm::synth::Arch::preset(&preset)?;
            let t0 = Instant::now();
            let like = qwm::bundle::read_manifest(Path::new("models/wall")).ok();
            let m = qwm::synth::write_bundle(&a, &out, seed, like.as_ref())?;
            println!(
                "wrote {} ({}: {} px, {} tokens x {}, num_hist {}; encoder {}, predictor {}) in {:.1} s",
                out.display(),
                preset,
                m.image_size,
                m.num_patches,
                m.visual_dim,
                m.num_hist,
                qwm::profile::fmt_bytes(m.graphs.encoder.bytes),
                qwm::profile::fmt_bytes(m.graphs.predictor.bytes),
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Report { results, out, font } => {
            let mut files = Vec::new();
            for r in &results {
                if r.is_dir() {
                    let f = qwm::study::results_files(r)?;
                    if f.is_empty() {
                        bail!("{}: no results*.jsonl in this folder", r.display());
                    }
                    files.extend(f);
                } else if r.exists() {
                    files.push(r.clone());
                } else {
                    bail!("{}: no such results file or study folder", r.display());
                }
            }
            let cells = qwm::study::read_results(&files)?;
            let written = qwm::study::report::write_report(&cells, &out, font.as_deref())?;
            println!(
                "qwm report: {} cells from {} file(s) -> {} ({} files)",
                cells.len(),
                files.len(),
                out.join("report.md").display(),
                written.len()
            );
            Ok(())
        }
        Cmd::Verify {
            model,
            backend,
            threads,
            ort_lib,
            json,
        } => {
            let b = Bundle::open(&model)?;
            let be = make_backend_with(&backend, ort_lib.as_deref())?;
            let r = qwm::verify::verify(&b, be.as_ref(), threads.max(1))?;
            println!("{} on {}:", model.display(), r.backend);
            for c in &r.checks {
                println!(
                    "  {:28} rel err {:9.2e}  (tol {:.0e})  {}",
                    c.output,
                    c.rel_err,
                    c.tol,
                    if c.pass { "ok" } else { "FAIL" }
                );
            }
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            if !r.pass() {
                bail!(
                    "{}: {} of {} outputs differ from PyTorch beyond tolerance",
                    model.display(),
                    r.checks.iter().filter(|c| !c.pass).count(),
                    r.checks.len()
                );
            }
            Ok(())
        }
        Cmd::Inspect { model } => {
            let b = Bundle::open(&model)?;
            let m = &b.manifest;
            println!(
                "bundle {} (format {}), env {}",
                model.display(),
                m.format_version,
                m.env
            );
            println!("  image {}x{}, {} tokens x {} + proprio emb {}{}, num_hist {}, frameskip {}, action {}x{}",
                m.image_size, m.image_size, m.num_patches, m.visual_dim, m.proprio_emb_dim,
                if m.proprio_tokens > 1 { format!(" per token (x{})", m.proprio_tokens) } else { String::new() },
                m.num_hist, m.frameskip, m.action_dim, m.frameskip);
            for (role, g) in [
                ("encoder", &m.graphs.encoder),
                ("predictor", &m.graphs.predictor),
            ] {
                println!("  {role}: {} ({} bytes, sha256 ok)", g.file, g.bytes);
                for t in &g.inputs {
                    println!("    in  {} {:?}", t.name, t.shape);
                }
                for t in &g.outputs {
                    println!("    out {} {:?}", t.name, t.shape);
                }
            }
            for module in ["encoder", "predictor"] {
                let q = &m.quantization[module];
                println!(
                    "  {module}: scheme {} method {} form {}",
                    q["scheme"].as_str().unwrap_or("float"),
                    q["method"].as_str().unwrap_or("-"),
                    q["form"].as_str().unwrap_or("-")
                );
                let (mut packed, mut float) = (0u64, 0u64);
                for l in q["layers"].as_array().map(|v| v.as_slice()).unwrap_or(&[]) {
                    packed += l["weight_bytes_packed"].as_u64().unwrap_or(0);
                    float += l["weight_bytes_float"].as_u64().unwrap_or(0);
                    println!(
                        "    {:<32} {:>4}x{:<4} w{} {:<9} scales [{:.2e}, {:.2e}] act {}{}",
                        l["node"].as_str().unwrap_or("?"),
                        l["shape"][0],
                        l["shape"][1],
                        l["weight_bits"],
                        l["group"]
                            .as_u64()
                            .map(|g| format!("group {g}"))
                            .unwrap_or_else(|| "per-chan".into()),
                        l["scale_range"][0].as_f64().unwrap_or(f64::NAN),
                        l["scale_range"][1].as_f64().unwrap_or(f64::NAN),
                        l["activation"],
                        l["lowering"]
                            .as_str()
                            .map(|o| format!(" -> {o}"))
                            .unwrap_or_default(),
                    );
                }
                if float > 0 {
                    let note = if q["form"] == "deploy" {
                        "deploy form: integer / packed operators"
                    } else {
                        "simulate form: weights expanded to float when loaded"
                    };
                    println!(
                        "    quantized Linear weights: {} packed vs {} float ({note})",
                        qwm::profile::fmt_bytes(packed),
                        qwm::profile::fmt_bytes(float)
                    );
                }
            }
            Ok(())
        }
    }
}

fn write_png(path: &Path, f: &qwm::env::Frame) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        f.width as u32,
        f.height as u32,
    );
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?
        .write_image_data(&f.data)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn default_threads(flag: Option<usize>) -> Result<usize> {
    let threads = flag.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 || threads > 256 {
        bail!("--threads {threads} must be in 1..=256");
    }
    Ok(threads)
}

/// Threads, backend name and memory limit after applying a board profile under explicit flags.
fn resolve_run_settings(run: &RunArgs) -> Result<(usize, String, Option<u64>)> {
    let (threads, backend, target, mem_limit) = (
        run.threads,
        run.backend.as_deref(),
        run.target.as_deref(),
        run.mem_limit.as_deref(),
    );
    let profile = target.map(qwm::target::load).transpose()?;
    if let Some(p) = &profile {
        if !p.triple.starts_with(qwm::target::host_arch()) {
            log::warn!(
                "--target {}: profile is for {}, this qwm runs on {}",
                p.name,
                p.triple,
                qwm::target::host_arch()
            );
        }
    }
    let threads = default_threads(threads.or(profile.as_ref().map(|p| p.threads)))?;
    let backend = backend
        .map(str::to_string)
        .or(profile.as_ref().map(|p| p.backend.clone()))
        .unwrap_or_else(|| "tract".into());
    let limit = match (mem_limit, &profile) {
        (Some(m), _) => Some(qwm::mem::parse_size(m, "--mem-limit")?),
        (None, Some(p)) => Some(p.memory_budget_bytes()?),
        (None, None) => None,
    };
    if let Some(l) = limit {
        let now = qwm::mem::current_bytes() as u64;
        if l <= now {
            bail!(
                "--mem-limit {}: qwm already uses {} before loading anything; raise the limit",
                qwm::profile::fmt_bytes(l),
                qwm::profile::fmt_bytes(now)
            );
        }
        qwm::mem::set_limit(l as usize);
    }
    Ok((threads, backend, limit))
}

/// One row of `qwm bench --model A --model B ...`.
#[derive(serde::Serialize)]
struct CompareRow {
    model: PathBuf,
    form: String,
    predictor: Option<qwm::bench::BenchResult>,
    encoder: Option<qwm::bench::BenchResult>,
}

fn bench_compare(args: &BenchArgs, threads: usize, backend: &str) -> Result<()> {
    let graphs: Vec<&str> = match args.graph.as_deref() {
        None | Some("both") => vec!["predictor", "encoder"],
        Some(g @ ("predictor" | "encoder")) => vec![g],
        Some(other) => bail!("--graph {other}: expected predictor, encoder or both"),
    };
    let exe = std::env::current_exe().context("locating the qwm executable")?;
    let tmp = std::env::temp_dir().join(format!("qwm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut rows = vec![];
    for model in &args.model {
        let b = Bundle::open(model)?;
        let q = &b.manifest.quantization;
        let desc = |m: &str| {
            let scheme = q[m]["scheme"].as_str().unwrap_or("float");
            match q[m]["form"].as_str() {
                Some(f) if scheme != "float" => format!("{scheme} {f}"),
                _ => scheme.to_string(),
            }
        };
        let (e, p) = (desc("encoder"), desc("predictor"));
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
            cmd.args(["--graph", g, "--backend", backend]);
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
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
            let r: qwm::bench::BenchResult = serde_json::from_value(v["qwm"].clone())?;
            eprintln!("  {} {g}: {:.1} items/s", model.display(), r.items_per_s);
            if *g == "encoder" {
                row.encoder = Some(r);
            } else {
                row.predictor = Some(r);
            }
        }
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&tmp);
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
        let thr =
            |x: &Option<qwm::bench::BenchResult>, b: &Option<qwm::bench::BenchResult>| match (x, b)
            {
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
                    qwm::profile::fmt_bytes(m.resident_bytes()),
                    ratio(m.resident_bytes() as f64, b.resident_bytes() as f64)
                ),
                qwm::profile::fmt_bytes(m.load_peak_bytes()),
                qwm::profile::fmt_bytes(m.peak_rss_run),
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
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let (threads, backend_name, _) = resolve_run_settings(&args.run)?;
    if args.model.len() > 1 || args.graph.as_deref() == Some("both") {
        return bench_compare(&args, threads, &backend_name);
    }
    let model = args.model[0].clone();
    let graph = args.graph.clone().unwrap_or_else(|| "predictor".into());
    let bundle = Bundle::open(&model)?;
    let backend = make_backend_with(&backend_name, args.run.ort_lib.as_deref())?;
    let cfg = qwm::bench::BenchConfig {
        graph: graph.clone(),
        batch: args.batch,
        threads,
        iters: args.iters,
        warmup: args.warmup,
        seed: args.seed,
        low_mem: args.run.low_mem,
    };
    let r = qwm::bench::bench_graph(&bundle, backend.as_ref(), &cfg)?;
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
    let fb = qwm::profile::fmt_bytes;
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
        let p = qwm::bench::bench_python(
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
        let v = serde_json::json!({"qwm": r, "onnxruntime_python": py});
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn plan(args: PlanArgs) -> Result<()> {
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    let (threads, backend_name, mem_limit) = resolve_run_settings(&args.run)?;
    let planner: Box<dyn Planner> = match args.planner {
        PlannerKind::Cem => Box::new(Cem::new(
            args.samples,
            args.topk,
            args.opt_steps,
            args.var_scale,
        )?),
        PlannerKind::Mppi => Box::new(Mppi::new(
            args.samples,
            args.opt_steps,
            args.var_scale,
            args.temperature,
        )?),
    };
    let mut cfg = MpcConfig {
        horizon: args.horizon,
        n_taken: args.n_taken,
        max_iter: args.max_iter,
        chunk: args.chunk.unwrap_or(args.samples),
    };
    cfg.validate()?;
    if let Some(path) = &args.json {
        // Fail now, not after the episodes, when the report cannot be written.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, b"")
            .with_context(|| format!("--json: cannot write {}", path.display()))?;
        let _ = std::fs::remove_file(&tmp);
    }
    let backend = make_backend_with(&backend_name, args.run.ort_lib.as_deref())?;
    let t0 = Instant::now();
    let bundle = Bundle::open(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let env_name = args
        .env
        .clone()
        .unwrap_or_else(|| bundle.manifest.env.clone());
    if env_name != bundle.manifest.env {
        bail!(
            "--env {env_name}: the model in {} was trained on '{}'",
            args.model.display(),
            bundle.manifest.env
        );
    }
    let mut env = qwm::env::make_env(&env_name)?;
    if env.action_dim() != bundle.manifest.action_dim
        || env.proprio_dim() != bundle.manifest.proprio_dim
    {
        bail!(
            "model {} does not match environment {env_name}'s action/proprio sizes",
            args.model.display()
        );
    }
    let mut wm = WorldModel::load(&bundle, backend.as_ref(), &args.run.load_options(threads))?;
    drop(bundle);
    let load_time_s = t0.elapsed().as_secs_f64();
    let load_peak = qwm::profile::peak_rss_bytes();
    println!(
        "qwm plan: model {} on {} ({} threads), {:?} {} samples, top-k {}, {} opt steps, horizon {}, {} taken, max {} MPC steps, {} episodes",
        args.model.display(), backend_name, threads, args.planner, args.samples, args.topk, args.opt_steps, args.horizon, args.n_taken, args.max_iter, args.episodes
    );
    if let Some(l) = mem_limit {
        // Predict the peak of one CEM chunk and fit the chunk to the limit (results do not depend
        // on the chunk; only speed and memory do).
        let cost = qwm::budget::measure(&mut wm, threads)?;
        let (fit, predicted) =
            qwm::budget::choose_chunk(&cost, &wm, l as usize, args.samples, args.horizon)?;
        if let Some(c) = args.chunk {
            if c > fit {
                bail!(
                    "--chunk {c} does not fit --mem-limit {}: at most {fit} candidates per predictor call fit ({:.0} bytes per candidate); lower --chunk or raise the limit",
                    qwm::profile::fmt_bytes(l),
                    cost.per_candidate
                );
            }
        } else {
            cfg.chunk = fit;
        }
        println!(
            "  memory limit {} (heap after load {}): {} candidates per predictor call, predicted heap peak {}",
            qwm::profile::fmt_bytes(l),
            qwm::profile::fmt_bytes(qwm::mem::current_bytes() as u64),
            cfg.chunk,
            qwm::profile::fmt_bytes(predicted as u64)
        );
    }
    if let Some(dir) = &args.save_frames {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--save-frames: cannot create {}", dir.display()))?;
    }
    let pb = ProgressBar::new(args.episodes as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} episodes [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("template"),
    );
    let mut results: Vec<qwm::episode::EpisodeResult> = match (&args.json, args.resume) {
        (Some(path), true) if path.exists() => previous_episodes(path, &args)?,
        _ => Vec::new(),
    };
    if !results.is_empty() {
        println!(
            "resuming {}: {} of {} episodes already done",
            args.json.as_ref().expect("resume requires json").display(),
            results.len(),
            args.episodes
        );
        for r in &results {
            let line = qwm::report::episode_line(r);
            if pb.is_hidden() {
                println!("{line}");
            } else {
                pb.println(line);
            }
        }
        pb.set_position(results.len() as u64);
    }
    let config = serde_json::json!({"args": &args, "threads": threads, "env": env_name});
    let write_report = |results: &[qwm::episode::EpisodeResult], complete: bool| -> Result<()> {
        let Some(path) = &args.json else {
            return Ok(());
        };
        let report = qwm::report::PlanReport {
            qwm_version: env!("CARGO_PKG_VERSION").to_string(),
            config: config.clone(),
            load_time_s,
            load_peak_rss_bytes: load_peak,
            episodes: results.to_vec(),
            summary: qwm::report::summarize(results, qwm::profile::peak_rss_bytes()),
            complete,
        };
        let text = serde_json::to_string_pretty(&report)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .with_context(|| format!("--json: cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("--json: cannot write {}", path.display()))?;
        Ok(())
    };
    // Start-up to the first plan: process start to the first episode's first action (loading, the
    // first observation's encoding and the first CEM plan; the reset and render, microseconds,
    // are left out).
    let mut first_plan_s: Option<f64> = None;
    for i in results.len()..args.episodes {
        let task_seed = 99 * (args.seed + i as u64) + 1;
        let mut frames = args.save_frames.as_ref().map(|_| Vec::new());
        let episode_started = Instant::now();
        let r = run_episode(
            &mut wm,
            env.as_mut(),
            planner.as_ref(),
            &cfg,
            i,
            task_seed,
            args.seed,
            frames.as_mut(),
        )
        .with_context(|| format!("episode {i} (task seed {task_seed})"))?;
        if let (Some(dir), Some(frames)) = (&args.save_frames, frames) {
            let ed = dir.join(format!("episode_{i:03}"));
            std::fs::create_dir_all(&ed).with_context(|| format!("creating {}", ed.display()))?;
            for (k, f) in frames.iter().enumerate() {
                write_png(&ed.join(format!("frame_{k:03}.png")), f)?;
            }
            env.reset_to(&r.task)?;
            write_png(
                &ed.join("goal.png"),
                &env.render_state(&r.task.goal, wm.manifest.image_size),
            )?;
            write_png(
                &ed.join("final.png"),
                &env.render_state(&r.final_state, wm.manifest.image_size),
            )?;
        }
        if first_plan_s.is_none() {
            if let (Some(t), Some(start)) = (r.timings.first(), STARTED.get()) {
                let before = episode_started.duration_since(*start).as_secs_f64();
                first_plan_s = Some(before + t.encode_s + t.plan_s);
            }
        }
        let line = qwm::report::episode_line(&r);
        if pb.is_hidden() {
            println!("{line}");
        } else {
            pb.println(line);
        }
        results.push(r);
        write_report(&results, results.len() == args.episodes)?;
        let ok = results.iter().filter(|e| e.success).count();
        pb.set_message(format!("success {ok}/{}", results.len()));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let summary = qwm::report::summarize(&results, qwm::profile::peak_rss_bytes());
    println!(
        "{}",
        qwm::report::summary_text(&summary, load_time_s, load_peak)
    );
    if let Some(s) = first_plan_s {
        println!("  start-up to 1st plan  {s:.3} s (process start to the first action)");
    }
    write_report(&results, true)?;
    Ok(())
}

fn profile(args: ProfileArgs) -> Result<()> {
    use qwm::profile::fmt_bytes;
    let (threads, backend_name, mem_limit) = resolve_run_settings(&args.run)?;
    let planner = Cem::new(args.samples, args.topk, args.opt_steps, 1.0)?;
    let mut cfg = MpcConfig {
        horizon: args.horizon,
        n_taken: args.horizon.min(5),
        max_iter: args.max_iter,
        chunk: args.chunk.unwrap_or(args.samples),
    };
    cfg.validate()?;
    let backend = make_backend_with(&backend_name, args.run.ort_lib.as_deref())?;
    let heap0 = qwm::mem::current_bytes() as u64;
    let t0 = Instant::now();
    let bundle = Bundle::open(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let mut wm = WorldModel::load(&bundle, backend.as_ref(), &args.run.load_options(threads))?;
    let load_s = t0.elapsed().as_secs_f64();
    let heap_loaded = qwm::mem::current_bytes() as u64;
    let rss_loaded = qwm::profile::rss_bytes();
    let file_bytes = bundle.file_bytes();
    if let Some(l) = mem_limit {
        let cost = qwm::budget::measure(&mut wm, threads)?;
        let (fit, _) =
            qwm::budget::choose_chunk(&cost, &wm, l as usize, args.samples, args.horizon)?;
        cfg.chunk = args.chunk.unwrap_or(fit).min(fit);
    }
    let mut env = qwm::env::make_env(&bundle.manifest.env)?;
    qwm::mem::reset_peak();
    let heap_before = qwm::mem::current_bytes() as u64;
    let r = run_episode(&mut wm, env.as_mut(), &planner, &cfg, 0, 1, 0, None)
        .context("the timed planning episode")?;
    let heap_peak = qwm::mem::peak_bytes() as u64;
    let steps = r.timings.len().max(1) as f64;
    let sum =
        |f: &dyn Fn(&qwm::episode::StepTiming) -> f64| r.timings.iter().map(f).sum::<f64>() / steps;
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
        cfg.chunk,
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
        fmt_bytes(qwm::profile::peak_rss_bytes()),
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
        let part = cfg.chunk.div_ceil(threads);
        for (graph, batch) in [(&bundle.encoder, 1), (&bundle.predictor, cfg.chunk)] {
            let p = op_profile(&backend_name, &args, graph, batch, part, threads)?;
            println!(
                "operators of {} at batch {} ({}): {:.2} ms per call",
                p.graph,
                p.batch,
                if backend_name == "tract" {
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
            "chunk": cfg.chunk,
            "load_s": load_s,
            "file_bytes": file_bytes,
            "weights_resident_bytes": heap_loaded.saturating_sub(heap0),
            "activation_peak_bytes": heap_peak.saturating_sub(heap_before),
            "heap_peak_bytes": heap_peak,
            "rss_after_load_bytes": rss_loaded,
            "peak_rss_bytes": qwm::profile::peak_rss_bytes(),
            "mem_limit_bytes": mem_limit,
            "per_mpc_step_s": {"encoder": enc, "predictor": pred, "planner": plan_s - pred, "env": env_s, "total": step},
            "operators": ops,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Per-operator profile of one graph: tract evaluates its plan node by node at one thread's
/// share of the batch (`part`); ONNX Runtime profiles whole calls with its own profiler.
fn op_profile(
    backend: &str,
    args: &ProfileArgs,
    graph: &qwm::bundle::MappedGraph,
    batch: usize,
    part: usize,
    threads: usize,
) -> Result<qwm::backend::OpProfile> {
    let _ = threads;
    match backend {
        "tract" => Ok(qwm::backend::tract::op_profile(
            graph,
            if batch == 1 { 1 } else { part },
            args.reps,
            args.top,
        )?),
        #[cfg(feature = "ort")]
        "ort" => Ok(
            qwm::backend::ort::OrtBackend::new(args.run.ort_lib.as_deref())?
                .op_profile(graph, batch, threads, args.reps, args.top)?,
        ),
        other => bail!("--backend {other}: no per-operator profile for this backend"),
    }
}

fn fit(args: FitArgs) -> Result<()> {
    use qwm::quant::fit;
    let budget = qwm::mem::parse_size(&args.mem_limit, "--mem-limit")?;
    let options = args
        .options
        .iter()
        .map(|o| qwm::quant::scheme::Scheme::parse(o, "--options"))
        .collect::<qwm::Result<Vec<_>>>()?;
    if options.is_empty() {
        bail!("--options: give at least one scheme");
    }
    let threads = default_threads(args.threads)?;
    let backend = make_backend_with(&args.backend, args.ort_lib.as_deref())?;
    let cfg = fit::FitConfig {
        options,
        tasks: args.tasks,
        candidates: args.candidates,
        horizon: 5,
        seed: args.seed,
        threads,
    };
    let t0 = Instant::now();
    let bundle = Bundle::open(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let mut fitter = fit::Fitter::new(bundle, backend.as_ref(), &cfg)?;
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "sensitivity {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("template"),
    );
    let analysis = fitter.analyze(backend.as_ref(), &|done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    let alloc = fit::allocate(&analysis, budget)?;
    let measured = fitter.measure_allocation(backend.as_ref(), &analysis, &alloc)?;
    println!(
        "qwm fit: {} under {} of weights ({} layers, {} probe situations x {} candidates, {:.1} s)",
        args.model.display(),
        qwm::profile::fmt_bytes(budget),
        analysis.layers.len(),
        args.tasks,
        args.candidates,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "  {:<11} {:<34} {:>9}  distortion per option ({})",
        "module",
        "layer",
        "choice",
        analysis.options.join(" / ")
    );
    for (l, &c) in analysis.layers.iter().zip(&alloc.choice) {
        println!(
            "  {:<11} {:<34} {:>9}  {}",
            l.module,
            l.node,
            analysis.options[c],
            l.distortion
                .iter()
                .map(|d| format!("{d:.1e}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "  {:<16} {:>10} {:>12} {:>10}",
        "model", "weights", "distortion", "rank corr"
    );
    for m in analysis.uniform.iter().chain(std::iter::once(&measured)) {
        println!(
            "  {:<16} {:>10} {:>12.3e} {:>10.4}{}",
            m.name,
            qwm::profile::fmt_bytes(m.bytes),
            m.distortion,
            m.rank_correlation,
            if m.bytes > budget {
                "  (over budget)"
            } else {
                ""
            }
        );
    }
    println!(
        "  fit: predicted distortion {:.3e} (sum of layers), measured {:.3e}",
        alloc.predicted_distortion, measured.distortion
    );
    let uniform = analysis
        .uniform
        .iter()
        .zip(&cfg.options)
        .filter(|(m, _)| m.bytes <= budget)
        .max_by_key(|(m, _)| m.bytes);
    // Write the fitted bundle.
    let layer_schemes: std::collections::BTreeMap<String, qwm::quant::scheme::Scheme> =
        fit::allocation_schemes(&analysis, &alloc)?
            .into_iter()
            .collect();
    if layer_schemes.values().all(|s| s.is_float()) {
        bail!(
            "the float model's weights fit --mem-limit {}: nothing to quantize",
            args.mem_limit
        );
    }
    let qcfg = |out: &Path, enc, pred, layers| qwm::quant::QuantizeConfig {
        model: args.model.clone(),
        out: out.to_path_buf(),
        method: qwm::quant::Method::Rtn,
        encoder: enc,
        predictor: pred,
        calib_episodes: 1,
        calib_iters: 1,
        calib_samples: 16,
        smooth_alpha: 0.5,
        threads,
        form: Default::default(),
        accuracy_level: 0,
        layer_schemes: layers,
    };
    let float = qwm::quant::scheme::Scheme::FLOAT;
    let tract = make_backend("tract")?;
    qwm::quant::quantize_bundle(
        &qcfg(&args.out, float, float, layer_schemes),
        tract.as_ref(),
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    let report = serde_json::json!({
        "model": args.model.display().to_string(),
        "budget_bytes": budget,
        "analysis": analysis,
        "allocation": alloc,
        "measured": measured,
        "probe": {"tasks": args.tasks, "candidates": args.candidates, "horizon": 5, "seed": args.seed},
    });
    let fit_json = args.out.join("fit.json");
    std::fs::write(&fit_json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", fit_json.display()))?;
    println!("wrote {} (and {})", args.out.display(), fit_json.display());
    let Some((u, scheme)) = uniform else {
        println!(
            "no uniform scheme among --options fits {}: nothing to compare with",
            args.mem_limit
        );
        return Ok(());
    };
    let mut uname = args.out.as_os_str().to_os_string();
    uname.push(format!("-uniform-{scheme}"));
    let uniform_dir = PathBuf::from(uname);
    qwm::quant::quantize_bundle(
        &qcfg(&uniform_dir, *scheme, *scheme, Default::default()),
        tract.as_ref(),
    )
    .with_context(|| format!("writing {}", uniform_dir.display()))?;
    println!(
        "wrote {} ({}, the largest uniform scheme within the budget: {})",
        uniform_dir.display(),
        u.name,
        qwm::profile::fmt_bytes(u.bytes)
    );
    if args.episodes == 0 {
        return Ok(());
    }
    let mut rates = Vec::new();
    for (name, dir) in [("fit", &args.out), ("uniform", &uniform_dir)] {
        let json = dir.join("plan.json");
        plan(PlanArgs {
            model: dir.clone(),
            env: None,
            episodes: args.episodes,
            seed: args.seed,
            planner: PlannerKind::Cem,
            samples: 300,
            topk: 30,
            opt_steps: 10,
            horizon: 5,
            n_taken: 5,
            max_iter: 10,
            var_scale: 1.0,
            temperature: 0.1,
            chunk: None,
            run: RunArgs {
                threads: Some(threads),
                backend: Some(args.backend.clone()),
                ort_lib: args.ort_lib.clone(),
                ..RunArgs::default()
            },
            json: Some(json.clone()),
            resume: true,
            save_frames: None,
        })
        .with_context(|| format!("planning with the {name} bundle"))?;
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
        rates.push((
            name,
            v["summary"]["success_rate"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    println!(
        "fit check over {} episodes: fit success {:.2} ({}), uniform {} success {:.2} ({})",
        args.episodes,
        rates[0].1,
        qwm::profile::fmt_bytes(alloc.bytes),
        scheme,
        rates[1].1,
        qwm::profile::fmt_bytes(u.bytes)
    );
    Ok(())
}

fn study(args: StudyArgs) -> Result<()> {
    let mut config = qwm::study::StudyConfig::load(&args.config)?;
    if let Some(e) = args.episodes {
        if e == 0 {
            bail!("--episodes must be at least 1");
        }
        config.episodes = e;
        for g in &mut config.grid {
            g.episodes = Some(e);
        }
    }
    if let Some(b) = &args.backend {
        config.backend = b.clone();
        config.validate().context("--backend")?;
    }
    let shard = args
        .shard
        .as_deref()
        .map(qwm::study::Shard::parse)
        .transpose()?;
    let cells = config.cells();
    if args.list {
        let cells = match shard {
            Some(s) => s.select(&cells),
            None => cells,
        };
        for c in &cells {
            println!(
                "{:<44} bundle {:<28} {} episodes",
                c.id,
                c.bundle_name().unwrap_or_else(|| "(float model)".into()),
                c.episodes
            );
        }
        println!("{} cells", cells.len());
        return Ok(());
    }
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = default_threads(
        args.threads
            .or(config.threads)
            .or(Some((cores / args.jobs).max(1))),
    )?;
    let out = match (&args.out, &config.out) {
        (Some(o), _) => o.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => PathBuf::from("study").join(
            args.config
                .file_stem()
                .map(|s| s.to_os_string())
                .unwrap_or_else(|| "study".into()),
        ),
    };
    let opts = qwm::study::run::StudyOptions {
        config,
        out: out.clone(),
        jobs: args.jobs,
        threads,
        shard,
        qwm: std::env::current_exe().context("locating the qwm executable for cell processes")?,
        ort_lib: args.ort_lib.clone(),
    };
    let outcome = qwm::study::run::run_study(&opts)?;
    println!(
        "qwm study: {} of {} cells finished now, {} earlier, {} failed; results in {}",
        outcome.finished.len(),
        outcome.cells,
        outcome.already_done,
        outcome.failed.len(),
        outcome.results_file.display()
    );
    if !outcome.failed.is_empty() {
        for (id, log) in &outcome.failed {
            eprintln!("  failed: {id} (log {})", log.display());
        }
        bail!(
            "{} cells failed; rerun the same command to retry them",
            outcome.failed.len()
        );
    }
    if shard.is_none() && !args.no_report {
        let results = qwm::study::read_results(&qwm::study::results_files(&out)?)?;
        let dir = out.join("report");
        qwm::study::report::write_report(&results, &dir, args.font.as_deref())?;
        println!("report: {}", dir.join("report.md").display());
    }
    Ok(())
}

/// Finished episodes of an interrupted `--json` report, if it was written with the same settings.
fn previous_episodes(path: &Path, args: &PlanArgs) -> Result<Vec<qwm::episode::EpisodeResult>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--resume: cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--resume: {} is not a qwm plan report", path.display()))?;
    let mut want = serde_json::to_value(args)?;
    let mut have = v["config"]["args"].clone();
    for a in [&mut want, &mut have] {
        if let Some(o) = a.as_object_mut() {
            o.remove("resume");
            o.remove("episodes");
        }
    }
    if want != have {
        bail!(
            "--resume: {} was written with different settings ({}); use another --json file or drop --resume",
            path.display(),
            have
        );
    }
    let eps: Vec<qwm::episode::EpisodeResult> = serde_json::from_value(v["episodes"].clone())
        .with_context(|| format!("--resume: episodes in {} are unreadable", path.display()))?;
    if eps.len() > args.episodes {
        bail!(
            "--resume: {} already has {} episodes, more than --episodes {}",
            path.display(),
            eps.len(),
            args.episodes
        );
    }
    Ok(eps)
}
