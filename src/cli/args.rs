//! The settings `plan`, `bench` and `profile` share (threads, engine, board profile, memory
//! limit), resolved once from flags and the board profile into typed values.

use crate::engine::BackendKind;
use anyhow::{bail, Result};

pub use crate::runtime::settings::RunArgs;

/// Threads from a flag (or a profile), else the available cores; one rule everywhere: 1..=256.
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
pub fn resolve_run_settings(run: &RunArgs) -> Result<(usize, BackendKind, Option<u64>)> {
    let (threads, backend, target, mem_limit) = (
        run.threads,
        run.backend,
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
        .or(profile.as_ref().map(|p| p.backend))
        .unwrap_or_default();
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
