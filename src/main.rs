//! The `qwm` command line: clap definitions and glue; each subcommand calls library entry points.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use qwm::backend::{make_backend, LoadOptions};
use qwm::bundle::Bundle;
use qwm::episode::{run_episode, MpcConfig};
use qwm::model::WorldModel;
use qwm::plan::{cem::Cem, mppi::Mppi, Planner, PlannerKind};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
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
    Dataset {
        /// Environment.
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
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Post-training quantization of a float bundle into a new bundle (QDQ "simulate" form).
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
        /// Form: simulate (faithful QDQ). `deploy` is not available yet.
        #[arg(long, default_value = "simulate")]
        form: String,
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
    /// Show a bundle's manifest summary (and verify its files).
    Inspect {
        /// Bundle folder.
        model: PathBuf,
    },
}

#[derive(Args, Debug, serde::Serialize)]
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
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Execution engine: tract (default) or ort (ONNX Runtime; build with --features ort).
    #[arg(long, default_value = "tract")]
    backend: String,
    /// Path of libonnxruntime for --backend ort (else ORT_DYLIB_PATH, else the onnxruntime Python package).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write each episode's observed frames (and goal) as PNG files under this folder.
    #[arg(long)]
    save_frames: Option<PathBuf>,
}

fn main() {
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
            out,
        } => {
            let ds = qwm::env::dataset::generate(&env, episodes, steps, seed, image_size)?;
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
            calib_episodes,
            calib_iters,
            calib_samples,
            smooth_alpha,
            threads,
        } => {
            if form != "simulate" {
                bail!("--form {form}: only 'simulate' is available in this version");
            }
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
        Cmd::Inspect { model } => {
            let b = Bundle::open(&model)?;
            let m = &b.manifest;
            println!(
                "bundle {} (format {}), env {}",
                model.display(),
                m.format_version,
                m.env
            );
            println!("  image {}x{}, {} tokens x {} + proprio emb {}, num_hist {}, frameskip {}, action {}x{}",
                m.image_size, m.image_size, m.num_patches, m.visual_dim, m.proprio_emb_dim, m.num_hist, m.frameskip, m.action_dim, m.frameskip);
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
                        "    {:<32} {:>4}x{:<4} w{} {:<9} scales [{:.2e}, {:.2e}] act {}",
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
                    );
                }
                if float > 0 {
                    println!("    quantized Linear weights: {} packed vs {} float (resident in tract: float, simulate form)", qwm::profile::fmt_bytes(packed), qwm::profile::fmt_bytes(float));
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

fn plan(args: PlanArgs) -> Result<()> {
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 || threads > 256 {
        bail!("--threads {threads} must be in 1..=256");
    }
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
    let cfg = MpcConfig {
        horizon: args.horizon,
        n_taken: args.n_taken,
        max_iter: args.max_iter,
        chunk: args.chunk.unwrap_or(args.samples),
    };
    cfg.validate()?;
    let backend = qwm::backend::make_backend_with(&args.backend, args.ort_lib.as_deref())?;
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
    let mut wm = WorldModel::load(&bundle, backend.as_ref(), &LoadOptions { threads })?;
    drop(bundle);
    let load_time_s = t0.elapsed().as_secs_f64();
    let load_peak = qwm::profile::peak_rss_bytes();
    println!(
        "qwm plan: model {} on {} ({} threads), {:?} {} samples, top-k {}, {} opt steps, horizon {}, {} taken, max {} MPC steps, {} episodes",
        args.model.display(), args.backend, threads, args.planner, args.samples, args.topk, args.opt_steps, args.horizon, args.n_taken, args.max_iter, args.episodes
    );
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
    let mut results = Vec::new();
    for i in 0..args.episodes {
        let task_seed = 99 * (args.seed + i as u64) + 1;
        let mut frames = args.save_frames.as_ref().map(|_| Vec::new());
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
        let line = qwm::report::episode_line(&r);
        if pb.is_hidden() {
            println!("{line}");
        } else {
            pb.println(line);
        }
        results.push(r);
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
    if let Some(path) = &args.json {
        let report = qwm::report::PlanReport {
            qwm_version: env!("CARGO_PKG_VERSION").to_string(),
            config: serde_json::json!({"args": &args, "threads": threads, "env": env_name}),
            load_time_s,
            load_peak_rss_bytes: load_peak,
            episodes: results,
            summary,
        };
        let text = serde_json::to_string_pretty(&report)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .with_context(|| format!("--json: cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("--json: cannot write {}", path.display()))?;
    }
    Ok(())
}
