//! `qwm plan`: headless MPC episodes with a world model, a human summary and a JSON report
//! (rewritten after every episode; `--resume` continues an interrupted run).

use super::args::resolve_run_settings;
use super::STARTED;
use crate::bundle::Bundle;
use crate::engine::make_backend_with;
use crate::runtime::controller::Controller;
use crate::runtime::episode::run_episode;
use crate::runtime::report::{PlanConfig, PlanReport, Summary};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::Instant;

pub use crate::runtime::settings::PlanArgs;

/// Run `qwm plan`; returns the summary it printed.
pub fn plan(args: PlanArgs) -> Result<Summary> {
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    let (threads, backend_name, mem_limit) = resolve_run_settings(&args.run)?;
    let c = &args.control;
    // The settings' errors before anything is loaded, in the order the flags are checked.
    crate::runtime::controller::make_planner(c)?;
    let shape = crate::runtime::controller::PlanShape {
        horizon: c.horizon,
        n_taken: c.n_taken,
        chunk: c.chunk.unwrap_or(c.samples),
    };
    if shape.horizon > 0 && (1..=shape.horizon).contains(&shape.n_taken) && args.max_iter == 0 {
        bail!("--max-iter must be at least 1");
    }
    shape.validate()?;
    if let Some(path) = &args.json {
        // Fail now, not after the episodes, when the report cannot be written (touching
        // nothing but a temporary file of its own).
        crate::util::fs::check_writable(path)
            .with_context(|| format!("--json: cannot write {}", path.display()))?;
    }
    let backend = make_backend_with(backend_name, args.run.ort_lib.as_deref())?;
    let t0 = Instant::now();
    let bundle = Bundle::open(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let env_name = args
        .env
        .map(|e| e.name().to_string())
        .unwrap_or_else(|| bundle.manifest.env.clone());
    if env_name != bundle.manifest.env {
        bail!(
            "--env {env_name}: the model in {} was trained on '{}'",
            args.model.display(),
            bundle.manifest.env
        );
    }
    let mut env = crate::env::make_env(&env_name)?;
    if env.action_dim() != bundle.manifest.action_dim
        || env.proprio_dim() != bundle.manifest.proprio_dim
    {
        bail!(
            "model {} does not match environment {env_name}'s action/proprio sizes",
            args.model.display()
        );
    }
    let mut ctl = Controller::load(
        &bundle,
        backend.as_ref(),
        &args.run.load_options(threads),
        c,
        mem_limit,
        args.seed,
    )?;
    drop(bundle);
    let load_time_s = t0.elapsed().as_secs_f64();
    let load_peak = crate::util::proc::peak_rss_bytes();
    println!(
        "qwm plan: model {} on {} ({} threads), {:?} {} samples, top-k {}, {} opt steps, horizon {}, {} taken, max {} MPC steps, {} episodes",
        args.model.display(), backend_name, threads, c.planner, c.samples, c.topk, c.opt_steps, c.horizon, c.n_taken, args.max_iter, args.episodes
    );
    if let Some(fit) = ctl.budget() {
        println!(
            "  memory limit {} (heap after load {}): {} candidates per predictor call, predicted heap peak {}",
            crate::util::fmt::fmt_bytes(fit.limit_bytes),
            crate::util::fmt::fmt_bytes(crate::util::mem::current_bytes() as u64),
            fit.chunk,
            crate::util::fmt::fmt_bytes(fit.predicted_peak_bytes as u64)
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
    let mut results: Vec<crate::runtime::episode::EpisodeResult> = match (&args.json, args.resume) {
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
            let line = crate::runtime::report::episode_line(r);
            if pb.is_hidden() {
                println!("{line}");
            } else {
                pb.println(line);
            }
        }
        pb.set_position(results.len() as u64);
    }
    let config = PlanConfig {
        args: args.clone(),
        env: env_name.clone(),
        threads,
    };
    let write_report =
        |results: &[crate::runtime::episode::EpisodeResult], complete: bool| -> Result<()> {
            let Some(path) = &args.json else {
                return Ok(());
            };
            let report = crate::runtime::report::PlanReport {
                qwm_version: env!("CARGO_PKG_VERSION").to_string(),
                config: config.clone(),
                load_time_s,
                load_peak_rss_bytes: load_peak,
                episodes: results.to_vec(),
                summary: crate::runtime::report::summarize(
                    results,
                    crate::util::proc::peak_rss_bytes(),
                ),
                complete,
            };
            let text = serde_json::to_string_pretty(&report)?;
            crate::util::fs::write_atomic(path, text.as_bytes())
                .with_context(|| format!("--json: cannot write {}", path.display()))?;
            Ok(())
        };
    // Start-up to the first plan: process start to the first episode's first action (loading, the
    // first observation's encoding and the first CEM plan; the reset and render, microseconds,
    // are left out).
    let mut first_plan_s: Option<f64> = None;
    for i in results.len()..args.episodes {
        let task_seed = crate::env::TaskSeeds::evaluation(args.seed, i);
        let mut frames = args.save_frames.as_ref().map(|_| Vec::new());
        let episode_started = Instant::now();
        let r = run_episode(
            &mut ctl,
            env.as_mut(),
            args.max_iter,
            i,
            task_seed,
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
                &env.render_state(&r.task.goal, ctl.model().manifest.image_size),
            )?;
            write_png(
                &ed.join("final.png"),
                &env.render_state(&r.final_state, ctl.model().manifest.image_size),
            )?;
        }
        if first_plan_s.is_none() {
            if let (Some(t), Some(start)) = (r.timings.first(), STARTED.get()) {
                let before = episode_started.duration_since(*start).as_secs_f64();
                first_plan_s = Some(before + t.encode_s + t.plan_s);
            }
        }
        let line = crate::runtime::report::episode_line(&r);
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
    let summary = crate::runtime::report::summarize(&results, crate::util::proc::peak_rss_bytes());
    println!(
        "{}",
        crate::runtime::report::summary_text(&summary, load_time_s, load_peak)
    );
    if let Some(s) = first_plan_s {
        println!("  start-up to 1st plan  {s:.3} s (process start to the first action)");
    }
    write_report(&results, true)?;
    Ok(summary)
}

/// Finished episodes of an interrupted `--json` report, if it was written with the same settings.
pub fn previous_episodes(
    path: &Path,
    args: &PlanArgs,
) -> Result<Vec<crate::runtime::episode::EpisodeResult>> {
    let report = PlanReport::read(path).context("--resume")?;
    // The episode count and --resume itself may differ between the runs.
    let comparable = |a: &PlanArgs| PlanArgs {
        episodes: 0,
        resume: false,
        ..a.clone()
    };
    let have = &report.config.args;
    if comparable(args) != comparable(have) {
        bail!(
            "--resume: {} was written with different settings ({}); use another --json file or drop --resume",
            path.display(),
            serde_json::to_string(have)?
        );
    }
    let eps = report.episodes;
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

pub fn write_png(path: &Path, f: &crate::env::Frame) -> Result<()> {
    let mut png_bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut png_bytes, f.width as u32, f.height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?
        .write_image_data(&f.data)
        .with_context(|| format!("encoding {}", path.display()))?;
    crate::util::fs::write_atomic(path, &png_bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
