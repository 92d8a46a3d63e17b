//! `qwm study` (a grid of quantization settings x planner budgets, resumable and shardable) and
//! `qwm report` (merged results into tables and plots).

use super::args::default_threads;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct StudyArgs {
    /// Study configuration (TOML): model, episodes, backend, planner and [[grid]] tables.
    #[arg(long)]
    pub config: PathBuf,
    /// Output folder (default: the config's `out`, else study/<config name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cells run at once, each its own process.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Threads per cell (default: the config's, else available cores / jobs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Episodes per cell, overriding the config (e.g. a quick smoke run).
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Execution engine for every cell, overriding the config: tract or ort.
    #[arg(long, value_enum)]
    pub backend: Option<crate::engine::BackendKind>,
    /// Run only slice K of N (K 0-based) of the id-sorted cells, into
    /// results.shard-K-of-N.jsonl: one array task per shard on a cluster, then `qwm report`.
    #[arg(long)]
    pub shard: Option<String>,
    /// Path of libonnxruntime for an ort study.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// List the cells (id, bundle, episodes) and exit.
    #[arg(long)]
    pub list: bool,
    /// Do not write the report when the study is complete.
    #[arg(long)]
    pub no_report: bool,
    /// TrueType font for the report's plots.
    #[arg(long)]
    pub font: Option<PathBuf>,
}

pub fn study(args: StudyArgs) -> Result<()> {
    let mut config = crate::study::StudyConfig::load(&args.config)?;
    if let Some(e) = args.episodes {
        if e == 0 {
            bail!("--episodes must be at least 1");
        }
        config.episodes = e;
        for g in &mut config.grid {
            g.episodes = Some(e);
        }
    }
    if let Some(b) = args.backend {
        config.backend = b;
    }
    let shard = args
        .shard
        .as_deref()
        .map(crate::study::Shard::parse)
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
    let threads = match (args.threads, config.threads) {
        (Some(t), _) => default_threads(Some(t))?,
        (None, Some(t)) => default_threads(Some(t)).map_err(|_| {
            anyhow::anyhow!(
                "study config {}: threads {t} must be in 1..=256",
                args.config.display()
            )
        })?,
        (None, None) => default_threads(Some((cores / args.jobs).max(1)))?,
    };
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
    let opts = crate::study::run::StudyOptions {
        config,
        out: out.clone(),
        jobs: args.jobs,
        threads,
        shard,
        qwm: std::env::current_exe().context("locating the qwm executable for cell processes")?,
        ort_lib: args.ort_lib.clone(),
    };
    let outcome = crate::study::run::run_study(&opts)?;
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
        let results = crate::study::read_results(&crate::study::results_files(&out)?)?;
        let dir = out.join("report");
        crate::study::report::write_report(&results, &dir, args.font.as_deref())?;
        println!("report: {}", dir.join("report.md").display());
    }
    Ok(())
}

/// Flags of `qwm report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Results: `results*.jsonl` files, or study folders holding them.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Output folder for report.md and the plots.
    #[arg(long)]
    pub out: PathBuf,
    /// TrueType font for plot labels (default: DejaVu Sans or Liberation Sans from the system).
    #[arg(long)]
    pub font: Option<PathBuf>,
}

/// `qwm report`.
pub fn report(args: ReportArgs) -> Result<()> {
    let ReportArgs { results, out, font } = args;
    let mut files = Vec::new();
    for r in &results {
        if r.is_dir() {
            let f = crate::study::results_files(r)?;
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
    let cells = crate::study::read_results(&files)?;
    let written = crate::study::report::write_report(&cells, &out, font.as_deref())?;
    println!(
        "qwm report: {} cells from {} file(s) -> {} ({} files)",
        cells.len(),
        files.len(),
        out.join("report.md").display(),
        written.len()
    );
    Ok(())
}
