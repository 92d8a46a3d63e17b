//! qwm: an edge runtime for quantized latent world models (DINO-WM style).
//!
//! Data flows one way: `env -> frame -> encoder -> latent -> planner <-> predictor -> action -> env`.
//! Modules, one job each: [`bundle`] (what a model is on disk), [`backend`] (engines behind one
//! trait), [`model`] (the world model on a backend), [`plan`] (CEM, MPPI), [`episode`] (the MPC
//! loop), [`env`] (simulated environments and datasets), [`report`] (results), [`profile`]
//! (memory and timing readings), [`study`] (quantization sweeps and their report).

pub mod backend;
pub mod bench;
pub mod budget;
pub mod bundle;
pub mod env;
pub mod episode;
pub mod error;
pub mod mem;
pub mod model;
pub mod plan;
pub mod profile;
pub mod quant;
pub mod report;
pub mod study;
pub mod synth;
pub mod target;
pub mod verify;

pub use error::{QwmError, Result};
