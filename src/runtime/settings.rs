//! The settings of a planning run, one type for both sides: parsed from `qwm plan`'s flags (clap),
//! recorded in its JSON report (serde, read back typed by `--resume`, the study and `qwm fit`),
//! and turned back into flags for a child `qwm plan` process ([`PlanArgs::to_args`]), so that
//! flag names are never spelled by hand outside this file.

use crate::engine::{BackendKind, LoadOptions};
use crate::plan::PlannerKind;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::PathBuf;

/// Where graphs run and within what limits: the settings `plan`, `bench` and `profile` share.
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunArgs {
    /// Worker threads (default: the --target profile's, else available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Execution engine: tract or ort (ONNX Runtime; build with --features ort). Default: the
    /// --target profile's, else tract.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
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
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub low_mem: bool,
}

/// [`RunArgs`] resolved against the board profile: what a run actually uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedRun {
    /// Worker threads.
    pub threads: usize,
    /// The engine.
    pub backend: BackendKind,
    /// The memory limit, set on qwm's allocator by [`RunArgs::resolve`].
    pub mem_limit: Option<u64>,
}

/// Threads from a flag (or a profile), else the available cores; one rule everywhere: 1..=256.
pub fn default_threads(flag: Option<usize>) -> crate::error::Result<usize> {
    let threads = flag.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 || threads > 256 {
        return Err(crate::error::QwmError::Usage(format!(
            "--threads {threads} must be in 1..=256"
        )));
    }
    Ok(threads)
}

impl RunArgs {
    /// Apply the board profile (`--target`) under the explicit flags, check the threads and
    /// set the memory limit on qwm's allocator (refused when qwm already uses more).
    pub fn resolve(&self) -> crate::error::Result<ResolvedRun> {
        use crate::error::QwmError;
        let profile = self
            .target
            .as_deref()
            .map(crate::runtime::target::load)
            .transpose()?;
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
        let threads = default_threads(self.threads.or(profile.as_ref().map(|p| p.threads)))?;
        let backend = self
            .backend
            .or(profile.as_ref().map(|p| p.backend))
            .unwrap_or_default();
        let limit = match (self.mem_limit.as_deref(), &profile) {
            (Some(m), _) => Some(crate::util::mem::parse_size(m, "--mem-limit")?),
            (None, Some(p)) => Some(p.memory_budget_bytes()?),
            (None, None) => None,
        };
        if let Some(l) = limit {
            let now = crate::util::mem::current_bytes() as u64;
            if l <= now {
                return Err(QwmError::Usage(format!(
                    "--mem-limit {}: qwm already uses {} before loading anything; raise the limit",
                    crate::util::fmt::fmt_bytes(l),
                    crate::util::fmt::fmt_bytes(now)
                )));
            }
            crate::util::mem::set_limit(l as usize);
        }
        Ok(ResolvedRun {
            threads,
            backend,
            mem_limit: limit,
        })
    }

    /// The flags that parse back into these settings.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            v.push(format!("--{name}").into());
            v.push(value);
        };
        if let Some(t) = self.threads {
            flag("threads", t.to_string().into());
        }
        if let Some(b) = self.backend {
            flag("backend", b.name().into());
        }
        if let Some(t) = &self.target {
            flag("target", t.into());
        }
        if let Some(m) = &self.mem_limit {
            flag("mem-limit", m.into());
        }
        if let Some(l) = &self.ort_lib {
            flag("ort-lib", l.clone().into());
        }
        if self.low_mem {
            v.push("--low-mem".into());
        }
        v
    }

    /// How the backend loads graphs: `threads` (as resolved from the flags and the target
    /// profile) and `--low-mem`.
    pub fn load_options(&self, threads: usize) -> LoadOptions {
        LoadOptions {
            low_mem: self.low_mem,
            ..LoadOptions::with_threads(threads)
        }
    }
}

/// How the MPC controller plans: the planner and its budget, the horizon and the executed part
/// of each plan. Shared by `qwm plan`, `qwm serve` and the library's `Controller`.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(allow_negative_numbers = true)]
pub struct ControlArgs {
    /// Planner.
    #[arg(long, value_enum, default_value_t = PlannerKind::Cem)]
    pub planner: PlannerKind,
    /// Candidates per optimization step.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// CEM elites.
    #[arg(long, default_value_t = 30)]
    pub topk: usize,
    /// Optimization steps per plan.
    #[arg(long, default_value_t = 10)]
    pub opt_steps: usize,
    /// Planning horizon (model steps; each is frameskip environment steps).
    #[arg(long, default_value_t = 5)]
    pub horizon: usize,
    /// Planned model actions executed per MPC step.
    #[arg(long, default_value_t = 5)]
    pub n_taken: usize,
    /// CEM initial std / MPPI noise (normalized action units).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub var_scale: f32,
    /// MPPI temperature relative to the spread of objectives.
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true)]
    pub temperature: f32,
    /// Candidates per predictor call (default: all samples at once).
    #[arg(long)]
    pub chunk: Option<usize>,
}

impl Default for ControlArgs {
    /// The flags' defaults (as if none were given).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            control: ControlArgs,
        }
        <Wrap as clap::Parser>::parse_from(["qwm"]).control
    }
}

impl ControlArgs {
    /// The flags (`--planner` .. `--chunk`) that parse back into these settings.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            v.push(format!("--{name}").into());
            v.push(value);
        };
        flag("planner", self.planner.name().into());
        flag("samples", self.samples.to_string().into());
        flag("topk", self.topk.to_string().into());
        flag("opt-steps", self.opt_steps.to_string().into());
        flag("horizon", self.horizon.to_string().into());
        flag("n-taken", self.n_taken.to_string().into());
        flag("var-scale", self.var_scale.to_string().into());
        flag("temperature", self.temperature.to_string().into());
        if let Some(c) = self.chunk {
            flag("chunk", c.to_string().into());
        }
        v
    }
}

/// Everything a [`Controller`](crate::runtime::controller::Controller) is built from besides
/// the bundle: the planner seed, the planner, and where the graphs run. `qwm serve` takes these
/// flags; the C ABI and the Python module accept the same flags as a list of strings.
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[command(allow_negative_numbers = true)]
pub struct ControllerArgs {
    /// Planner seed: episode e (`reset_to(e)`) draws planner noise from stream e of it, as episode
    /// e of `qwm plan --seed S` does.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

impl ControllerArgs {
    /// Parse flags such as `["--samples", "100", "--backend", "ort"]` (no program name).
    pub fn parse_flags<I, T>(flags: I) -> crate::error::Result<ControllerArgs>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        #[derive(clap::Parser)]
        #[command(name = "controller options", no_binary_name = true)]
        struct Wrap {
            #[command(flatten)]
            args: ControllerArgs,
        }
        <Wrap as clap::Parser>::try_parse_from(flags)
            .map(|w| w.args)
            .map_err(|e| crate::error::QwmError::Usage(e.render().to_string().trim().to_string()))
    }

    /// The flags that parse back into these settings.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--seed".into(), self.seed.to_string().into()];
        v.extend(self.control.to_args());
        v.extend(self.run.to_args());
        v
    }
}

#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(allow_negative_numbers = true)]
pub struct PlanArgs {
    /// Bundle folder (manifest.json + encoder.onnx + predictor.onnx).
    #[arg(long, default_value = "models/wall")]
    pub model: PathBuf,
    /// Environment (defaults to the one the model was trained on).
    #[arg(long, value_enum)]
    pub env: Option<crate::env::EnvKind>,
    /// Episodes to run (the default is a short demonstration; evaluations use 50).
    #[arg(long, default_value_t = 3)]
    pub episodes: usize,
    /// Seed: episode i uses task seed 99 * (seed + i) + 1 (DINO-WM's evaluation seeds for seed 0)
    /// and planner noise derived from the seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub control: ControlArgs,
    /// Most MPC steps per episode.
    #[arg(long, default_value_t = 10)]
    pub max_iter: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    /// Write the full report as JSON (rewritten after every episode, so an interrupted run keeps
    /// its finished episodes).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Continue an interrupted run: keep the finished episodes in the --json file (which must come
    /// from the same settings) and run only the rest. Episodes are independent (each has its own
    /// seeds), so the result equals an uninterrupted run's.
    #[arg(long, requires = "json")]
    pub resume: bool,
    /// Write each episode's observed frames (and goal) as PNG files under this folder.
    #[arg(long)]
    pub save_frames: Option<PathBuf>,
}

impl PlanArgs {
    /// The `qwm plan` arguments (after the subcommand) that parse back into these settings:
    /// every setting is written out, so the child does not depend on the defaults.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            v.push(format!("--{name}").into());
            v.push(value);
        };
        flag("model", self.model.clone().into());
        if let Some(e) = &self.env {
            flag("env", e.name().into());
        }
        flag("episodes", self.episodes.to_string().into());
        flag("seed", self.seed.to_string().into());
        flag("max-iter", self.max_iter.to_string().into());
        if let Some(j) = &self.json {
            flag("json", j.clone().into());
        }
        if let Some(d) = &self.save_frames {
            flag("save-frames", d.clone().into());
        }
        if self.resume {
            v.push("--resume".into());
        }
        v.extend(self.control.to_args());
        v.extend(self.run.to_args());
        v
    }
}
impl Default for PlanArgs {
    /// `qwm plan`'s defaults (as if no flag were given).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            plan: PlanArgs,
        }
        <Wrap as clap::Parser>::parse_from(["qwm-plan"]).plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        plan: PlanArgs,
    }

    fn reparse(a: &PlanArgs) -> PlanArgs {
        let mut argv: Vec<OsString> = vec!["qwm-plan".into()];
        argv.extend(a.to_args());
        Wrap::try_parse_from(argv).expect("to_args parses").plan
    }

    #[test]
    fn to_args_parses_back_into_the_same_settings() {
        let d = PlanArgs::default();
        assert_eq!(reparse(&d), d);
        let mut a = PlanArgs {
            env: Some(crate::env::EnvKind::Pusht),
            episodes: 7,
            seed: 3,
            control: ControlArgs {
                planner: PlannerKind::Mppi,
                samples: 40,
                topk: 4,
                opt_steps: 2,
                horizon: 4,
                n_taken: 2,
                var_scale: 0.3,
                temperature: -1e-30,
                chunk: Some(9),
            },
            max_iter: 50,
            json: Some("r.json".into()),
            resume: true,
            save_frames: Some("f".into()),
            ..PlanArgs::default()
        };
        a.run = RunArgs {
            threads: Some(2),
            backend: Some(BackendKind::Ort),
            target: Some("rpi5".into()),
            mem_limit: Some("512M".into()),
            ort_lib: Some("/x/libonnxruntime.so".into()),
            low_mem: true,
        };
        assert_eq!(reparse(&a), a);
    }

    #[test]
    fn reports_round_trip_through_json() {
        let a = PlanArgs {
            seed: 5,
            ..PlanArgs::default()
        };
        let v = serde_json::to_value(&a).unwrap();
        let b: PlanArgs = serde_json::from_value(v).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn controller_flags_parse_and_name_the_bad_one() {
        let a = ControllerArgs::parse_flags(["--samples", "40", "--seed", "7", "--threads", "1"])
            .unwrap();
        assert_eq!((a.seed, a.control.samples, a.run.threads), (7, 40, Some(1)));
        assert_eq!(ControllerArgs::parse_flags(a.to_args()).unwrap(), a);
        assert_eq!(
            ControllerArgs::parse_flags(Vec::<String>::new()).unwrap(),
            ControllerArgs::default()
        );
        let e = ControllerArgs::parse_flags(["--smples", "4"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--smples"), "{e}");
        let e = ControllerArgs::parse_flags(["--samples", "x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--samples"), "{e}");
    }

    #[test]
    fn reports_written_before_control_args_existed_still_read() {
        // The settings of a report written by an earlier qwm: every key at one level.
        let old = r#"{"model":"models/wall","env":null,"episodes":50,"seed":0,"planner":"cem",
            "samples":300,"topk":30,"opt_steps":10,"horizon":5,"n_taken":5,"max_iter":50,
            "var_scale":1.0,"temperature":0.1,"chunk":null,"threads":1,"backend":"ort",
            "target":null,"mem_limit":null,"ort_lib":null,"json":"c.json","resume":true,
            "save_frames":null}"#;
        let a: PlanArgs = serde_json::from_str(old).unwrap();
        assert_eq!(a.control, ControlArgs::default());
        assert_eq!((a.max_iter, a.run.threads), (50, Some(1)));
        assert_eq!(a.run.backend, Some(BackendKind::Ort));
    }
}
