//! Run reports: per-episode results plus a summary, printable and serializable (JSON).

use crate::runtime::episode::EpisodeResult;
use crate::runtime::settings::PlanArgs;
use crate::util::{fmt::fmt_bytes, stats::quantile};
use serde::{Deserialize, Serialize};

/// Summary over a run's episodes (snake_case keys are part of qwm's interface).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Episodes run.
    pub episodes: usize,
    /// Fraction of episodes that reached the goal.
    #[serde(deserialize_with = "f64_or_nan")]
    pub success_rate: f64,
    /// Mean distance to the goal at the end.
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean_final_distance: f64,
    /// Mean planner objective of the last plan.
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean_final_objective: f64,
    /// Median planning time per MPC step (s).
    #[serde(deserialize_with = "f64_or_nan")]
    pub plan_time_p50_s: f64,
    /// 95th percentile planning time per MPC step (s).
    #[serde(deserialize_with = "f64_or_nan")]
    pub plan_time_p95_s: f64,
    /// Mean MPC steps per episode.
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean_mpc_steps: f64,
    /// Share of planning time spent inside predictor calls.
    #[serde(deserialize_with = "f64_or_nan")]
    pub model_time_share: f64,
    /// Share of planning time outside model calls (planner arithmetic, rollout assembly).
    #[serde(deserialize_with = "f64_or_nan")]
    pub planner_overhead_share: f64,
    /// Mean encode time per MPC step (s).
    #[serde(deserialize_with = "f64_or_nan")]
    pub encode_time_mean_s: f64,
    /// Candidates with NaN/Inf objectives, all episodes.
    pub non_finite_candidates: usize,
    /// Peak resident set size of the process (bytes).
    pub peak_rss_bytes: u64,
    /// Peak of qwm's counted heap (Rust allocations: weights, activations, planner buffers),
    /// bytes; 0 where the counting allocator is not installed (library use).
    #[serde(default)]
    pub heap_peak_bytes: u64,
    /// The memory limit in force (`--mem-limit` or the target's budget), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_limit_bytes: Option<u64>,
}

/// The settings a report was written with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// The run's flags.
    pub args: PlanArgs,
    /// The environment planned in.
    pub env: String,
    /// Worker threads, as resolved (flag, board profile or cores).
    pub threads: usize,
}

/// Everything `qwm plan --json` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanReport {
    /// qwm version.
    pub qwm_version: String,
    /// Settings of the run (written with sorted keys, as reports always have been).
    #[serde(serialize_with = "sorted_keys")]
    pub config: PlanConfig,
    /// Model load time (s).
    pub load_time_s: f64,
    /// Peak RSS right after loading (bytes).
    pub load_peak_rss_bytes: u64,
    /// Per-episode results.
    pub episodes: Vec<EpisodeResult>,
    /// Summary.
    pub summary: Summary,
    /// False while episodes are still running: the report is rewritten (atomically) after every
    /// episode, so an interrupted run keeps what it finished and `--resume` continues it.
    /// (Reports from before incremental writing lack it: they were written once, complete.)
    #[serde(default = "complete_by_default")]
    pub complete: bool,
}

fn complete_by_default() -> bool {
    true
}

/// JSON has no NaN: serde_json writes a NaN as `null`, which reads back as NaN here.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Serialize through a JSON value, whose maps keep their keys sorted.
fn sorted_keys<S: serde::Serializer>(c: &PlanConfig, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(c)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

impl PlanReport {
    /// Read a report written by `qwm plan --json`; the error says what is wrong with the file.
    pub fn read(path: &std::path::Path) -> crate::Result<PlanReport> {
        let text = crate::util::fs::read_text(path).map_err(|e| crate::QwmError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            crate::QwmError::Usage(format!("{}: not a qwm plan report: {e}", path.display()))
        })
    }
}

/// Summarize episodes.
pub fn summarize(eps: &[EpisodeResult], peak_rss_bytes: u64) -> Summary {
    let n = eps.len().max(1) as f64;
    let plan: Vec<f64> = eps
        .iter()
        .flat_map(|e| e.timings.iter().map(|t| t.plan_s))
        .collect();
    let plan_total: f64 = plan.iter().sum();
    let predict_total: f64 = eps
        .iter()
        .flat_map(|e| e.timings.iter().map(|t| t.predict_s))
        .sum();
    let enc: Vec<f64> = eps
        .iter()
        .flat_map(|e| e.timings.iter().map(|t| t.encode_s))
        .collect();
    let share = if plan_total > 0.0 {
        predict_total / plan_total
    } else {
        0.0
    };
    Summary {
        episodes: eps.len(),
        success_rate: eps.iter().filter(|e| e.success).count() as f64 / n,
        mean_final_distance: eps.iter().map(|e| e.final_distance as f64).sum::<f64>() / n,
        mean_final_objective: eps.iter().map(|e| e.final_objective as f64).sum::<f64>() / n,
        plan_time_p50_s: quantile(&plan, 0.5),
        plan_time_p95_s: quantile(&plan, 0.95),
        mean_mpc_steps: eps.iter().map(|e| e.mpc_steps as f64).sum::<f64>() / n,
        model_time_share: share,
        planner_overhead_share: if plan_total > 0.0 { 1.0 - share } else { 0.0 },
        encode_time_mean_s: if enc.is_empty() {
            0.0
        } else {
            enc.iter().sum::<f64>() / enc.len() as f64
        },
        non_finite_candidates: eps.iter().map(|e| e.non_finite_candidates).sum(),
        peak_rss_bytes,
        heap_peak_bytes: if crate::util::mem::counting() {
            crate::util::mem::peak_bytes() as u64
        } else {
            0
        },
        mem_limit_bytes: crate::util::mem::limit().map(|b| b as u64),
    }
}

/// One line per episode.
pub fn episode_line(e: &EpisodeResult) -> String {
    let plan: Vec<f64> = e.timings.iter().map(|t| t.plan_s).collect();
    format!(
        "episode {:>3} seed {:>6}: {} final distance {:6.2} (start {:5.1}) objective {:.4} mpc steps {:>2} plan {:.2} s/step",
        e.index,
        e.task_seed,
        if e.success { "success" } else { "FAIL   " },
        e.final_distance,
        e.initial_distance,
        e.final_objective,
        e.mpc_steps,
        quantile(&plan, 0.5)
    )
}

/// Human summary block.
pub fn summary_text(s: &Summary, load_time_s: f64, load_peak: u64) -> String {
    format!(
        "summary: {} episodes\n  success rate          {:.3}\n  mean final distance   {:.2}\n  mean final objective  {:.4}\n  mean MPC steps        {:.2}\n  plan time per step    p50 {:.3} s, p95 {:.3} s\n  time in model calls   {:.1}% (planner overhead {:.1}%)\n  encode per step       {:.4} s\n  non-finite candidates {}\n  load                  {:.3} s, peak RSS after load {}\n  peak RSS              {}",
        s.episodes,
        s.success_rate,
        s.mean_final_distance,
        s.mean_final_objective,
        s.mean_mpc_steps,
        s.plan_time_p50_s,
        s.plan_time_p95_s,
        100.0 * s.model_time_share,
        100.0 * s.planner_overhead_share,
        s.encode_time_mean_s,
        s.non_finite_candidates,
        load_time_s,
        fmt_bytes(load_peak),
        fmt_bytes(s.peak_rss_bytes)
    ) + &heap_line(s)
}

fn heap_line(s: &Summary) -> String {
    if s.heap_peak_bytes == 0 {
        return String::new();
    }
    let limit = match s.mem_limit_bytes {
        Some(l) => format!(
            " of --mem-limit {} ({:.0}%)",
            fmt_bytes(l),
            100.0 * s.heap_peak_bytes as f64 / l as f64
        ),
        None => String::new(),
    };
    format!(
        "\n  heap peak             {}{limit}",
        fmt_bytes(s.heap_peak_bytes)
    )
}
