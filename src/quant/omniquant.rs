//! OmniQuant (`qwm quantize --method omniquant`): learnable weight clipping (LWC) and learnable
//! equivalent transformations (LET), trained block by block where gradients are: PyTorch, in
//! `models/omniquant.py` (embedded in the binary, written to a temporary folder and run with
//! `--omni-python`).
//!
//! The Rust half: record the graph inputs the float model is called with while it plans on the
//! calibration seeds (the same calibration run as the other methods), write them as `.npy`, run
//! the training step, read its result back typed, and assemble the transformed float bundle the
//! quantizer then turns into a standard bundle with the learned clipping factors
//! ([`super::weights::quantize_matrix_clipped`]). The transform is exact in float (checked by the
//! script in float64 before and after training, recorded as `equivalence_error`).

use super::scheme::Scheme;
use crate::bundle::record::{OmniBlockRecord, OmniModuleRecord};
use crate::bundle::{sha256_file, Bundle};
use crate::engine::{Backend, TensorRef};
use crate::error::{QwmError, Result};
use crate::runtime::model::Tap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// The training step, as shipped in `models/omniquant.py`.
pub const SCRIPT: &str = include_str!("../../models/omniquant.py");

/// The packages the training step needs (the versions CI installs from models/requirements.txt).
pub const REQUIREMENTS: &str = "torch==2.15.0 onnx==1.23.2 numpy";

/// Where OmniQuant's clipping factors start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LwcInit {
    /// Each scale block's MSE-optimal clipping ratio (OMSE's search, on the weights as the
    /// equivalent transformation starts them).
    Omse,
    /// 0.982 everywhere (`sigmoid(4)`, the paper's start).
    Paper,
}

impl LwcInit {
    /// The name the training step takes.
    pub fn name(self) -> &'static str {
        match self {
            LwcInit::Omse => "omse",
            LwcInit::Paper => "paper",
        }
    }
}

/// OmniQuant's settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OmniOptions {
    /// Epochs over the calibration samples per block.
    pub epochs: usize,
    /// AdamW learning rate of the clipping logits.
    pub lwc_lr: f64,
    /// AdamW learning rate of the equivalent transformations.
    pub let_lr: f64,
    /// Learn equivalent transformations (else clipping only).
    pub learn_let: bool,
    /// Where the clipping factors start.
    pub lwc_init: LwcInit,
    /// Calibration samples per optimizer step.
    pub batch: usize,
    /// Graph calls' batch items kept per module (a seeded uniform subsample of the run).
    pub samples: usize,
    /// Python interpreter with PyTorch (None: `$QWM_PYTHON`, else `python3`).
    pub python: Option<PathBuf>,
    /// Seed of the training step.
    pub seed: u64,
}

impl Default for OmniOptions {
    fn default() -> Self {
        OmniOptions {
            epochs: 20,
            lwc_lr: 5e-2,
            let_lr: 5e-3,
            learn_let: true,
            lwc_init: LwcInit::Omse,
            batch: 4,
            samples: 128,
            python: None,
            seed: 0,
        }
    }
}

impl OmniOptions {
    /// Refuse settings the training step cannot use, naming the flag.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(QwmError::Usage(m));
        if self.epochs > 10_000 {
            return bad(format!(
                "--omni-epochs {} must be at most 10000",
                self.epochs
            ));
        }
        for (flag, v) in [
            ("--omni-lwc-lr", self.lwc_lr),
            ("--omni-let-lr", self.let_lr),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 10.0) {
                return bad(format!("{flag} {v} must be in (0, 10]"));
            }
        }
        if self.batch == 0 {
            return bad("--omni-batch must be at least 1".into());
        }
        if self.samples < self.batch.max(2) {
            return bad(format!(
                "--omni-samples {} must be at least 2 and at least --omni-batch {}",
                self.samples, self.batch
            ));
        }
        Ok(())
    }

    /// The interpreter that runs the training step.
    pub fn python(&self) -> PathBuf {
        self.python
            .clone()
            .or_else(|| std::env::var_os("QWM_PYTHON").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("python3"))
    }
}

/// Records a seeded uniform subsample (reservoir) of the batch items the encoder and the
/// predictor are called with.
pub struct InputRecorder {
    keep: usize,
    state: u64,
    seen: [u64; 2],
    /// Per module: input names and their shapes without the batch axis (first call).
    shapes: [Vec<(String, Vec<usize>)>; 2],
    /// Per module, per kept item: every input's values.
    items: [Vec<Vec<Vec<f32>>>; 2],
}

impl InputRecorder {
    /// Keep up to `keep` items per module; `seed` fixes which.
    pub fn new(keep: usize, seed: u64) -> InputRecorder {
        InputRecorder {
            keep,
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            seen: [0; 2],
            shapes: [vec![], vec![]],
            items: [vec![], vec![]],
        }
    }

    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Items kept for a module.
    pub fn len(&self, module: usize) -> usize {
        self.items[module].len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.iter().all(|v| v.is_empty())
    }

    /// Write `<dir>/<module>.<input>.npy` for every input of every recorded module.
    pub fn write(&self, dir: &Path) -> Result<()> {
        for m in 0..2 {
            for (i, (name, shape)) in self.shapes[m].iter().enumerate() {
                let mut full = vec![self.items[m].len()];
                full.extend(shape);
                let data: Vec<f32> = self.items[m]
                    .iter()
                    .flat_map(|it| it[i].iter().copied())
                    .collect();
                let a = ndarray::ArrayD::from_shape_vec(full, data)
                    .map_err(|e| QwmError::Numeric(format!("calibration input {name}: {e}")))?;
                let path = dir.join(format!("{}.{name}.npy", ["encoder", "predictor"][m]));
                ndarray_npy::write_npy(&path, &a)
                    .map_err(|e| QwmError::io(&path, std::io::Error::other(e.to_string())))?;
            }
        }
        Ok(())
    }
}

impl Tap for InputRecorder {
    fn observe(&mut self, _name: &str, _data: &[f32], _channels: usize) {}

    fn inputs(&mut self, module: usize, inputs: &[(&str, TensorRef)]) {
        let Some(batch) = inputs.first().and_then(|(_, t)| t.shape.first().copied()) else {
            return;
        };
        if self.shapes[module].is_empty() {
            self.shapes[module] = inputs
                .iter()
                .map(|(n, t)| (n.to_string(), t.shape[1..].to_vec()))
                .collect();
        }
        let same = self.shapes[module].len() == inputs.len()
            && self.shapes[module]
                .iter()
                .zip(inputs)
                .all(|((n, s), (m, t))| {
                    n == m
                        && t.shape.len() == s.len() + 1
                        && &t.shape[1..] == s.as_slice()
                        && t.shape[0] == batch
                });
        if !same {
            return; // another history length: the training step needs one shape per input
        }
        for b in 0..batch {
            self.seen[module] += 1;
            let slot = if self.items[module].len() < self.keep {
                None
            } else {
                let j = (self.next() % self.seen[module]) as usize;
                if j >= self.keep {
                    continue;
                }
                Some(j)
            };
            let item: Vec<Vec<f32>> = inputs
                .iter()
                .map(|(_, t)| {
                    let per = t.data.len() / batch;
                    t.data[b * per..(b + 1) * per].to_vec()
                })
                .collect();
            match slot {
                None => self.items[module].push(item),
                Some(j) => self.items[module][j] = item,
            }
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// The training step's result file (`omniquant.json`), read back typed.
#[derive(Clone, Debug, Deserialize)]
pub struct OmniResult {
    /// Format version (1).
    pub version: u32,
    /// Per module trained.
    pub modules: BTreeMap<String, OmniModule>,
}

/// One module's result.
#[derive(Clone, Debug, Deserialize)]
pub struct OmniModule {
    /// Scheme trained for.
    pub scheme: String,
    /// Calibration samples.
    pub samples: usize,
    /// Relative change of the float outputs by the transform (float64).
    pub equivalence_error: f64,
    /// Per block.
    pub blocks: Vec<OmniBlock>,
    /// Per Linear layer (MatMul node name).
    pub layers: BTreeMap<String, OmniLayer>,
    /// The equivalent transformations.
    pub transforms: Vec<OmniTransform>,
}

/// One block's training.
#[derive(Clone, Debug, Deserialize)]
pub struct OmniBlock {
    /// First and last node.
    pub nodes: [String; 2],
    /// Its Linear layers.
    pub linears: Vec<String>,
    /// Block output MSE with round-to-nearest.
    pub loss_rtn: f64,
    /// At the start of training.
    pub loss_start: f64,
    /// After training (or RTN's, when kept).
    pub loss_final: f64,
    /// `omniquant` or `rtn`.
    pub kept: String,
}

/// One layer's clipping factors.
#[derive(Clone, Debug, Deserialize)]
pub struct OmniLayer {
    /// `[groups, N]` row-major, each in (0, 1].
    pub clip: Vec<f64>,
    /// Scale blocks per column.
    pub groups: usize,
    /// Output features.
    pub n: usize,
}

/// One equivalent transformation.
#[derive(Clone, Debug, Deserialize)]
pub struct OmniTransform {
    /// LayerNorm node.
    pub norm: String,
    /// Linear layers reading it.
    pub linears: Vec<String>,
    /// Smallest / largest learned channel scale.
    pub scale_range: [f64; 2],
    /// Whether a shift was learned too.
    pub shift: bool,
    /// Fused qkv layers with a q-k scale.
    pub qk: Vec<String>,
}

impl OmniModule {
    /// The record written into the manifest.
    pub fn record(&self, opts: &OmniOptions) -> OmniModuleRecord {
        OmniModuleRecord {
            blocks: self
                .blocks
                .iter()
                .map(|b| OmniBlockRecord {
                    kept: b.kept.clone(),
                    loss_final: b.loss_final,
                    loss_rtn: b.loss_rtn,
                })
                .collect(),
            epochs: opts.epochs,
            equivalence_error: self.equivalence_error,
            learn_let: opts.learn_let,
            lwc_init: opts.lwc_init.name().into(),
            samples: self.samples,
        }
    }

    /// The transform folded into a layer, as recorded.
    pub fn transform_of(&self, node: &str) -> Option<String> {
        self.transforms
            .iter()
            .find(|t| t.linears.iter().any(|l| l == node))
            .map(|t| {
                if t.qk.iter().any(|l| l == node) {
                    format!("{} (and q-k)", t.norm)
                } else {
                    t.norm.clone()
                }
            })
    }
}

fn read_result(path: &Path) -> Result<OmniResult> {
    let text = std::fs::read_to_string(path).map_err(|e| QwmError::io(path, e))?;
    let r: OmniResult = serde_json::from_str(&text)
        .map_err(|e| QwmError::bundle(path, format!("is not OmniQuant's result: {e}")))?;
    if r.version != 1 {
        return Err(QwmError::bundle(
            path,
            format!("version {} (expected 1)", r.version),
        ));
    }
    for (m, module) in &r.modules {
        if !module.equivalence_error.is_finite() {
            return Err(QwmError::Numeric(format!(
                "{m}: equivalence error is not finite"
            )));
        }
        for (node, l) in &module.layers {
            if l.clip.len() != l.groups * l.n
                || l.clip
                    .iter()
                    .any(|c| !(c.is_finite() && *c > 0.0 && *c <= 1.0))
            {
                return Err(QwmError::Numeric(format!(
                    "{}: {m} {node}: clipping factors are not {} x {} values in (0, 1]",
                    path.display(),
                    l.groups,
                    l.n
                )));
            }
        }
    }
    Ok(r)
}

/// What the training step produced: the transformed float bundle (in `work`) and its result.
pub struct Prepared {
    /// The transformed float bundle's folder.
    pub bundle: PathBuf,
    /// The result.
    pub result: OmniResult,
}

/// Run the float model on the calibration seeds recording its inputs, train OmniQuant for
/// `schemes` (encoder, predictor; `float` skips a module), and assemble the transformed float
/// bundle in `work` (a folder the caller created).
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    bundle: &Bundle,
    backend: &dyn Backend,
    schemes: [Scheme; 2],
    calib: (usize, usize, usize),
    threads: usize,
    opts: &OmniOptions,
    work: &Path,
) -> Result<Prepared> {
    opts.check()?;
    for s in schemes.iter().filter(|s| !s.is_float()) {
        if s.weight_bits.is_none() {
            return Err(QwmError::Usage(format!("--method omniquant: scheme {s}")));
        }
    }
    // The interpreter first: a missing PyTorch is found before minutes of calibration.
    let script = work.join("omniquant.py");
    std::fs::write(&script, SCRIPT).map_err(|e| QwmError::io(&script, e))?;
    let python = opts.python();
    run_script(&python, &script, |c| {
        c.arg("--check");
    })?;
    let (episodes, iters, samples) = calib;
    let recorder = super::run_calibration(
        bundle,
        backend,
        episodes,
        iters,
        samples,
        threads,
        [vec![], vec![]],
        Box::new(InputRecorder::new(opts.samples, opts.seed)),
    )?;
    let rec = recorder
        .into_any()
        .downcast::<InputRecorder>()
        .expect("the tap is the InputRecorder given above");
    for (m, s) in schemes.iter().enumerate() {
        if !s.is_float() && rec.len(m) < 2 {
            return Err(QwmError::Usage(format!(
                "--method omniquant: calibration recorded {} {} input(s); raise --calib-episodes",
                rec.len(m),
                ["encoder", "predictor"][m]
            )));
        }
    }
    let calib_dir = work.join("calib");
    let out = work.join("bundle");
    for d in [&calib_dir, &out] {
        std::fs::create_dir_all(d).map_err(|e| QwmError::io(d, e))?;
    }
    rec.write(&calib_dir)?;
    run_script(&python, &script, |cmd| {
        cmd.arg("--model")
            .arg(&bundle.dir)
            .arg("--calib")
            .arg(&calib_dir)
            .arg("--out")
            .arg(&out)
            .arg("--encoder")
            .arg(schemes[0].to_string())
            .arg("--predictor")
            .arg(schemes[1].to_string())
            .arg("--epochs")
            .arg(opts.epochs.to_string())
            .arg("--lwc-lr")
            .arg(opts.lwc_lr.to_string())
            .arg("--let-lr")
            .arg(opts.let_lr.to_string())
            .arg("--batch")
            .arg(opts.batch.to_string())
            .arg("--lwc-init")
            .arg(opts.lwc_init.name())
            .arg("--seed")
            .arg(opts.seed.to_string())
            .arg("--threads")
            .arg(threads.to_string());
        if !opts.learn_let {
            cmd.arg("--no-let");
        }
    })?;
    let result = read_result(&out.join("omniquant.json"))?;
    assemble(bundle, &out)?;
    Ok(Prepared {
        bundle: out,
        result,
    })
}

/// Run the training step with `args`; its progress lines go to stderr, its failure becomes an
/// error carrying its last lines (and the install command when PyTorch is missing).
fn run_script(
    python: &Path,
    script: &Path,
    args: impl FnOnce(&mut std::process::Command),
) -> Result<()> {
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script);
    args(&mut cmd);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let install = format!(
        "OmniQuant's training step needs Python 3 with PyTorch: install it with `{} -m pip install {REQUIREMENTS}`, or point --omni-python (or QWM_PYTHON) at an interpreter that has it",
        python.display()
    );
    let mut child = cmd.spawn().map_err(|e| {
        QwmError::Usage(format!(
            "--omni-python {}: cannot run it ({e}). {install}",
            python.display()
        ))
    })?;
    // Progress goes through (one line per block); the tail is kept for the error.
    let mut tail: Vec<String> = vec![];
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines().map_while(|l| l.ok()) {
            log::info!("{line}");
            if line.starts_with("omniquant: ") && !line.contains("needs PyTorch")
                || line.starts_with("  ")
            {
                eprintln!("{line}");
            }
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| QwmError::Usage(format!("{}: {e}", python.display())))?;
    let last = tail.join("\n");
    match status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(QwmError::Usage(format!("{last}\n{install}"))),
        _ => Err(QwmError::Usage(format!(
            "OmniQuant's training step ({} {}) failed ({status}):\n{last}",
            python.display(),
            script.display()
        ))),
    }
}

/// Complete the training step's output folder into a bundle: graphs it did not transform are
/// copied, and the manifest names the new files' hashes and sizes.
fn assemble(bundle: &Bundle, out: &Path) -> Result<()> {
    let mut manifest = bundle.manifest.clone();
    for (spec, src) in [
        (&mut manifest.graphs.encoder, &bundle.encoder.path),
        (&mut manifest.graphs.predictor, &bundle.predictor.path),
    ] {
        let path = out.join(&spec.file);
        if !path.exists() {
            std::fs::copy(src, &path).map_err(|e| QwmError::io(&path, e))?;
        }
        spec.sha256 = sha256_file(&path)?;
        spec.bytes = std::fs::metadata(&path)
            .map_err(|e| QwmError::io(&path, e))?
            .len();
    }
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    let path = out.join("manifest.json");
    std::fs::write(&path, text).map_err(|e| QwmError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_a_seeded_subsample_of_batch_items() {
        let run = |seed| {
            let mut r = InputRecorder::new(5, seed);
            for call in 0..10 {
                let data: Vec<f32> = (0..8).map(|i| (call * 8 + i) as f32).collect();
                let other: Vec<f32> = (0..4).map(|i| -((call * 4 + i) as f32)).collect();
                r.inputs(
                    1,
                    &[
                        (
                            "a",
                            TensorRef {
                                shape: &[4, 2],
                                data: &data,
                            },
                        ),
                        (
                            "b",
                            TensorRef {
                                shape: &[4, 1],
                                data: &other,
                            },
                        ),
                    ],
                );
            }
            r
        };
        let r = run(3);
        assert_eq!(r.len(1), 5);
        assert_eq!(r.len(0), 0);
        // Every kept item is one batch row of both inputs, the same row.
        for it in &r.items[1] {
            let row = (it[0][0] / 2.0) as usize;
            assert_eq!(it[0], vec![2.0 * row as f32, 2.0 * row as f32 + 1.0]);
            assert_eq!(it[1], vec![-(row as f32)]);
        }
        // Deterministic per seed, and it reaches past the first calls.
        assert_eq!(run(3).items, r.items);
        assert!(r.items[1].iter().any(|it| it[0][0] >= 10.0 * 2.0));
        let dir = tempfile::tempdir().unwrap();
        r.write(dir.path()).unwrap();
        let a: ndarray::ArrayD<f32> =
            ndarray_npy::read_npy(dir.path().join("predictor.a.npy")).unwrap();
        assert_eq!(a.shape(), &[5, 2]);
    }

    #[test]
    fn options_name_the_flag_they_refuse() {
        let d = OmniOptions::default();
        d.check().unwrap();
        for (o, flag) in [
            (
                OmniOptions {
                    lwc_lr: f64::NAN,
                    ..d.clone()
                },
                "--omni-lwc-lr",
            ),
            (
                OmniOptions {
                    let_lr: 0.0,
                    ..d.clone()
                },
                "--omni-let-lr",
            ),
            (
                OmniOptions {
                    batch: 0,
                    ..d.clone()
                },
                "--omni-batch",
            ),
            (
                OmniOptions {
                    samples: 1,
                    ..d.clone()
                },
                "--omni-samples",
            ),
            (
                OmniOptions {
                    epochs: 1 << 20,
                    ..d.clone()
                },
                "--omni-epochs",
            ),
        ] {
            let e = o.check().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    #[test]
    fn results_with_bad_clipping_factors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("omniquant.json");
        let body = |clip: &str| {
            format!(
                r#"{{"version": 1, "modules": {{"encoder": {{"scheme": "w4", "samples": 2, "equivalence_error": 0.0, "blocks": [], "layers": {{"/fc1/MatMul": {{"clip": {clip}, "groups": 1, "n": 2}}}}, "transforms": []}}}}}}"#
            )
        };
        std::fs::write(&p, body("[0.5, 1.0]")).unwrap();
        read_result(&p).unwrap();
        for bad in ["[0.5, 1.5]", "[0.5]", "[0.0, 1.0]"] {
            std::fs::write(&p, body(bad)).unwrap();
            assert!(read_result(&p).is_err(), "{bad}");
        }
    }
}
