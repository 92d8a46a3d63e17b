//! `qwm quantize`: flags ([`QuantizeArgs`], in `quant::settings`) resolved into a [`crate::quant::QuantizeConfig`], then one call.

use crate::engine::make_backend;
use anyhow::{Context, Result};
use std::time::Instant;

pub use crate::quant::settings::QuantizeArgs;

/// `qwm quantize`.
pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let omniquant = args.omni_options();
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
        gptq_damp,
        gptq_act_order,
        threads,
        ..
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
        threads: super::args::default_threads(threads)?,
        form,
        accuracy_level,
        layer_schemes: Default::default(),
        gptq: crate::quant::gptq::GptqOptions {
            damp: gptq_damp,
            act_order: gptq_act_order,
            ..Default::default()
        },
        omniquant,
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
