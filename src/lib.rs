//! qwm: an edge runtime for quantized latent world models (DINO-WM style).
//!
//! Data flows one way: `env -> frame -> encoder -> latent -> planner <-> predictor -> action -> env`.
//! The modules are layers, each importing only the ones above it in this list (checked in CI by
//! `scripts/check-layers.py`):
//!
//! - [`error`]: the library's typed errors.
//! - [`util`]: memory accounting and limits, /proc readings, statistics, formatting.
//! - [`onnx`]: ONNX protobuf builders, the graph index and pattern matching, and the rewrite
//!   passes that run before an engine sees a graph. [`kernels`]: the numeric kernels (int8 GEMM,
//!   fused attention), one file per instruction set.
//! - [`bundle`]: what a model is on disk (manifest, mapped graph files, quantization record).
//! - [`engine`]: execution engines behind one trait (tract, ONNX Runtime) and their operators.
//! - [`env`](mod@env) (simulated environments, datasets) and [`plan`] (CEM, MPPI): pure, model-free.
//! - [`runtime`]: the world model on an engine, the robot-facing controller, the MPC episode, memory budgets, reports,
//!   verification, benchmarks, board profiles, synthetic bundles.
//! - [`quant`]: post-training quantization of bundles and the memory fit.
//! - [`study`]: quantization sweeps and their report. [`serve`]: the controller behind a
//!   socket (`qwm serve`).
//! - [`cli`]: the `qwm` command line, one file per command.

pub mod bundle;
pub mod cli;
pub mod engine;
pub mod env;
pub mod error;
pub mod kernels;
pub mod onnx;
pub mod plan;
pub mod quant;
pub mod runtime;
pub mod serve;
pub mod study;
pub mod util;

pub use error::{QwmError, Result};
