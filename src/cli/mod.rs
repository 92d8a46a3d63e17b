//! The `qwm` command line: clap definitions and glue, one file per command; each command resolves
//! its flags into typed settings and calls library entry points. [`main`] is the whole binary.

mod args;
mod bench;
mod dataset;
mod fit;
mod inspect;
mod plan;
mod profile;
mod quantize;
mod serve;
mod study;

pub use args::RunArgs;
pub use plan::PlanArgs;

use clap::{Parser, Subcommand};
use std::time::Instant;

#[derive(Parser)]
#[command(
    allow_negative_numbers = true,
    name = "qwm",
    version,
    about = "Edge runtime for quantized latent world models (DINO-WM style)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run headless MPC planning episodes with a world model and report success, time and memory.
    Plan(PlanArgs),
    /// Serve the MPC controller to a robot process over a Unix socket, TCP or stdin/stdout
    /// (protocol in docs/serve.md): set a goal, send frames, get actions.
    Serve(serve::ServeArgs),
    /// Generate a trajectory dataset (.npy files) from an environment's scripted policy.
    #[command(allow_negative_numbers = true)]
    Dataset(dataset::DatasetArgs),
    /// Post-training quantization of a float bundle into a new bundle (QDQ "simulate" form, or
    /// the "deploy" form on integer / packed operators).
    #[command(allow_negative_numbers = true)]
    Quantize(quantize::QuantizeArgs),
    /// Time one graph call (encoder or predictor) at a batch size on a backend; optionally
    /// against onnxruntime's Python API on the same graph, inputs and threads.
    Bench(bench::BenchArgs),
    /// Sweep quantization settings x planner budgets over episodes (resumable, shardable) and
    /// write a report with plots.
    Study(study::StudyArgs),
    /// Merge study results (files or study folders) into a markdown table and plots.
    Report(study::ReportArgs),
    /// Choose per-layer weight bits that fit a weight-memory budget with the least distortion of
    /// the planning objective, write that bundle, and check it by planning against the best
    /// uniform scheme of at most the same size.
    Fit(fit::FitArgs),
    /// Write a full-size DINO-WM-shaped bundle with random weights (ONNX built by qwm, no torch),
    /// for profiling and benchmarks at real scale.
    Synth(dataset::SynthArgs),
    /// Where time and memory go: load, resident weights, activation peak, per-module time over a
    /// short planning run, and per-operator time of encoder and predictor calls (tract).
    Profile(profile::ProfileArgs),
    /// Show a bundle's manifest summary (and verify its files).
    Inspect(inspect::InspectArgs),
    /// Check qwm's runtime against a bundle's PyTorch fixtures: encoder, predictor and (bundles
    /// from models/export_dinowm.py) a 5-step rollout; exits non-zero when any output is off.
    Verify(inspect::VerifyArgs),
}

/// When the process started: `qwm plan` reports the start-up time to its first plan from it.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Run the `qwm` command line on the process arguments; returns the exit status (0, or 1 after
/// printing the error). The binary installs [`crate::util::mem::CountingAlloc`] first.
pub fn main() -> i32 {
    STARTED.get_or_init(Instant::now);
    crate::util::mem::mark_installed();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if let Err(e) = crate::kernels::isa::check_env() {
        eprintln!("error: {e}");
        return 1;
    }
    let result = match cli.cmd {
        Cmd::Plan(args) => plan::plan(args).map(|_| ()),
        Cmd::Serve(args) => serve::serve(args),
        Cmd::Dataset(args) => dataset::dataset(args),
        Cmd::Quantize(args) => quantize::quantize(args),
        Cmd::Bench(args) => bench::bench(args),
        Cmd::Study(args) => study::study(args),
        Cmd::Report(args) => study::report(args),
        Cmd::Fit(args) => fit::fit(args),
        Cmd::Synth(args) => dataset::synth(args),
        Cmd::Profile(args) => profile::profile(args),
        Cmd::Inspect(args) => inspect::inspect(args),
        Cmd::Verify(args) => inspect::verify(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
