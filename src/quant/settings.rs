//! The flags of `qwm quantize` as one type: parsed by the command line, and turned back into
//! arguments for a child `qwm quantize` process ([`QuantizeArgs::to_args`], used by the study).

use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;

/// Flags of `qwm quantize`.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(allow_negative_numbers = true)]
pub struct QuantizeArgs {
    /// Float bundle.
    #[arg(long, default_value = "models/wall")]
    pub model: PathBuf,
    /// Output bundle folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Method.
    #[arg(long, value_enum, default_value_t = crate::bundle::Method::Rtn)]
    pub method: crate::bundle::Method,
    /// Encoder scheme (`float` or `w<bits>[a<bits>][-g<size>][-token]`).
    #[arg(
        long,
        default_value = "float",
        help = "Encoder scheme: float or w<bits>[a<bits>][-g<size>][-token]"
    )]
    pub encoder: String,
    /// Predictor scheme (`float` or `w<bits>[a<bits>][-g<size>][-token]`).
    #[arg(
        long,
        default_value = "float",
        help = "Predictor scheme: float or w<bits>[a<bits>][-g<size>][-token]"
    )]
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
    #[arg(long, default_value_t = 0.5, allow_hyphen_values = true)]
    pub smooth_alpha: f32,
    /// GPTQ's dampening: the fraction of the Hessian's mean diagonal added to its diagonal
    /// (raised tenfold, at most four times, while the Hessian is not positive definite).
    #[arg(long, default_value_t = 0.01, allow_hyphen_values = true)]
    pub gptq_damp: f64,
    /// GPTQ: quantize input channels by decreasing Hessian diagonal (group-wise schemes then
    /// take every group's scale from the weights before any error feedback).
    #[arg(long)]
    pub gptq_act_order: bool,
    /// OmniQuant: epochs over the calibration samples per block.
    #[arg(long, default_value_t = 20)]
    pub omni_epochs: usize,
    /// OmniQuant: AdamW learning rate of the clipping factors' logits.
    #[arg(long, default_value_t = 5e-2, allow_hyphen_values = true)]
    pub omni_lwc_lr: f64,
    /// OmniQuant: AdamW learning rate of the equivalent transformations.
    #[arg(long, default_value_t = 5e-3, allow_hyphen_values = true)]
    pub omni_let_lr: f64,
    /// OmniQuant: learn the clipping only (no equivalent transformations; needed with per-layer
    /// schemes).
    #[arg(long)]
    pub omni_no_let: bool,
    /// OmniQuant: where the clipping factors start: `omse` (each block's MSE-optimal ratio) or
    /// `paper` (0.982 everywhere).
    #[arg(long, value_enum, default_value_t = crate::quant::omniquant::LwcInit::Omse)]
    pub omni_lwc_init: crate::quant::omniquant::LwcInit,
    /// OmniQuant: calibration samples per optimizer step.
    #[arg(long, default_value_t = 4)]
    pub omni_batch: usize,
    /// OmniQuant: graph calls' batch items recorded per module during calibration (a seeded
    /// uniform subsample), the training set.
    #[arg(long, default_value_t = 128)]
    pub omni_samples: usize,
    /// OmniQuant: seed of the recorded subsample and of the training step.
    #[arg(long, default_value_t = 0)]
    pub omni_seed: u64,
    /// OmniQuant: Python interpreter with PyTorch that runs the training step (default:
    /// $QWM_PYTHON, else python3).
    #[arg(long)]
    pub omni_python: Option<PathBuf>,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

impl QuantizeArgs {
    /// OmniQuant's settings from these flags.
    pub fn omni_options(&self) -> crate::quant::omniquant::OmniOptions {
        crate::quant::omniquant::OmniOptions {
            epochs: self.omni_epochs,
            lwc_lr: self.omni_lwc_lr,
            let_lr: self.omni_let_lr,
            learn_let: !self.omni_no_let,
            lwc_init: self.omni_lwc_init,
            batch: self.omni_batch,
            samples: self.omni_samples,
            python: self.omni_python.clone(),
            seed: self.omni_seed,
        }
    }

    /// `qwm quantize --model MODEL --out OUT` with every other flag at its default.
    pub fn with_defaults(model: PathBuf, out: PathBuf) -> QuantizeArgs {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            q: QuantizeArgs,
        }
        let argv: [OsString; 5] = [
            "qwm-quantize".into(),
            "--model".into(),
            model.into(),
            "--out".into(),
            out.into(),
        ];
        <Wrap as clap::Parser>::parse_from(argv).q
    }

    /// The `qwm quantize` arguments (after the subcommand) that parse back into these flags.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            v.push(format!("--{name}").into());
            v.push(value);
        };
        flag("model", self.model.clone().into());
        flag("out", self.out.clone().into());
        flag("method", self.method.name().into());
        flag("encoder", self.encoder.clone().into());
        flag("predictor", self.predictor.clone().into());
        flag("form", self.form.name().into());
        flag("accuracy-level", self.accuracy_level.to_string().into());
        flag("calib-episodes", self.calib_episodes.to_string().into());
        flag("calib-iters", self.calib_iters.to_string().into());
        flag("calib-samples", self.calib_samples.to_string().into());
        flag("smooth-alpha", self.smooth_alpha.to_string().into());
        flag("gptq-damp", self.gptq_damp.to_string().into());
        flag("omni-epochs", self.omni_epochs.to_string().into());
        flag("omni-lwc-lr", self.omni_lwc_lr.to_string().into());
        flag("omni-let-lr", self.omni_let_lr.to_string().into());
        flag("omni-batch", self.omni_batch.to_string().into());
        flag("omni-lwc-init", self.omni_lwc_init.name().into());
        flag("omni-samples", self.omni_samples.to_string().into());
        flag("omni-seed", self.omni_seed.to_string().into());
        if let Some(p) = &self.omni_python {
            flag("omni-python", p.clone().into());
        }

        if let Some(t) = self.threads {
            flag("threads", t.to_string().into());
        }
        if self.omni_no_let {
            v.push("--omni-no-let".into());
        }
        if self.gptq_act_order {
            v.push("--gptq-act-order".into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        q: QuantizeArgs,
    }

    #[test]
    fn to_args_parses_back_into_the_same_flags() {
        let parse = |argv: Vec<OsString>| {
            let mut a: Vec<OsString> = vec!["qwm-quantize".into()];
            a.extend(argv);
            Wrap::try_parse_from(a).expect("parses").q
        };
        let d = parse(vec!["--out".into(), "o".into()]);
        assert_eq!(
            QuantizeArgs::with_defaults("models/wall".into(), "o".into()),
            d
        );
        assert_eq!(parse(d.to_args()), d);
        let a = QuantizeArgs {
            method: crate::bundle::Method::Smoothquant,
            encoder: "w8a8".into(),
            predictor: "w4a8-g128-token".into(),
            form: crate::bundle::Form::Deploy,
            accuracy_level: 4,
            calib_episodes: 2,
            calib_iters: 3,
            calib_samples: 30,
            smooth_alpha: 0.25,
            gptq_damp: 0.1,
            gptq_act_order: true,
            omni_epochs: 3,
            omni_lwc_lr: 0.5,
            omni_let_lr: 0.25,
            omni_no_let: true,
            omni_batch: 2,
            omni_lwc_init: crate::quant::omniquant::LwcInit::Paper,
            omni_samples: 16,
            omni_seed: 9,
            omni_python: Some("/usr/bin/python3".into()),
            threads: Some(2),
            ..d
        };
        assert_eq!(parse(a.to_args()), a);
    }
}
