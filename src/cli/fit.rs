//! `qwm fit`: per-layer weight bits under a memory budget, the fitted bundle, and a planning check
//! against the best uniform scheme of at most the same size.

use super::args::{default_threads, RunArgs};
use super::plan::{plan, PlanArgs};
use crate::bundle::Bundle;
use crate::engine::{make_backend, make_backend_with};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct FitArgs {
    /// Float bundle.
    #[arg(long, default_value = "models/wall")]
    pub model: PathBuf,
    /// Budget for the weights at their bit width (quantized Linear weights as integer codes plus
    /// scales, all other parameters f32), e.g. 600K or 1M: what a deploy form keeps resident.
    #[arg(long)]
    pub mem_limit: String,
    /// Output bundle folder; the best uniform scheme that fits goes to OUT-uniform-SCHEME.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight-only schemes a layer may take (float is always allowed), comma-separated.
    #[arg(
        long,
        default_value = "w8,w6,w4-g32,w4,w3-g32,w3",
        value_delimiter = ','
    )]
    pub options: Vec<String>,
    /// Weight quantizer of every option: rtn, omse or gptq (Hessians from `qwm quantize`'s
    /// default calibration run of the float model).
    #[arg(long, value_enum, default_value_t = crate::quant::fit::FitMethod::Rtn)]
    pub method: crate::quant::fit::FitMethod,
    /// Probe situations (calibration task seeds 99 n + 2).
    #[arg(long, default_value_t = 8)]
    pub tasks: usize,
    /// Random candidate action sequences per situation.
    #[arg(long, default_value_t = 64)]
    pub candidates: usize,
    /// Seed of the candidates (and of the check episodes' planner).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Episodes planned with the fitted bundle and with the uniform one (0: skip the check).
    #[arg(long, default_value_t = 20)]
    pub episodes: usize,
    /// Execution engine: tract or ort.
    #[arg(long, value_enum, default_value_t = crate::engine::BackendKind::Tract)]
    pub backend: crate::engine::BackendKind,
    /// Worker threads (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Path of libonnxruntime for --backend ort.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

pub fn fit(args: FitArgs) -> Result<()> {
    use crate::quant::fit;
    let budget = crate::util::mem::parse_size(&args.mem_limit, "--mem-limit")?;
    let options = args
        .options
        .iter()
        .map(|o| crate::quant::scheme::Scheme::parse(o, "--options"))
        .collect::<crate::Result<Vec<_>>>()?;
    if options.is_empty() {
        bail!("--options: give at least one scheme");
    }
    let threads = default_threads(args.threads)?;
    let backend = make_backend_with(args.backend, args.ort_lib.as_deref())?;
    let cfg = fit::FitConfig {
        method: args.method,
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
        "qwm fit: {} under {} of weights ({} layers, {:?}, {} probe situations x {} candidates, {:.1} s)",
        args.model.display(),
        crate::util::fmt::fmt_bytes(budget),
        analysis.layers.len(),
        args.method,
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
            crate::util::fmt::fmt_bytes(m.bytes),
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
    let layer_schemes: std::collections::BTreeMap<String, crate::quant::scheme::Scheme> =
        fit::allocation_schemes(&analysis, &alloc)?
            .into_iter()
            .collect();
    if layer_schemes.values().all(|s| s.is_float()) {
        bail!(
            "the float model's weights fit --mem-limit {}: nothing to quantize",
            args.mem_limit
        );
    }
    // Weight-only RTN and OMSE calibrate nothing (the record says so); GPTQ calibrates as the
    // fit's probe did.
    let calib = match args.method {
        fit::FitMethod::Gptq | fit::FitMethod::Omniquant => fit::GPTQ_CALIBRATION,
        _ => (1, 1, 16),
    };
    let qcfg = |out: &Path, enc, pred, layers| crate::quant::QuantizeConfig {
        model: args.model.clone(),
        out: out.to_path_buf(),
        method: args.method.method(),
        encoder: enc,
        predictor: pred,
        calib_episodes: calib.0,
        calib_iters: calib.1,
        calib_samples: calib.2,
        smooth_alpha: 0.5,
        threads,
        form: Default::default(),
        accuracy_level: 0,
        layer_schemes: layers,
        gptq: Default::default(),
        omniquant: fit::omni_options(),
    };
    let float = crate::quant::scheme::Scheme::FLOAT;
    let tract = make_backend("tract")?;
    crate::quant::quantize_bundle(
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
        "method": args.method,
        "probe": {"tasks": args.tasks, "candidates": args.candidates, "horizon": 5, "seed": args.seed},
    });
    let fit_json = args.out.join("fit.json");
    crate::util::fs::write_atomic(&fit_json, serde_json::to_string_pretty(&report)?.as_bytes())
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
    crate::quant::quantize_bundle(
        &qcfg(&uniform_dir, *scheme, *scheme, Default::default()),
        tract.as_ref(),
    )
    .with_context(|| format!("writing {}", uniform_dir.display()))?;
    println!(
        "wrote {} ({}, the largest uniform scheme within the budget: {})",
        uniform_dir.display(),
        u.name,
        crate::util::fmt::fmt_bytes(u.bytes)
    );
    if args.episodes == 0 {
        return Ok(());
    }
    let mut rates = Vec::new();
    for (name, dir) in [("fit", &args.out), ("uniform", &uniform_dir)] {
        let json = dir.join("plan.json");
        let summary = plan(PlanArgs {
            model: dir.clone(),
            episodes: args.episodes,
            seed: args.seed,
            max_iter: 10,
            run: RunArgs {
                threads: Some(threads),
                backend: Some(args.backend),
                ort_lib: args.ort_lib.clone(),
                ..RunArgs::default()
            },
            json: Some(json.clone()),
            resume: true,
            ..PlanArgs::default()
        })
        .with_context(|| format!("planning with the {name} bundle"))?;
        rates.push((name, summary.success_rate));
    }
    println!(
        "fit check over {} episodes: fit success {:.2} ({}), uniform {} success {:.2} ({})",
        args.episodes,
        rates[0].1,
        crate::util::fmt::fmt_bytes(alloc.bytes),
        scheme,
        rates[1].1,
        crate::util::fmt::fmt_bytes(u.bytes)
    );
    Ok(())
}
