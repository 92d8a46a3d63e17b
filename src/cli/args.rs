//! The settings `plan`, `bench` and `profile` share (threads, engine, board profile, memory
//! limit), resolved once from flags and the board profile into typed values.

use crate::engine::BackendKind;
use anyhow::Result;

pub use crate::runtime::settings::RunArgs;

/// Threads from a flag (or a profile), else the available cores; one rule everywhere: 1..=256.
pub fn default_threads(flag: Option<usize>) -> Result<usize> {
    Ok(crate::runtime::settings::default_threads(flag)?)
}

/// Threads, backend name and memory limit after applying a board profile under explicit flags.
pub fn resolve_run_settings(run: &RunArgs) -> Result<(usize, BackendKind, Option<u64>)> {
    let r = run.resolve()?;
    Ok((r.threads, r.backend, r.mem_limit))
}
