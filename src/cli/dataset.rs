//! `qwm dataset` (trajectory datasets from the scripted policies) and `qwm synth` (full-size
//! DINO-WM-shaped bundles with random weights).

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags of `qwm dataset`.
#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct DatasetArgs {
    /// Environment: wall, pointmaze or pusht.
    #[arg(long, value_enum, default_value_t = crate::env::EnvKind::Wall)]
    pub env: crate::env::EnvKind,
    /// Number of episodes.
    #[arg(long, default_value_t = 100)]
    pub episodes: usize,
    /// Steps per episode.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frame side in pixels (the model's input size).
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    /// Top per-axis speed of the scripted pushes and door runs (up to the action bound
    /// 2.45); the default keeps the original ranges (1.6 / 1.4). Planners sample up to the
    /// bound, so a model that never saw fast pushes into the wall mispredicts them.
    #[arg(long)]
    pub speed_max: Option<f64>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// `qwm dataset`.
pub fn dataset(args: DatasetArgs) -> Result<()> {
    let DatasetArgs {
        env,
        episodes,
        steps,
        seed,
        image_size,
        speed_max,
        out,
    } = args;
    let ds =
        crate::env::dataset::generate(env.name(), episodes, steps, seed, image_size, speed_max)?;
    ds.write(&out)
        .with_context(|| format!("writing dataset to {}", out.display()))?;
    println!("wrote {episodes} episodes x {steps} steps of {env} ({image_size}x{image_size} frames) to {}", out.display());
    Ok(())
}

/// Flags of `qwm synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Architecture family.
    #[arg(long, default_value = "dinowm")]
    pub arch: String,
    /// Size preset: vits14-wall (DINOv2 ViT-S/14 at 196 px, predictor depth 6, num_hist 1) or
    /// vits14-h3 (3 history frames).
    #[arg(long, default_value = "vits14-wall")]
    pub preset: String,
    /// Output bundle folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `qwm synth`.
pub fn synth(args: SynthArgs) -> Result<()> {
    let SynthArgs {
        arch,
        preset,
        out,
        seed,
    } = args;
    if arch != "dinowm" {
        bail!("--arch '{arch}': the only architecture is dinowm");
    }
    let a = crate::runtime::synth::Arch::preset(&preset)?;
    let t0 = Instant::now();
    let like = crate::bundle::read_manifest(Path::new("models/wall")).ok();
    let m = crate::runtime::synth::write_bundle(&a, &out, seed, like.as_ref())?;
    println!(
        "wrote {} ({}: {} px, {} tokens x {}, num_hist {}; encoder {}, predictor {}) in {:.1} s",
        out.display(),
        preset,
        m.image_size,
        m.num_patches,
        m.visual_dim,
        m.num_hist,
        crate::util::fmt::fmt_bytes(m.graphs.encoder.bytes),
        crate::util::fmt::fmt_bytes(m.graphs.predictor.bytes),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
