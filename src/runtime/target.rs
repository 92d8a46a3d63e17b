//! Board profiles (`targets/*.toml`): what a robot board is, and what `--target NAME` applies to a
//! run on it (thread count, memory budget, preferred backend).
//!
//! A profile is found by name in `$QWM_TARGETS`, then `./targets`, then `targets/` next to the
//! executable's parent folder; or given as a path to a `.toml` file.

use crate::error::{QwmError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One board.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Short name (the file stem).
    pub name: String,
    /// Rust target triple to build for.
    pub triple: String,
    /// CPU to tune for (`-C target-cpu`), also the CPU qemu emulates for CI runs.
    pub target_cpu: String,
    /// Default worker threads on the board.
    pub threads: usize,
    /// Memory qwm may use on the board, e.g. "2G" (applied as `--mem-limit`).
    pub memory_budget: String,
    /// Preferred backend on the board (`tract` or `ort`).
    pub backend: crate::engine::BackendKind,
    /// Free-form notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl BoardProfile {
    /// Memory budget in bytes.
    pub fn memory_budget_bytes(&self) -> Result<u64> {
        crate::util::mem::parse_size(
            &self.memory_budget,
            &format!("memory_budget of target '{}'", self.name),
        )
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| {
            Err(QwmError::Usage(format!(
                "target profile {}: {m}",
                path.display()
            )))
        };
        if self.threads == 0 || self.threads > 256 {
            return bad(format!("threads {} must be in 1..=256", self.threads));
        }
        if !self.triple.contains('-') {
            return bad(format!("triple '{}' is not a target triple", self.triple));
        }
        self.memory_budget_bytes()?;
        Ok(())
    }
}

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    if let Some(d) = std::env::var_os("QWM_TARGETS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("targets"));
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            dirs.push(up.join("targets"));
        }
    }
    dirs
}

/// Load a profile by name (searched as the module doc says) or by path.
pub fn load(name_or_path: &str) -> Result<BoardProfile> {
    let direct = Path::new(name_or_path);
    let path = if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
        direct.to_path_buf()
    } else {
        let file = format!("{name_or_path}.toml");
        match search_dirs().into_iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
            Some(p) => p,
            None => {
                return Err(QwmError::Usage(format!(
                    "--target {name_or_path}: no {file} in $QWM_TARGETS, ./targets or next to qwm (known: {})",
                    known().join(", ")
                )))
            }
        }
    };
    let text = crate::util::fs::read_text(&path).map_err(|e| {
        QwmError::Usage(format!("--target {}: cannot read it: {e}", path.display()))
    })?;
    let p: BoardProfile = toml::from_str(&text)
        .map_err(|e| QwmError::Usage(format!("target profile {}: {e}", path.display())))?;
    p.validate(&path)?;
    Ok(p)
}

/// Names of the profiles found in the search folders.
pub fn known() -> Vec<String> {
    let mut names: Vec<String> = search_dirs()
        .into_iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? == "toml" {
                Some(p.file_stem()?.to_string_lossy().to_string())
            } else {
                None
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The architecture part of this build's target triple (`x86_64`, `aarch64`, ...).
pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_load_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
        for name in ["rpi5", "rpi4", "jetson-orin", "x86_64"] {
            let p = load(dir.join(format!("{name}.toml")).to_str().unwrap()).unwrap();
            assert_eq!(p.name, name);
            assert!(p.memory_budget_bytes().unwrap() >= 512 << 20);
        }
        let rpi5 = load(dir.join("rpi5.toml").to_str().unwrap()).unwrap();
        assert_eq!(rpi5.target_cpu, "cortex-a76");
        assert_eq!(rpi5.triple, "aarch64-unknown-linux-gnu");
    }

    #[test]
    fn bad_profiles_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("bad.toml");
        for text in [
            "name = \"x\"",
            "name = \"x\"\ntriple = \"aarch64-unknown-linux-gnu\"\ntarget_cpu = \"a\"\nthreads = 0\nmemory_budget = \"1G\"\nbackend = \"tract\"",
            "name = \"x\"\ntriple = \"aarch64-unknown-linux-gnu\"\ntarget_cpu = \"a\"\nthreads = 2\nmemory_budget = \"lots\"\nbackend = \"tract\"",
            "name = \"x\"\ntriple = \"aarch64-unknown-linux-gnu\"\ntarget_cpu = \"a\"\nthreads = 2\nmemory_budget = \"1G\"\nbackend = \"cuda\"",
            "name = \"x\"\ntriple = \"aarch64-unknown-linux-gnu\"\ntarget_cpu = \"a\"\nthreads = 2\nmemory_budget = \"1G\"\nbackend = \"tract\"\ncolour = 3",
        ] {
            std::fs::write(&p, text).unwrap();
            let e = load(p.to_str().unwrap()).unwrap_err().to_string();
            assert!(e.contains("bad.toml") || e.contains("memory_budget"), "{e}");
        }
        let e = load("no-such-board").unwrap_err().to_string();
        assert!(e.contains("--target no-such-board"), "{e}");
    }
}
