//! Post-training quantization of bundles: schemes, weight quantizers, calibration, and ONNX
//! rewriting into standard QDQ form (the "simulate" form: faithful fake quantization).
//!
//! Only the Linear layers (qkv, attention output, fc1, fc2) of encoder and predictor are
//! quantized; Softmax, the attention matmuls, LayerNorm, the patch embedding and the action /
//! proprio encoders stay float, as in the study.

pub mod calib;
pub mod deploy;
pub mod fit;
pub mod gptq;
pub mod omniquant;
pub mod qdq;
pub mod scheme;
pub mod settings;
pub mod weights;

use crate::bundle::record::{CalibRecord, QuantRecord};
use crate::bundle::{sha256_file, Bundle, Manifest, Role};
use crate::engine::{Backend, LoadOptions};
use crate::env::TaskSeeds;
use crate::error::{QwmError, Result};
use crate::onnx::proto as onnx;
use crate::plan::cem::Cem;
use crate::runtime::controller::{Controller, PlanShape};
use crate::runtime::episode::run_episode;
use crate::runtime::model::WorldModel;
use calib::{Calibration, TensorStats};
use onnx::{ActQuant, LinearLayer};
use scheme::Scheme;
use serde::Serialize;
use std::path::{Path, PathBuf};
use weights::{quantize_matrix, Observer};

pub use crate::bundle::record::{Form, LayerRecord, Method, ModuleRecord};

/// What `qwm quantize` needs.
#[derive(Clone, Debug, Serialize)]
pub struct QuantizeConfig {
    /// Float bundle.
    pub model: PathBuf,
    /// Output bundle folder.
    pub out: PathBuf,
    /// Method.
    pub method: Method,
    /// Encoder scheme.
    pub encoder: Scheme,
    /// Predictor scheme.
    pub predictor: Scheme,
    /// Calibration episodes (training-split seeds 99 n + 2).
    pub calib_episodes: usize,
    /// MPC iterations per calibration episode.
    pub calib_iters: usize,
    /// CEM samples during calibration.
    pub calib_samples: usize,
    /// SmoothQuant migration strength.
    pub smooth_alpha: f32,
    /// Threads.
    pub threads: usize,
    /// Graph form written: QDQ fake quantization, or integer / packed operators.
    pub form: Form,
    /// ONNX Runtime's MatMulNBits accuracy level for deploy-form 4-bit layers: 0 (float
    /// activations, exact) or 4 (int8 activations per block, faster on ONNX Runtime).
    pub accuracy_level: u8,
    /// Per-layer schemes overriding the module's, keyed `module:node` (e.g.
    /// `predictor:/blocks.0/fc1/MatMul`); `float` leaves a layer unquantized. Used by `qwm fit`.
    pub layer_schemes: std::collections::BTreeMap<String, Scheme>,
    /// GPTQ's settings (used by `--method gptq`).
    pub gptq: gptq::GptqOptions,
    /// OmniQuant's settings (used by `--method omniquant`).
    pub omniquant: omniquant::OmniOptions,
}

impl QuantizeConfig {
    /// The scheme of one Linear layer: its override, else the module's.
    pub fn layer_scheme(&self, module: &str, node: &str, module_scheme: Scheme) -> Scheme {
        self.layer_schemes
            .get(&format!("{module}:{node}"))
            .copied()
            .unwrap_or(module_scheme)
    }

    /// Whether a module has any quantized layer (its scheme, or an override).
    fn quantizes(&self, module: &str, scheme: Scheme) -> bool {
        !scheme.is_float()
            || self
                .layer_schemes
                .iter()
                .any(|(k, s)| k.starts_with(&format!("{module}:")) && !s.is_float())
    }
}

fn rel(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Run the float model in the planner on calibration seeds, collecting Linear-input statistics.
fn calibrate(
    bundle: &Bundle,
    backend: &dyn Backend,
    cfg: &QuantizeConfig,
    taps: [Vec<String>; 2],
) -> Result<Calibration> {
    calibrate_with(
        bundle,
        backend,
        cfg.calib_episodes,
        cfg.calib_iters,
        cfg.calib_samples,
        cfg.threads,
        cfg.method == Method::Gptq,
        taps,
    )
}

/// Calibration of `taps` (Linear inputs of encoder and predictor): `episodes` calibration
/// episodes (task seeds 99 n + 2) of `iters` MPC steps, CEM with `samples` samples; with
/// `hessians`, also each input's `sum x x^T` (GPTQ).
#[allow(clippy::too_many_arguments)]
pub(crate) fn calibrate_with(
    bundle: &Bundle,
    backend: &dyn Backend,
    episodes: usize,
    iters: usize,
    samples: usize,
    threads: usize,
    hessians: bool,
    taps: [Vec<String>; 2],
) -> Result<Calibration> {
    let tap = run_calibration(
        bundle,
        backend,
        episodes,
        iters,
        samples,
        threads,
        taps,
        Box::new(if hessians {
            Calibration::with_hessians(512)
        } else {
            Calibration::new(512)
        }),
    )?;
    Ok(*tap
        .into_any()
        .downcast::<Calibration>()
        .expect("the tap is the Calibration given above"))
}

/// The calibration run: `episodes` episodes (task seeds 99 n + 2) of `iters` MPC steps, CEM
/// with `samples` samples, planner seed 7, the float model tapped at `taps` into `tap`, which
/// comes back.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_calibration(
    bundle: &Bundle,
    backend: &dyn Backend,
    episodes: usize,
    iters: usize,
    samples: usize,
    threads: usize,
    taps: [Vec<String>; 2],
    tap: Box<dyn crate::runtime::model::Tap>,
) -> Result<Box<dyn crate::runtime::model::Tap>> {
    crate::runtime::budget::check_request(
        &bundle.manifest,
        samples,
        5,
        Some(samples),
        &format!("--calib-samples {samples}"),
    )?;
    let wm = WorldModel::load_tapped(
        bundle,
        backend,
        &LoadOptions::with_threads(threads),
        taps,
        tap,
    )?;
    let mut env = crate::env::make_env(&bundle.manifest.env)?;
    let cem = Cem::new(samples, (samples / 10).max(1), 10, 1.0)?;
    let shape = PlanShape {
        horizon: 5,
        n_taken: 5,
        chunk: samples,
    };
    // Planner seed 7; calibration episode n is the controller's episode n.
    let mut ctl = Controller::new(wm, Box::new(cem), shape, 7)?;
    for n in 0..episodes {
        run_episode(
            &mut ctl,
            env.as_mut(),
            iters,
            n,
            TaskSeeds::calibration(n),
            None,
        )?;
    }
    Ok(ctl
        .model_mut()
        .take_tap()
        .expect("tapped model has its tap"))
}

/// One Linear layer's weight quantizer, shared by `qwm quantize` and `qwm fit`: learned clipping
/// factors (OmniQuant, when `clip` is given), GPTQ (when `gptq` is given) on the calibration
/// Hessian of the layer's input, else `observer`'s scales.
/// Returns GPTQ's record when it ran.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_weight(
    w: &[f32],
    module: &str,
    layer: &LinearLayer,
    bits: u32,
    group: Option<usize>,
    observer: Observer,
    gptq: Option<&gptq::GptqOptions>,
    calib: Option<&Calibration>,
    clip: Option<&[f64]>,
) -> Result<(weights::QuantWeight, Option<gptq::GptqReport>)> {
    let (k, n) = (layer.k, layer.n);
    if let Some(clip) = clip {
        let q = weights::quantize_matrix_clipped(w, k, n, bits, group, clip)?;
        return Ok((q, None));
    }
    let Some(opts) = gptq else {
        return Ok((quantize_matrix(w, k, n, bits, group, observer)?, None));
    };
    let h = calib
        .and_then(|c| c.hessian(&format!("{module}:{}", layer.input)))
        .ok_or_else(|| {
            QwmError::Usage(format!(
                "no calibration Hessian for {module} {}",
                layer.input
            ))
        })?;
    let (q, rep) = gptq::quantize_gptq(w, k, n, &h, bits, group, opts)?;
    Ok((q, Some(rep)))
}

fn smooth_scales(x_absmax: &[f64], w: &[f32], k: usize, n: usize, alpha: f64) -> Vec<f32> {
    (0..k)
        .map(|j| {
            let wmax = (0..n).fold(0f64, |m, c| m.max(w[j * n + c].abs() as f64));
            let s = x_absmax[j].max(1e-5).powf(alpha) / wmax.max(1e-5).powf(1.0 - alpha);
            s.clamp(1e-4, 1e4) as f32
        })
        .collect()
}

/// Scale weight rows (input channels) by `s`.
fn scale_rows(w: &[f32], n: usize, s: &[f32]) -> Vec<f32> {
    w.iter().enumerate().map(|(i, v)| v * s[i / n]).collect()
}

fn matmul_err(x: &[Vec<f32>], w: &[f32], wq: &[f32], s: &[f32], n: usize) -> f64 {
    let mut err = 0f64;
    for row in x {
        for c in 0..n {
            let (mut a, mut b) = (0f64, 0f64);
            for (j, &xv) in row.iter().enumerate() {
                a += xv as f64 * w[j * n + c] as f64;
                b += (xv / s[j]) as f64 * wq[j * n + c] as f64;
            }
            err += (a - b).powi(2);
        }
    }
    err
}

fn static_range(st: &TensorStats, s: Option<&[f32]>) -> (f64, f64) {
    match s {
        None => (st.min, st.max),
        Some(s) => {
            let lo = st
                .chan_min
                .iter()
                .zip(s)
                .map(|(v, s)| v / *s as f64)
                .fold(f64::INFINITY, f64::min);
            let hi = st
                .chan_max
                .iter()
                .zip(s)
                .map(|(v, s)| v / *s as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        }
    }
}

/// OMSE range for activations: shrink the calibrated range in 1% steps (up to 90) keeping the one
/// with the least L2 error on the sampled rows.
fn omse_range(st: &TensorStats, lo: f64, hi: f64, bits: u32, s: Option<&[f32]>) -> (f64, f64) {
    let vals: Vec<f64> = st
        .sample
        .iter()
        .flat_map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, v)| *v as f64 / s.map(|s| s[j] as f64).unwrap_or(1.0))
        })
        .collect();
    if vals.is_empty() {
        return (lo, hi);
    }
    let mut best = (f64::INFINITY, lo, hi);
    for i in 0..90 {
        let r = 1.0 - 0.01 * i as f64;
        let (a, b) = (lo * r, hi * r);
        let (scale, zp) = onnx::act_params(a, b, bits);
        let (scale, zp) = (scale as f64, zp as f64);
        let qmax = ((1u64 << bits) - 1) as f64;
        let err: f64 = vals
            .iter()
            .map(|v| {
                let q = ((v / scale).round_ties_even() + zp).clamp(0.0, qmax);
                (v - (q - zp) * scale).powi(2)
            })
            .sum();
        if err < best.0 {
            best = (err, a, b);
        }
    }
    (best.1, best.2)
}

/// OmniQuant's learned clipping factors by (module, MatMul node, scheme), and each module's
/// training record (of the uniform run).
#[derive(Default)]
struct OmniClips {
    clips: std::collections::BTreeMap<(String, String, String), Vec<f64>>,
    modules: std::collections::BTreeMap<String, omniquant::OmniModule>,
}

fn quantize_module(
    proto: &mut tract_onnx::pb::ModelProto,
    module: &str,
    scheme: Scheme,
    cfg: &QuantizeConfig,
    calib: Option<&Calibration>,
    omni: Option<&OmniClips>,
) -> Result<ModuleRecord> {
    let layers = onnx::find_linears(proto);
    let mut records = vec![];
    let module_scheme = scheme;
    let mixed = cfg
        .layer_schemes
        .keys()
        .any(|k| k.starts_with(&format!("{module}:")));
    for layer in &layers {
        let scheme = cfg.layer_scheme(module, &layer.node, module_scheme);
        let Some(wbits) = scheme.weight_bits else {
            continue;
        };
        let LinearLayer { k, n, .. } = *layer;
        let stats = calib.and_then(|c| c.tensors.get(&format!("{module}:{}", layer.input)));
        let mut w = onnx::initializer(proto, &layer.weight)?;
        let mut migration: Option<(Vec<f32>, f32)> = None;
        match cfg.method {
            Method::Smoothquant => {
                let st = stats.ok_or_else(|| {
                    QwmError::Usage(format!("no calibration data for {}", layer.input))
                })?;
                let s = smooth_scales(&st.chan_absmax, &w, k, n, cfg.smooth_alpha as f64);
                migration = Some((s, cfg.smooth_alpha));
            }
            Method::Awq => {
                let st = stats.ok_or_else(|| {
                    QwmError::Usage(format!("no calibration data for {}", layer.input))
                })?;
                let mean = st.chan_absmean();
                let mut best: Option<(f64, Vec<f32>, f32)> = None;
                for i in 0..=20 {
                    let alpha = i as f64 / 20.0;
                    let raw: Vec<f64> = mean.iter().map(|m| m.max(1e-6).powf(alpha)).collect();
                    let (mx, mn) = raw
                        .iter()
                        .fold((0f64, f64::INFINITY), |(a, b), v| (a.max(*v), b.min(*v)));
                    let norm = (mx * mn).sqrt().max(1e-12);
                    let s: Vec<f32> = raw
                        .iter()
                        .map(|v| (v / norm).clamp(1e-4, 1e4) as f32)
                        .collect();
                    let ws = scale_rows(&w, n, &s);
                    let q = quantize_matrix(&ws, k, n, wbits, scheme.group, Observer::Rtn)?
                        .dequantize();
                    let e = matmul_err(&st.sample, &w, &q, &s, n);
                    if best.as_ref().is_none_or(|b| e < b.0) {
                        best = Some((e, s, alpha as f32));
                    }
                }
                let (_, s, alpha) = best.expect("grid is not empty");
                migration = Some((s, alpha));
            }
            Method::Rtn | Method::Omse | Method::Gptq | Method::Omniquant => {}
        }
        let mut folded = None;
        let mut act_layer = layer.clone();
        if let Some((s, alpha)) = &migration {
            w = scale_rows(&w, n, s);
            onnx::set_initializer(proto, &layer.weight, &w)?;
            let (place, input) = qdq::scale_input_channels(proto, layer, s)?;
            act_layer.input = input;
            folded = Some((place.to_string(), *alpha));
        }
        let observer = if cfg.method == Method::Omse {
            Observer::Omse
        } else {
            Observer::Rtn
        };
        let named = |e: QwmError| QwmError::Usage(format!("{module} {}: {}", layer.node, rel(e)));
        let gptq = (cfg.method == Method::Gptq).then_some(&cfg.gptq);
        let clip = match omni {
            None => None,
            Some(o) => Some(
                o.clips
                    .get(&(module.to_string(), layer.node.clone(), scheme.to_string()))
                    .ok_or_else(|| {
                        QwmError::Usage(format!(
                            "OmniQuant's training step learned no clipping for {module} {} at {scheme}",
                            layer.node
                        ))
                    })?
                    .as_slice(),
            ),
        };
        let (q, gptq_record) = quantize_weight(
            &w,
            module,
            layer,
            wbits,
            scheme.group,
            observer,
            gptq,
            calib,
            clip,
        )
        .map_err(named)?;
        let omni_record = clip.map(|c| crate::bundle::record::OmniLayerRecord {
            clip_range: c.iter().fold([f64::INFINITY, f64::NEG_INFINITY], |r, v| {
                [r[0].min(*v), r[1].max(*v)]
            }),
            transform: omni
                .and_then(|o| o.modules.get(module))
                .and_then(|m| m.transform_of(&layer.node)),
        });
        let scale_range = q
            .scales
            .iter()
            .fold([f32::INFINITY, f32::NEG_INFINITY], |r, s| {
                [r[0].min(*s), r[1].max(*s)]
            });
        let packed = (k * n * wbits as usize).div_ceil(8) + 4 * q.scales.len();
        let lowering = match cfg.form {
            Form::Simulate => None,
            Form::Deploy => Some(
                deploy::lowering_for(scheme)
                    .map_err(|e| QwmError::Usage(format!("{module} {}: {}", layer.node, rel(e))))?,
            ),
        };
        match lowering {
            None => qdq::rewrite_weight(proto, layer, &q)?,
            Some(deploy::Lowering::MatMulNBits) => {
                deploy::lower_nbits(proto, layer, &q, cfg.accuracy_level as i64)?
            }
            // Lowered below, with the activation parameters.
            Some(deploy::Lowering::MatMulInteger) => {}
        }
        let (mut activation, mut input_range) = (None, None);
        if let Some(abits) = scheme.act_bits {
            let a = if scheme.per_token {
                ActQuant::PerToken { bits: abits }
            } else {
                let st = stats.ok_or_else(|| {
                    QwmError::Usage(format!("no calibration data for {}", layer.input))
                })?;
                let s = migration.as_ref().map(|m| m.0.as_slice());
                let (mut lo, mut hi) = static_range(st, s);
                if cfg.method == Method::Omse {
                    (lo, hi) = omse_range(st, lo, hi, abits, s);
                }
                if !(lo.is_finite() && hi.is_finite()) {
                    return Err(QwmError::Numeric(format!(
                        "calibration range of {} is not finite",
                        layer.input
                    )));
                }
                input_range = Some([lo, hi]);
                let (scale, zero_point) = onnx::act_params(lo, hi, abits);
                ActQuant::Static {
                    bits: abits,
                    scale,
                    zero_point,
                }
            };
            match (lowering, a) {
                (
                    Some(deploy::Lowering::MatMulInteger),
                    ActQuant::Static {
                        scale, zero_point, ..
                    },
                ) => deploy::lower_int8(proto, &act_layer, &q, scale, zero_point)?,
                _ => qdq::rewrite_activation(proto, &act_layer, a)?,
            }
            activation = Some(a);
        }
        records.push(LayerRecord {
            node: layer.node.clone(),
            omniquant: omni_record,
            shape: [k, n],
            weight_bits: wbits,
            group: scheme.group,
            scale_range: scale_range.map(f64::from),
            weight_bytes_packed: packed,
            weight_bytes_float: 4 * k * n,
            activation: activation.map(Into::into),
            gptq: gptq_record,
            input_range,
            migration: folded.map(|(place, alpha): (String, f32)| (place, f64::from(alpha))),
            lowering,
        });
    }
    Ok(ModuleRecord {
        scheme: if mixed {
            "mixed".into()
        } else {
            module_scheme.to_string()
        },
        method: Some(cfg.method),
        omniquant: omni
            .and_then(|o| o.modules.get(module))
            .map(|m| m.record(&cfg.omniquant)),
        form: Some(cfg.form),
        accuracy_level: (cfg.form == Form::Deploy && cfg.accuracy_level != 0)
            .then_some(cfg.accuracy_level),
        layers: Some(records),
    })
}

/// Quantize a float bundle into a new bundle folder. Returns the written manifest.
pub fn quantize_bundle(cfg: &QuantizeConfig, backend: &dyn Backend) -> Result<Manifest> {
    if !cfg.quantizes("encoder", cfg.encoder) && !cfg.quantizes("predictor", cfg.predictor) {
        return Err(QwmError::Usage(
            "--encoder and --predictor are both 'float': nothing to quantize".into(),
        ));
    }
    if cfg.method == Method::Smoothquant
        && [cfg.encoder, cfg.predictor]
            .iter()
            .any(|s| !s.is_float() && (s.act_bits.is_none() || s.per_token))
    {
        return Err(QwmError::Usage("--method smoothquant needs static activation bits (e.g. w8a8) on every quantized module".into()));
    }
    if cfg.method == Method::Gptq
        && !(cfg.gptq.damp.is_finite() && cfg.gptq.damp > 0.0 && cfg.gptq.damp <= 1.0)
    {
        return Err(QwmError::Usage(format!(
            "--gptq-damp {} must be in (0, 1] (a fraction of the Hessian's mean diagonal)",
            cfg.gptq.damp
        )));
    }
    if cfg.method == Method::Omniquant {
        cfg.omniquant.check()?;
    }
    if cfg.calib_episodes == 0 || cfg.calib_iters == 0 || cfg.calib_samples < 2 {
        return Err(QwmError::Usage(
            "--calib-episodes and --calib-iters must be at least 1, --calib-samples at least 2"
                .into(),
        ));
    }
    if !(cfg.smooth_alpha.is_finite() && (0.0..=1.0).contains(&cfg.smooth_alpha)) {
        return Err(QwmError::Usage(format!(
            "--smooth-alpha {} must be in 0..=1 (SmoothQuant's migration strength)",
            cfg.smooth_alpha
        )));
    }
    let bundle = Bundle::open(&cfg.model)?;
    let q = &bundle.manifest.quantization;
    let already = q.encoder.scheme != "float" || q.predictor.scheme != "float";
    if already {
        return Err(QwmError::bundle(
            &cfg.model,
            "is already quantized: quantize the float bundle",
        ));
    }
    let schemes = [cfg.encoder, cfg.predictor];
    // OmniQuant: train, then quantize the transformed float bundle with the learned clipping.
    let (_work, omni, bundle) = if cfg.method == Method::Omniquant {
        let (work, omni, transformed) = omniquant_step(&bundle, backend, cfg, schemes)?;
        let b = match transformed {
            Some(dir) => Bundle::open(&dir)?,
            None => bundle,
        };
        (Some(work), Some(omni), b)
    } else {
        (None, None, bundle)
    };
    let mut protos = [
        onnx::decode(&bundle.encoder.bytes, &bundle.encoder.spec.file)?,
        onnx::decode(&bundle.predictor.bytes, &bundle.predictor.spec.file)?,
    ];
    for (p, g) in protos.iter().zip([&bundle.encoder, &bundle.predictor]) {
        onnx::check_initializers(p, &g.spec.file, true)?;
    }
    let needs_calib = cfg.method == Method::Awq
        || cfg.method == Method::Smoothquant
        || cfg.method == Method::Gptq
        || schemes
            .iter()
            .chain(cfg.layer_schemes.values())
            .any(|s| s.act_bits.is_some() && !s.per_token);
    let calib = if needs_calib {
        let taps: Vec<Vec<String>> = protos
            .iter()
            .zip(&schemes)
            .enumerate()
            .map(|(i, (p, s))| {
                if !cfg.quantizes(["encoder", "predictor"][i], *s) {
                    vec![]
                } else {
                    let mut v: Vec<String> =
                        onnx::find_linears(p).into_iter().map(|l| l.input).collect();
                    v.dedup();
                    v
                }
            })
            .collect();
        Some(calibrate(
            &bundle,
            backend,
            cfg,
            [taps[0].clone(), taps[1].clone()],
        )?)
    } else {
        None
    };
    std::fs::create_dir_all(&cfg.out).map_err(|e| QwmError::io(&cfg.out, e))?;
    if cfg.out.canonicalize().ok() == cfg.model.canonicalize().ok() {
        return Err(QwmError::Usage("--out must differ from --model".into()));
    }
    let mut manifest = bundle.manifest.clone();
    let mut record = QuantRecord {
        calibration: Some(CalibRecord {
            episodes: cfg.calib_episodes,
            iters: cfg.calib_iters,
            samples: cfg.calib_samples,
            task_seeds: (0..cfg.calib_episodes)
                .map(TaskSeeds::calibration)
                .collect(),
            used: needs_calib,
        }),
        source: Some(cfg.model.display().to_string()),
        ..QuantRecord::default()
    };
    for (i, (role, scheme)) in Role::BOTH.into_iter().zip(schemes).enumerate() {
        let module = role.name();
        let rec = if !cfg.quantizes(module, scheme) {
            ModuleRecord::float()
        } else {
            quantize_module(
                &mut protos[i],
                module,
                scheme,
                cfg,
                calib.as_ref(),
                omni.as_ref(),
            )?
        };
        match role {
            Role::Encoder => record.encoder = rec,
            Role::Predictor => record.predictor = rec,
        }
    }
    for (i, spec) in [&mut manifest.graphs.encoder, &mut manifest.graphs.predictor]
        .into_iter()
        .enumerate()
    {
        let path = cfg.out.join(&spec.file);
        write_atomic(&path, &onnx::encode(&protos[i]))?;
        spec.sha256 = sha256_file(&path)?;
        spec.bytes = std::fs::metadata(&path)
            .map_err(|e| QwmError::io(&path, e))?
            .len();
    }
    manifest.quantization = record;
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    write_atomic(&cfg.out.join("manifest.json"), text.as_bytes())?;
    Ok(manifest)
}

/// Run OmniQuant's training step for every scheme the layers take: one run with the module
/// schemes (its transformed float bundle is returned), or, with per-layer schemes (`qwm fit`),
/// one clipping-only run per distinct scheme (the float graph then stays as it is, so clipping
/// factors learned at different schemes compose).
fn omniquant_step(
    bundle: &Bundle,
    backend: &dyn Backend,
    cfg: &QuantizeConfig,
    schemes: [Scheme; 2],
) -> Result<(tempfile::TempDir, OmniClips, Option<PathBuf>)> {
    let modules = ["encoder", "predictor"];
    // Distinct non-float schemes per module.
    let mut per_module: [Vec<Scheme>; 2] = [vec![], vec![]];
    let protos = [
        onnx::decode(&bundle.encoder.bytes, &bundle.encoder.spec.file)?,
        onnx::decode(&bundle.predictor.bytes, &bundle.predictor.spec.file)?,
    ];
    for m in 0..2 {
        for l in onnx::find_linears(&protos[m]) {
            let s = cfg.layer_scheme(modules[m], &l.node, schemes[m]);
            if !s.is_float() && !per_module[m].contains(&s) {
                per_module[m].push(s);
            }
        }
    }
    let mixed = per_module.iter().any(|v| v.len() > 1);
    if mixed && cfg.omniquant.learn_let {
        return Err(QwmError::Usage(
            "--method omniquant with per-layer schemes needs --omni-no-let (equivalent transformations trained at one scheme change the float graph every other scheme would be trained on)".into(),
        ));
    }
    let work = tempfile::Builder::new()
        .prefix("qwm-omniquant-")
        .tempdir()
        .map_err(|e| QwmError::io(std::env::temp_dir(), e))?;
    let mut clips = OmniClips::default();
    let mut transformed = None;
    let runs = per_module.iter().map(Vec::len).max().unwrap_or(0);
    for r in 0..runs {
        let run = [0, 1].map(|m| per_module[m].get(r).copied().unwrap_or(Scheme::FLOAT));
        let dir = work.path().join(format!("run{r}"));
        std::fs::create_dir_all(&dir).map_err(|e| QwmError::io(&dir, e))?;
        let p = omniquant::prepare(
            bundle,
            backend,
            run,
            (cfg.calib_episodes, cfg.calib_iters, cfg.calib_samples),
            cfg.threads,
            &cfg.omniquant,
            &dir,
        )?;
        for (m, res) in &p.result.modules {
            for (node, l) in &res.layers {
                clips.clips.insert(
                    (m.clone(), node.clone(), res.scheme.clone()),
                    l.clip.clone(),
                );
            }
            if !mixed {
                clips.modules.insert(m.clone(), res.clone());
            }
        }
        if !mixed {
            transformed = Some(p.bundle);
        }
    }
    Ok((work, clips, transformed))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::util::fs::write_atomic(path, bytes).map_err(|e| QwmError::io(path, e))
}
