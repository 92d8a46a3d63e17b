//! The manifest's quantization record: what `qwm quantize` did to each module, typed on write and
//! on read (inspect, bench and the study read it back through these types, never by string keys).
//!
//! Field order is alphabetical on purpose: the record was first written through a sorted JSON
//! map, and keeping the order keeps manifests byte-identical across qwm versions.

use super::Role;
use crate::onnx::proto::ActQuant;
use serde::{Deserialize, Serialize};

/// Quantization methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Round to nearest with min-max ranges.
    Rtn,
    /// MSE-optimal clipping of weights (and activation ranges).
    Omse,
    /// Activation-aware weight scaling (per input channel, searched on calibration samples).
    Awq,
    /// SmoothQuant: migrate activation outliers into the weights (needs activation bits).
    Smoothquant,
    /// GPTQ: error-feedback rounding through the inverse Hessian of the calibration inputs
    /// (beyond the study's five methods; the field's standard one for 4-bit weights).
    Gptq,
    /// OmniQuant: learnable weight clipping and learnable equivalent transformations (LayerNorm
    /// to Linear, q to k), trained block by block on calibration inputs (PyTorch,
    /// `models/omniquant.py`, run by `qwm quantize`).
    Omniquant,
}

impl Method {
    /// Lower-case name as the command line writes it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Omse => "omse",
            Method::Awq => "awq",
            Method::Smoothquant => "smoothquant",
            Method::Gptq => "gptq",
            Method::Omniquant => "omniquant",
        }
    }
}

/// The graph form `qwm quantize` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// QuantizeLinear/DequantizeLinear around float matmuls: measures accuracy, runs at float
    /// speed (or slower).
    #[default]
    Simulate,
    /// The same function on integer / packed low-bit operators.
    Deploy,
}

impl Form {
    /// The name written into manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Form::Simulate => "simulate",
            Form::Deploy => "deploy",
        }
    }
}

/// How a layer runs in the deploy form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lowering {
    /// `com.microsoft.MatMulNBits`, 4-bit weights in blocks.
    MatMulNBits,
    /// `QuantizeLinear` + `MatMulInteger` + rescale.
    MatMulInteger,
}

/// How one Linear input was quantized, as recorded (f32 parameters widened to f64, exactly).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActRecord {
    /// Static per-tensor, unsigned asymmetric.
    Static {
        /// Bits.
        bits: u32,
        /// Scale.
        scale: f64,
        /// Zero point in [0, 2^bits - 1].
        zero_point: f64,
    },
    /// Dynamic per-token (min/max over the last axis at run time).
    PerToken {
        /// Bits.
        bits: u32,
    },
}

impl From<ActQuant> for ActRecord {
    fn from(a: ActQuant) -> Self {
        match a {
            ActQuant::Static {
                bits,
                scale,
                zero_point,
            } => ActRecord::Static {
                bits,
                scale: scale as f64,
                zero_point: zero_point as f64,
            },
            ActQuant::PerToken { bits } => ActRecord::PerToken { bits },
        }
    }
}

impl std::fmt::Display for ActRecord {
    /// The record's compact JSON (as `qwm inspect` prints it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

/// Per-layer record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Activation quantization.
    pub activation: Option<ActRecord>,
    /// What GPTQ did (GPTQ layers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gptq: Option<GptqRecord>,
    /// Group size (None: per channel).
    pub group: Option<usize>,
    /// Calibration range of the input (after any migration).
    pub input_range: Option<[f64; 2]>,
    /// The operator the layer runs as in the deploy form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowering: Option<Lowering>,
    /// SmoothQuant / AWQ channel migration: where it was folded, and the chosen alpha.
    pub migration: Option<(String, f64)>,
    /// MatMul node.
    pub node: String,
    /// What OmniQuant learned for this layer (OmniQuant layers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omniquant: Option<OmniLayerRecord>,
    /// Smallest / largest weight scale.
    pub scale_range: [f64; 2],
    /// In x out features.
    pub shape: [usize; 2],
    /// Weight bits.
    pub weight_bits: u32,
    /// Bytes of the float weight it replaces.
    pub weight_bytes_float: usize,
    /// Bytes of integer codes (at the nominal bit-width) plus f32 scales.
    pub weight_bytes_packed: usize,
}

/// What GPTQ did to one layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptqRecord {
    /// Channels processed by decreasing Hessian diagonal (static groups when group-wise).
    pub act_order: bool,
    /// Dampening fraction used (raised tenfold from the requested one while `H` was singular).
    pub damp: f64,
    /// Input channels never seen in calibration (their weights are set to zero).
    pub dead: usize,
    /// The layer's output error on its calibration inputs, `||X (W - Q)||^2 / ||X W||^2`.
    pub output_error: f64,
    /// The same for round-to-nearest of the same scheme.
    pub rtn_output_error: f64,
}

/// What OmniQuant learned for one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OmniLayerRecord {
    /// Smallest / largest learned clipping factor (of each scale block's max |w|).
    pub clip_range: [f64; 2],
    /// The LayerNorm whose equivalent transformation was folded into this layer's rows (and
    /// whether a q-k scale was folded into its columns), when any.
    pub transform: Option<String>,
}

/// OmniQuant's training of one block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OmniBlockRecord {
    /// `omniquant`, or `rtn` where training did not beat round-to-nearest (then kept).
    pub kept: String,
    /// Block output MSE after training (on the quantized inputs).
    pub loss_final: f64,
    /// The same for round-to-nearest.
    pub loss_rtn: f64,
}

/// OmniQuant's run on one module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OmniModuleRecord {
    /// Per block, in graph order.
    pub blocks: Vec<OmniBlockRecord>,
    /// Epochs over the calibration inputs per block.
    pub epochs: usize,
    /// Largest relative change of the float outputs the learned transform makes (float64).
    pub equivalence_error: f64,
    /// Whether equivalent transformations were learned (else clipping only).
    pub learn_let: bool,
    /// Where the clipping factors started (`omse` or `paper`).
    pub lwc_init: String,
    /// Calibration samples (recorded graph calls' batch items).
    pub samples: usize,
}

/// Per-module record (`{"scheme": "float"}` for a module left float).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// MatMulNBits accuracy level of a deploy form's 4-bit layers (absent: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_level: Option<u8>,
    /// Form: `simulate` (QDQ fake quantization) or `deploy` (integer / packed operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<Form>,
    /// Quantized layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerRecord>>,
    /// Method (absent for a float module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// OmniQuant's training (OmniQuant modules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omniquant: Option<OmniModuleRecord>,
    /// Scheme string (`float` for a float module).
    pub scheme: String,
}

impl Default for ModuleRecord {
    fn default() -> Self {
        ModuleRecord::float()
    }
}

impl ModuleRecord {
    /// The record of a module left float.
    pub fn float() -> ModuleRecord {
        ModuleRecord {
            accuracy_level: None,
            form: None,
            layers: None,
            method: None,
            omniquant: None,
            scheme: "float".into(),
        }
    }

    /// The quantized layers (none for a float module).
    pub fn layers(&self) -> &[LayerRecord] {
        self.layers.as_deref().unwrap_or(&[])
    }

    /// Bytes of the quantized layers' weights at their bit width, and of the float weights they
    /// replace.
    pub fn weight_bytes(&self) -> (u64, u64) {
        self.layers().iter().fold((0, 0), |(p, f), l| {
            (
                p + l.weight_bytes_packed as u64,
                f + l.weight_bytes_float as u64,
            )
        })
    }

    /// `scheme` or `scheme form` (e.g. `w8a8 deploy`), as bench tables print it.
    pub fn describe(&self) -> String {
        match self.form {
            Some(f) if self.scheme != "float" => format!("{} {}", self.scheme, f.name()),
            _ => self.scheme.clone(),
        }
    }
}

/// How calibration ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibRecord {
    /// Calibration episodes.
    pub episodes: usize,
    /// MPC iterations per episode.
    pub iters: usize,
    /// CEM samples per optimization step.
    pub samples: usize,
    /// The episodes' task seeds.
    pub task_seeds: Vec<u64>,
    /// Whether the method used calibration statistics.
    pub used: bool,
}

/// The manifest's `quantization` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct QuantRecord {
    /// How calibration ran (absent for a float bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibRecord>,
    /// The encoder's record.
    #[serde(default)]
    pub encoder: ModuleRecord,
    /// The predictor's record.
    #[serde(default)]
    pub predictor: ModuleRecord,
    /// The float bundle it was quantized from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl QuantRecord {
    /// The record of one graph.
    pub fn module(&self, role: Role) -> &ModuleRecord {
        match role {
            Role::Encoder => &self.encoder,
            Role::Predictor => &self.predictor,
        }
    }
}
