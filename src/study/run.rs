//! Running a study: quantize the bundles the pending cells need, then plan each cell in its own
//! `qwm plan` process (at most `jobs` at once), appending one JSON line per finished cell.
//!
//! Layout of the output folder:
//! - `study.json`: the settings every cell shares (a rerun with other settings is refused);
//! - `bundles/NAME/`: quantized bundles (written to a temporary folder, then renamed, so a killed
//!   quantization never leaves a half bundle);
//! - `cells/ID.json`: each cell's `qwm plan --json` report, rewritten after every episode (an
//!   interrupted cell resumes from it);
//! - `logs/`: each child's output;
//! - `results.jsonl` (or `results.shard-K-of-N.jsonl`): one [`CellResult`] line per finished cell.

use super::{Cell, CellResult, EpisodePoint, Shard, StudyConfig};
use crate::bundle::Bundle;
use crate::error::{QwmError, Result};
use crate::onnx::proto as onnx;
use crate::quant::scheme::Scheme;
use crate::quant::settings::QuantizeArgs;
use crate::runtime::report::PlanReport;
use crate::runtime::settings::{ControlArgs, PlanArgs, RunArgs};
use crate::util::stats::spearman;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How to run a study.
#[derive(Clone, Debug)]
pub struct StudyOptions {
    /// The grid and shared settings.
    pub config: StudyConfig,
    /// Output folder.
    pub out: PathBuf,
    /// Cell processes at once.
    pub jobs: usize,
    /// Threads per cell process.
    pub threads: usize,
    /// Run only this slice of the cells.
    pub shard: Option<Shard>,
    /// The qwm executable the children run (normally this one).
    pub qwm: PathBuf,
    /// libonnxruntime for --backend ort children.
    pub ort_lib: Option<PathBuf>,
}

/// What a study run did.
#[derive(Clone, Debug, Default)]
pub struct StudyOutcome {
    /// Cells in this run's slice.
    pub cells: usize,
    /// Cells already finished before this run.
    pub already_done: usize,
    /// Cells finished by this run.
    pub finished: Vec<CellResult>,
    /// Cells that failed, with the log to read.
    pub failed: Vec<(String, PathBuf)>,
    /// The results file appended to.
    pub results_file: PathBuf,
}

/// The settings that must not change between runs into the same folder (`study.json`).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct FixedSettings {
    backend: crate::engine::BackendKind,
    calib_episodes: usize,
    model: String,
    planner: super::PlannerSettings,
    threads: usize,
}

fn fixed_settings(opts: &StudyOptions) -> FixedSettings {
    let c = &opts.config;
    FixedSettings {
        backend: c.backend,
        calib_episodes: c.calib_episodes,
        model: c.model.display().to_string(),
        planner: c.planner.clone(),
        threads: opts.threads,
    }
}

fn check_study_file(opts: &StudyOptions) -> Result<()> {
    let path = opts.out.join("study.json");
    let want = fixed_settings(opts);
    let json = |s: &FixedSettings| serde_json::to_string(s).expect("json");
    if path.exists() {
        let text = crate::util::fs::read_text(&path).map_err(|e| QwmError::io(&path, e))?;
        let have: FixedSettings = serde_json::from_str(&text).map_err(|e| {
            QwmError::Usage(format!("{}: not a qwm study file: {e}", path.display()))
        })?;
        if have != want {
            return Err(QwmError::Usage(format!(
                "{} holds a study with other shared settings ({}); this run has {}. Use another --out folder",
                path.display(),
                json(&have),
                json(&want)
            )));
        }
        return Ok(());
    }
    write_atomic(
        &path,
        serde_json::to_string_pretty(&want)
            .expect("json")
            .as_bytes(),
    )
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::util::fs::write_atomic(path, bytes).map_err(|e| QwmError::io(path, e))
}

/// Bytes of the float32 weights of each graph of a bundle: (encoder, predictor).
pub fn float_weight_bytes(bundle_dir: &Path) -> Result<(u64, u64)> {
    let b = Bundle::open(bundle_dir)?;
    let e = onnx::decode(&b.encoder.bytes, &b.encoder.spec.file)?;
    let p = onnx::decode(&b.predictor.bytes, &b.predictor.spec.file)?;
    Ok((
        onnx::float_initializer_bytes(&e),
        onnx::float_initializer_bytes(&p),
    ))
}

/// An f32 of a report as its JSON text reads in f64 (`2.41` rather than the f32's exact
/// 2.4100000858...): the shortest decimal that gives the f32 back, as the report wrote it.
fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::NAN)
}

/// Build a cell's result from its finished `qwm plan --json` report and its bundle.
pub fn cell_result(
    cell: &Cell,
    report: &PlanReport,
    bundle_dir: &Path,
    float_bytes: u64,
) -> Result<CellResult> {
    let bad = |what: &str| QwmError::Usage(format!("cell {}: plan report {what}", cell.id));
    let eps = &report.episodes;
    if eps.len() < cell.episodes {
        return Err(bad(&format!(
            "has {} of {} episodes",
            eps.len(),
            cell.episodes
        )));
    }
    let per_episode: Vec<EpisodePoint> = eps
        .iter()
        .take(cell.episodes)
        .map(|e| EpisodePoint {
            success: e.success,
            final_distance: as_written(e.final_distance),
            final_objective: as_written(e.final_objective),
            mpc_steps: Some(e.mpc_steps),
        })
        .collect();
    let n = per_episode.len() as f64;
    let successes = per_episode.iter().filter(|p| p.success).count();
    let obj: Vec<f64> = per_episode.iter().map(|p| p.final_objective).collect();
    let dist: Vec<f64> = per_episode.iter().map(|p| p.final_distance).collect();
    let s = &report.summary;
    let manifest = crate::bundle::read_manifest(bundle_dir)?;
    let (mut packed, mut replaced) = (0u64, 0u64);
    for role in crate::bundle::Role::BOTH {
        let (p, f) = manifest.quantization.module(role).weight_bytes();
        packed += p;
        replaced += f;
    }
    let scheme = Scheme::parse(&cell.scheme, "scheme")?;
    Ok(CellResult {
        cell: cell.clone(),
        weight_bits: scheme.weight_bits.unwrap_or(32),
        act_bits: scheme.act_bits,
        group: scheme.group,
        per_token: scheme.per_token,
        backend: report
            .config
            .args
            .run
            .backend
            .unwrap_or_default()
            .name()
            .to_string(),
        threads: report.config.threads,
        successes,
        success_rate: successes as f64 / n,
        mean_final_distance: dist.iter().sum::<f64>() / n,
        mean_final_objective: obj.iter().sum::<f64>() / n,
        spearman_objective_distance: spearman(&obj, &dist),
        plan_time_p50_s: s.plan_time_p50_s,
        mean_mpc_steps: s.mean_mpc_steps,
        weight_bytes_at_bits: float_bytes.saturating_sub(replaced) + packed,
        weight_bytes_float: float_bytes,
        model_file_bytes: manifest.graphs.encoder.bytes + manifest.graphs.predictor.bytes,
        peak_rss_bytes: s.peak_rss_bytes,
        per_episode,
    })
}

/// Episodes finished so far in a cell's report (0 when it does not exist or is being written).
fn episodes_done(path: &Path) -> usize {
    /// Only the episode count is needed: the episodes themselves are skipped, not decoded.
    #[derive(serde::Deserialize)]
    struct Episodes {
        episodes: Vec<serde::de::IgnoredAny>,
    }
    crate::util::fs::read_text(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Episodes>(&t).ok())
        .map(|r| r.episodes.len())
        .unwrap_or(0)
}

enum Job {
    Quantize { name: String, tmp: PathBuf },
    Plan { cell: Cell },
}

struct Running {
    job: Job,
    child: Child,
    log: PathBuf,
    bar: ProgressBar,
}

/// Run (or resume) a study.
pub fn run_study(opts: &StudyOptions) -> Result<StudyOutcome> {
    let c = &opts.config;
    if opts.jobs == 0 {
        return Err(QwmError::Usage("--jobs must be at least 1".into()));
    }
    Bundle::open(&c.model)?;
    for sub in ["", "bundles", "cells", "logs"] {
        let d = opts.out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| QwmError::io(&d, e))?;
    }
    check_study_file(opts)?;
    let all = c.cells();
    let cells = match opts.shard {
        Some(s) => s.select(&all),
        None => all,
    };
    let results_file = opts.out.join(
        opts.shard
            .map(|s| s.results_file())
            .unwrap_or_else(|| "results.jsonl".into()),
    );
    let done: BTreeMap<String, usize> = super::read_results(&super::results_files(&opts.out)?)?
        .into_iter()
        .map(|r| (r.cell.id.clone(), r.cell.episodes))
        .collect();
    let mut pending: Vec<Cell> = cells
        .iter()
        .filter(|c| done.get(&c.id).is_none_or(|&e| e < c.episodes))
        .cloned()
        .collect();
    c.sort_run_order(&mut pending);
    let mut outcome = StudyOutcome {
        cells: cells.len(),
        already_done: cells.len() - pending.len(),
        results_file: results_file.clone(),
        ..Default::default()
    };
    let (enc_b, pred_b) = float_weight_bytes(&c.model)?;
    let float_bytes = enc_b + pred_b;

    // Jobs: first the missing bundles, then the cells whose bundles exist.
    // Run order: each cell's rank, and each bundle's (that of the first cell needing it).
    let rank: std::collections::HashMap<String, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.clone(), i))
        .collect();
    let mut bundle_rank: std::collections::HashMap<String, usize> = Default::default();
    for (i, c) in pending.iter().enumerate() {
        if let Some(n) = c.bundle_name() {
            bundle_rank.entry(n).or_insert(i);
        }
    }
    // In run order, so the first cells can start while later bundles are quantized.
    let mut bundle_jobs: Vec<String> = Vec::new();
    for cell in &pending {
        if let Some(name) = cell.bundle_name() {
            if !bundle_jobs.contains(&name)
                && !opts
                    .out
                    .join("bundles")
                    .join(&name)
                    .join("manifest.json")
                    .exists()
            {
                bundle_jobs.push(name);
            }
        }
    }
    let mp = MultiProgress::new();
    let total = mp.add(ProgressBar::new(pending.len() as u64));
    total.set_style(
        ProgressStyle::with_template(
            "study {bar:30} {pos}/{len} cells [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("template"),
    );
    let say = |line: String| {
        if total.is_hidden() {
            println!("{line}");
        } else {
            total.println(line);
        }
    };
    say(format!(
        "qwm study: {} cells in this run ({} already finished), {} bundles to quantize, {} jobs x {} threads, results -> {}",
        cells.len(),
        outcome.already_done,
        bundle_jobs.len(),
        opts.jobs,
        opts.threads,
        results_file.display()
    ));
    let mut queue: std::collections::VecDeque<Job> = bundle_jobs
        .iter()
        .map(|name| Job::Quantize {
            name: name.clone(),
            tmp: opts
                .out
                .join("bundles")
                .join(format!(".{name}.tmp{}", std::process::id())),
        })
        .collect();
    let mut waiting: Vec<Cell> = pending;
    let mut running: Vec<Running> = Vec::new();
    let mut failed_bundles: Vec<String> = Vec::new();
    loop {
        // Cells whose bundle is ready (or failed) leave the waiting list.
        let mut still = Vec::new();
        for cell in waiting.drain(..) {
            match cell.bundle_name() {
                Some(n) if failed_bundles.contains(&n) => {
                    outcome.failed.push((
                        cell.id.clone(),
                        opts.out.join("logs").join(format!("bundle-{n}.log")),
                    ));
                    total.inc(1);
                }
                Some(n)
                    if !opts
                        .out
                        .join("bundles")
                        .join(&n)
                        .join("manifest.json")
                        .exists() =>
                {
                    still.push(cell)
                }
                _ => queue.push_back(Job::Plan { cell }),
            }
        }
        waiting = still;
        while running.len() < opts.jobs {
            // The job of the earliest cell in run order first: a cell, or the bundle that the
            // earliest waiting cell needs (so key cells never wait behind later tables).
            let rank_of = |j: &Job| -> usize {
                match j {
                    Job::Plan { cell } => rank.get(&cell.id).copied().unwrap_or(usize::MAX),
                    Job::Quantize { name, .. } => {
                        bundle_rank.get(name).copied().unwrap_or(usize::MAX)
                    }
                }
            };
            let next = queue
                .iter()
                .enumerate()
                .min_by_key(|(i, j)| (rank_of(j), *i))
                .map(|(i, _)| i)
                .unwrap_or(0);
            let Some(job) = queue.remove(next) else { break };
            running.push(start(opts, job, &mp)?);
        }
        if running.is_empty() {
            if waiting.is_empty() {
                break;
            }
            // Bundles that no job will produce: cannot happen unless the folder changed under us.
            return Err(QwmError::Usage(format!(
                "study: cells {:?} wait for bundles that are not being made",
                waiting.iter().map(|c| &c.id).collect::<Vec<_>>()
            )));
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut i = 0;
        while i < running.len() {
            let status = running[i]
                .child
                .try_wait()
                .map_err(|e| QwmError::io(&running[i].log, e))?;
            let Some(status) = status else {
                if let Job::Plan { cell } = &running[i].job {
                    let n =
                        episodes_done(&opts.out.join("cells").join(format!("{}.json", cell.id)));
                    running[i].bar.set_position(n as u64);
                }
                i += 1;
                continue;
            };
            let r = running.swap_remove(i);
            r.bar.finish_and_clear();
            mp.remove(&r.bar);
            match r.job {
                Job::Quantize { name, tmp } => {
                    let dest = opts.out.join("bundles").join(&name);
                    if status.success() {
                        if dest.join("manifest.json").exists() {
                            // Another shard made it meanwhile (quantization is deterministic).
                            let _ = std::fs::remove_dir_all(&tmp);
                        } else {
                            let _ = std::fs::remove_dir_all(&dest);
                            std::fs::rename(&tmp, &dest).map_err(|e| QwmError::io(&dest, e))?;
                        }
                        say(format!("  bundle {name} quantized"));
                    } else {
                        let _ = std::fs::remove_dir_all(&tmp);
                        say(format!(
                            "  bundle {name} FAILED ({status}); see {}",
                            r.log.display()
                        ));
                        failed_bundles.push(name);
                    }
                }
                Job::Plan { cell } => {
                    total.inc(1);
                    let report_path = opts.out.join("cells").join(format!("{}.json", cell.id));
                    let result = if status.success() {
                        finish_cell(opts, &cell, &report_path, float_bytes, &results_file)
                    } else {
                        Err(QwmError::Usage(format!("qwm plan exited with {status}")))
                    };
                    match result {
                        Ok(res) => {
                            say(format!(
                                "  {:<40} success {:>3}/{:<3} dist {:6.2} objective {:.4} spearman {}",
                                cell.id,
                                res.successes,
                                res.cell.episodes,
                                res.mean_final_distance,
                                res.mean_final_objective,
                                res.spearman_objective_distance
                                    .map(|r| format!("{r:+.2}"))
                                    .unwrap_or_else(|| "-".into())
                            ));
                            total.set_message(format!("last: {}", cell.id));
                            outcome.finished.push(res);
                        }
                        Err(e) => {
                            say(format!(
                                "  {} FAILED: {e}; see {}",
                                cell.id,
                                r.log.display()
                            ));
                            outcome.failed.push((cell.id.clone(), r.log.clone()));
                        }
                    }
                }
            }
        }
    }
    total.finish_and_clear();
    Ok(outcome)
}

fn finish_cell(
    opts: &StudyOptions,
    cell: &Cell,
    report_path: &Path,
    float_bytes: u64,
    results_file: &Path,
) -> Result<CellResult> {
    let report = PlanReport::read(report_path)?;
    let bundle_dir = bundle_dir(opts, cell);
    let res = cell_result(cell, &report, &bundle_dir, float_bytes)?;
    let mut line = serde_json::to_string(&res).expect("json");
    line.push('\n');
    // One write per line with O_APPEND: concurrent appenders never interleave within a line.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(results_file)
        .map_err(|e| QwmError::io(results_file, e))?;
    f.write_all(line.as_bytes())
        .map_err(|e| QwmError::io(results_file, e))?;
    Ok(res)
}

fn bundle_dir(opts: &StudyOptions, cell: &Cell) -> PathBuf {
    match cell.bundle_name() {
        Some(n) => opts.out.join("bundles").join(n),
        None => opts.config.model.clone(),
    }
}

fn start(opts: &StudyOptions, job: Job, mp: &MultiProgress) -> Result<Running> {
    let c = &opts.config;
    let mut cmd = Command::new(&opts.qwm);
    let (log, bar) = match &job {
        Job::Quantize { name, tmp } => {
            let cell = c
                .cells()
                .into_iter()
                .find(|x| x.bundle_name().as_deref() == Some(name))
                .expect("bundle of a cell");
            let (enc, pred) = cell.module_schemes();
            let _ = std::fs::remove_dir_all(tmp);
            let args = QuantizeArgs {
                method: cell.method.expect("quantized"),
                encoder: enc.to_string(),
                predictor: pred.to_string(),
                calib_episodes: c.calib_episodes,
                threads: Some(opts.threads),
                ..QuantizeArgs::with_defaults(c.model.clone(), tmp.clone())
            };
            cmd.arg("quantize").args(args.to_args());
            let bar = mp.add(ProgressBar::new_spinner());
            bar.set_message(format!("quantizing {name}"));
            bar.enable_steady_tick(Duration::from_millis(200));
            (
                opts.out.join("logs").join(format!("bundle-{name}.log")),
                bar,
            )
        }
        Job::Plan { cell } => {
            let p = &c.planner;
            let args = PlanArgs {
                model: bundle_dir(opts, cell),
                episodes: cell.episodes,
                seed: cell.seed,
                control: ControlArgs {
                    samples: p.samples,
                    topk: p.topk,
                    horizon: p.horizon,
                    n_taken: p.n_taken,
                    opt_steps: cell.opt_steps,
                    ..ControlArgs::default()
                },
                max_iter: cell.max_iter,
                run: RunArgs {
                    threads: Some(opts.threads),
                    backend: Some(c.backend),
                    ort_lib: opts.ort_lib.clone(),
                    ..RunArgs::default()
                },
                json: Some(opts.out.join("cells").join(format!("{}.json", cell.id))),
                resume: true,
                ..PlanArgs::default()
            };
            cmd.arg("plan").args(args.to_args());
            let bar = mp.add(ProgressBar::new(cell.episodes as u64));
            bar.set_style(
                ProgressStyle::with_template("  {bar:20} {pos}/{len} episodes  {msg}")
                    .expect("template"),
            );
            bar.set_message(cell.id.clone());
            (opts.out.join("logs").join(format!("{}.log", cell.id)), bar)
        }
    };
    let logf = std::fs::File::create(&log).map_err(|e| QwmError::io(&log, e))?;
    let errf = logf.try_clone().map_err(|e| QwmError::io(&log, e))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(errf)
        .spawn()
        .map_err(|e| QwmError::io(&opts.qwm, e))?;
    Ok(Running {
        job,
        child,
        log,
        bar,
    })
}
