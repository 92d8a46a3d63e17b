//! The settings `plan`, `bench` and `profile` share (threads, engine, board profile, memory
//! limit), resolved once from flags and the board profile into typed values.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use crate::engine::LoadOptions;

/// Where graphs run and within what limits: the settings `plan`, `bench` and `profile` share.
#[derive(Args, Debug, Clone, Default, serde::Serialize)]
pub struct RunArgs {
    /// Worker threads (default: the --target profile's, else available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Execution engine: tract or ort (ONNX Runtime; build with --features ort). Default: the
    /// --target profile's, else tract.
    #[arg(long)]
    pub backend: Option<String>,
    /// Board profile (targets/NAME.toml, or a path): applies its threads, memory budget (as
    /// --mem-limit) and backend unless those flags are given.
    #[arg(long)]
    pub target: Option<String>,
    /// Most heap memory qwm may use, e.g. 512M or 2G: an allocation over it stops the run with a
    /// clear error (exit status 3) instead of an OOM kill; the peak is reported against it.
    #[arg(long, allow_hyphen_values = true)]
    pub mem_limit: Option<String>,
    /// Path of libonnxruntime for --backend ort (else ORT_DYLIB_PATH, else the onnxruntime Python
    /// package).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Keep the weights in the mapped graph files where the engine allows it: ONNX Runtime reads
    /// them from the file as external data with weight prepacking off (less memory, some speed
    /// lost). tract always loads each weight once, straight from the mapping.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub low_mem: bool,
}

impl RunArgs {
    /// How the backend loads graphs: `threads` (as resolved from the flags and the target
    /// profile) and `--low-mem`.
    pub fn load_options(&self, threads: usize) -> LoadOptions {
        LoadOptions {
            low_mem: self.low_mem,
            ..LoadOptions::with_threads(threads)
        }
    }
}

pub fn default_threads(flag: Option<usize>) -> Result<usize> {
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
pub fn resolve_run_settings(run: &RunArgs) -> Result<(usize, String, Option<u64>)> {
    let (threads, backend, target, mem_limit) = (
        run.threads,
        run.backend.as_deref(),
        run.target.as_deref(),
        run.mem_limit.as_deref(),
    );
    let profile = target.map(crate::runtime::target::load).transpose()?;
    if let Some(p) = &profile {
        if !p.triple.starts_with(crate::runtime::target::host_arch()) {
            log::warn!(
                "--target {}: profile is for {}, this qwm runs on {}",
                p.name,
                p.triple,
                crate::runtime::target::host_arch()
            );
        }
    }
    let threads = default_threads(threads.or(profile.as_ref().map(|p| p.threads)))?;
    let backend = backend
        .map(str::to_string)
        .or(profile.as_ref().map(|p| p.backend.clone()))
        .unwrap_or_else(|| "tract".into());
    let limit = match (mem_limit, &profile) {
        (Some(m), _) => Some(crate::util::mem::parse_size(m, "--mem-limit")?),
        (None, Some(p)) => Some(p.memory_budget_bytes()?),
        (None, None) => None,
    };
    if let Some(l) = limit {
        let now = crate::util::mem::current_bytes() as u64;
        if l <= now {
            bail!(
                "--mem-limit {}: qwm already uses {} before loading anything; raise the limit",
                crate::util::fmt::fmt_bytes(l),
                crate::util::fmt::fmt_bytes(now)
            );
        }
        crate::util::mem::set_limit(l as usize);
    }
    Ok((threads, backend, limit))
}

