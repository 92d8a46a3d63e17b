//! `qwm quantize`: flags resolved into a [`crate::quant::QuantizeConfig`], then one call.

use crate::engine::make_backend;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `qwm quantize`.
#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct QuantizeArgs {
    /// Float bundle.
    #[arg(long, default_value = "models/wall")]
    pub model: PathBuf,
    /// Output bundle folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Method.
    #[arg(long, value_enum, default_value_t = crate::quant::Method::Rtn)]
    pub method: crate::quant::Method,
    /// Encoder scheme: float or w<bits>[a<bits>][-g<size>][-token].
    #[arg(long, default_value = "float")]
    pub encoder: String,
    /// Predictor scheme: float or w<bits>[a<bits>][-g<size>][-token].
    #[arg(long, default_value = "float")]
    pub predictor: String,
    /// Form: `simulate` (faithful QDQ fake quantization: measures accuracy) or `deploy` (the
    /// same function on integer / packed operators: w4-g16..128 as com.microsoft MatMulNBits,
    /// w8a8 static as MatMulInteger; other schemes are refused).
    #[arg(long, value_enum, default_value_t = crate::bundle::Form::Simulate)]
    pub form: crate::bundle::Form,
    /// ONNX Runtime's MatMulNBits accuracy level for the deploy form's 4-bit layers: 0 (float
    /// activations: the scheme's exact function) or 4 (int8 activations per block: faster on
    /// ONNX Runtime, approximate; tract ignores it).
    #[arg(long, default_value_t = 0)]
    pub accuracy_level: u8,
    /// Calibration episodes (task seeds 99 n + 2, distinct from evaluation seeds 99 n + 1).
    #[arg(long, default_value_t = 4)]
    pub calib_episodes: usize,
    /// MPC iterations per calibration episode.
    #[arg(long, default_value_t = 2)]
    pub calib_iters: usize,
    /// CEM samples during calibration.
    #[arg(long, default_value_t = 100)]
    pub calib_samples: usize,
    /// SmoothQuant migration strength.
    #[arg(long, default_value_t = 0.5)]
    pub smooth_alpha: f32,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `qwm quantize`.
pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let QuantizeArgs {
        model,
        out,
        method,
        encoder,
        predictor,
        form,
        accuracy_level,
        calib_episodes,
        calib_iters,
        calib_samples,
        smooth_alpha,
        threads,
    } = args;
    let cfg = crate::quant::QuantizeConfig {
        model: model.clone(),
        out: out.clone(),
        method,
        encoder: crate::quant::scheme::Scheme::parse(&encoder, "--encoder")?,
        predictor: crate::quant::scheme::Scheme::parse(&predictor, "--predictor")?,
        calib_episodes,
        calib_iters,
        calib_samples,
        smooth_alpha,
        threads: threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1),
        form,
        accuracy_level,
        layer_schemes: Default::default(),
    };
    let t0 = Instant::now();
    let backend = make_backend("tract")?;
    crate::quant::quantize_bundle(&cfg, backend.as_ref())
        .with_context(|| format!("quantizing {}", model.display()))?;
    println!(
        "wrote {} (encoder {encoder}, predictor {predictor}, {method:?}) in {:.1} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
