//! What a model is on disk: `manifest.json` + `encoder.onnx` + `predictor.onnx`.
//!
//! Loading reads and validates the manifest, memory-maps the graph files (memmap2) and checks
//! their size and sha256 before any engine sees them. Nothing else in qwm reads manifest JSON.

pub mod record;

pub use record::{Form, LayerRecord, Lowering, Method, ModuleRecord, QuantRecord};

use crate::error::{QwmError, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Which graph of a bundle: the observation encoder or the latent predictor.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Pixels + proprio -> visual tokens + proprio embedding.
    Encoder,
    /// Latent history + actions -> next latents.
    Predictor,
}

impl Role {
    /// Both roles, encoder first (the order of every per-graph pair in qwm).
    pub const BOTH: [Role; 2] = [Role::Encoder, Role::Predictor];

    /// Lower-case name (`encoder`, `predictor`), as manifests, flags and tensor keys write it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Encoder => "encoder",
            Role::Predictor => "predictor",
        }
    }

    /// The role's index in per-graph pairs: encoder 0, predictor 1.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The manifest format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Name and shape of a graph input or output (`-1` marks the batch dimension).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Tensor name in the ONNX graph.
    pub name: String,
    /// Shape; `-1` for the dynamic batch dimension.
    pub shape: Vec<i64>,
}

/// One graph file of the bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    /// File name relative to the bundle folder.
    pub file: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Graph inputs, in order.
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs, in order.
    pub outputs: Vec<TensorSpec>,
}

/// Both graphs of a world model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graphs {
    /// Observation encoder: pixels + proprio -> visual tokens + proprio embedding.
    pub encoder: GraphSpec,
    /// Predictor: history of (visual, proprio_emb, action) -> next visual + proprio embedding.
    pub predictor: GraphSpec,
}

/// Planning objective recorded with the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveSpec {
    /// `last` (final predicted frame) or `all` (frames weighted 2^i).
    pub mode: String,
    /// Weight of the proprio term.
    pub alpha: f32,
}

/// The bundle manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format_version: u32,
    /// Model name.
    pub name: String,
    /// Environment the model was trained on.
    pub env: String,
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Per-channel mean subtracted after scaling pixels to 0..1.
    pub pixel_mean: Vec<f32>,
    /// Per-channel std dividing after the mean.
    pub pixel_std: Vec<f32>,
    /// Environment action dimension.
    pub action_dim: usize,
    /// Environment steps per model step (model action = action_dim x frameskip).
    pub frameskip: usize,
    /// Dataset mean of environment actions.
    pub action_mean: Vec<f32>,
    /// Dataset std of environment actions.
    pub action_std: Vec<f32>,
    /// Lower limit of each environment action (the action space); planners clamp to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_low: Option<Vec<f32>>,
    /// Upper limit of each environment action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_high: Option<Vec<f32>>,
    /// Proprioception dimension.
    pub proprio_dim: usize,
    /// Dataset mean of proprioception.
    pub proprio_mean: Vec<f32>,
    /// Dataset std of proprioception.
    pub proprio_std: Vec<f32>,
    /// Frames of history the predictor sees.
    pub num_hist: usize,
    /// Visual tokens per frame.
    pub num_patches: usize,
    /// Width of a visual token.
    pub visual_dim: usize,
    /// Width of the proprio embedding.
    pub proprio_emb_dim: usize,
    /// Proprio embedding rows carried per frame: 1 (qwm's own models: one embedding, tiled onto
    /// every token inside the predictor) or `num_patches` (DINO-WM's rollout, which keeps each
    /// token's predicted proprio channels and feeds them back). The `proprio_emb` tensors then
    /// hold `proprio_tokens x proprio_emb_dim` values per frame, token-major; the objective reads
    /// token 0's, as DINO-WM's does.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub proprio_tokens: usize,
    /// Planning objective.
    pub objective: ObjectiveSpec,
    /// The graph files.
    pub graphs: Graphs,
    /// Per-module quantization record (`{"scheme": "float"}` for float modules).
    #[serde(default)]
    pub quantization: QuantRecord,
    /// Training record (free-form).
    #[serde(default)]
    pub training: serde_json::Value,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Manifest {
    /// Proprio values carried per latent frame: `proprio_tokens x proprio_emb_dim`.
    pub fn proprio_len(&self) -> usize {
        self.proprio_tokens * self.proprio_emb_dim
    }

    /// Model action width: action_dim x frameskip.
    pub fn model_action_dim(&self) -> usize {
        self.action_dim * self.frameskip
    }

    /// Check internal consistency; `path` names the manifest in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(QwmError::bundle(path, m));
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version {} is not supported (this qwm reads version {FORMAT_VERSION})",
                self.format_version
            ));
        }
        // Each size within what a DINO-WM-style model can have (generous bounds: the full-size
        // DINOv2 ViT-S/14 model is 196 px, 196 tokens of 384, 3 history frames), so that no
        // manifest makes qwm allocate more than it could hold.
        let sizes = [
            ("image_size", self.image_size, 4096),
            ("action_dim", self.action_dim, 256),
            ("frameskip", self.frameskip, 256),
            ("proprio_dim", self.proprio_dim, 4096),
            ("num_hist", self.num_hist, 256),
            ("num_patches", self.num_patches, 1 << 16),
            ("visual_dim", self.visual_dim, 1 << 16),
            ("proprio_emb_dim", self.proprio_emb_dim, 1 << 16),
        ];
        for (k, v, max) in sizes {
            if v == 0 || v > max {
                return bad(format!("{k} = {v} is out of range (1..={max})"));
            }
        }
        if self.proprio_tokens != 1 && self.proprio_tokens != self.num_patches {
            return bad(format!(
                "proprio_tokens = {} must be 1 or num_patches ({})",
                self.proprio_tokens, self.num_patches
            ));
        }
        let vecs: [(&str, &Vec<f32>, usize, bool); 6] = [
            ("pixel_mean", &self.pixel_mean, 3, false),
            ("pixel_std", &self.pixel_std, 3, true),
            ("action_mean", &self.action_mean, self.action_dim, false),
            ("action_std", &self.action_std, self.action_dim, true),
            ("proprio_mean", &self.proprio_mean, self.proprio_dim, false),
            ("proprio_std", &self.proprio_std, self.proprio_dim, true),
        ];
        for (k, v, n, is_std) in vecs {
            if v.len() != n {
                return bad(format!("{k} has {} values, expected {n}", v.len()));
            }
            if v.iter().any(|x| !x.is_finite() || (is_std && *x <= 0.0)) {
                return bad(format!(
                    "{k} must be finite{}: {v:?}",
                    if is_std { " and positive" } else { "" }
                ));
            }
        }
        match (&self.action_low, &self.action_high) {
            (None, None) => {}
            (Some(lo), Some(hi)) => {
                let ok = lo.len() == self.action_dim
                    && hi.len() == self.action_dim
                    && lo
                        .iter()
                        .zip(hi)
                        .all(|(l, h)| l.is_finite() && h.is_finite() && l < h);
                if !ok {
                    return bad(format!("action_low {lo:?} / action_high {hi:?} must be {} finite values with low < high", self.action_dim));
                }
            }
            _ => return bad("action_low and action_high must be given together".into()),
        }
        if self.objective.mode != "last" && self.objective.mode != "all" {
            return bad(format!(
                "objective.mode '{}' must be 'last' or 'all'",
                self.objective.mode
            ));
        }
        if !self.objective.alpha.is_finite() || self.objective.alpha < 0.0 {
            return bad(format!(
                "objective.alpha {} must be finite and >= 0",
                self.objective.alpha
            ));
        }
        let (s, n, d, h, e, a) = (
            self.image_size as i64,
            self.num_patches as i64,
            self.visual_dim as i64,
            self.num_hist as i64,
            self.proprio_len() as i64,
            self.model_action_dim() as i64,
        );
        let expect = |g: &GraphSpec,
                      role: &str,
                      ins: &[(&str, Vec<i64>)],
                      outs: &[(&str, Vec<i64>)]|
         -> Result<()> {
            let check = |kind: &str,
                         have: &[TensorSpec],
                         want: &[(&str, Vec<i64>)]|
             -> Result<()> {
                if have.len() != want.len() {
                    return Err(QwmError::bundle(
                        path,
                        format!(
                            "graphs.{role}.{kind}: {} tensors listed, expected {}",
                            have.len(),
                            want.len()
                        ),
                    ));
                }
                for (t, (name, shape)) in have.iter().zip(want) {
                    if t.name != *name || t.shape != *shape {
                        return Err(QwmError::bundle(
                            path,
                            format!(
                                "graphs.{role}.{kind}: tensor '{}' {:?} disagrees with the manifest's dimensions (expected '{}' {:?})",
                                t.name, t.shape, name, shape
                            ),
                        ));
                    }
                }
                Ok(())
            };
            check("inputs", &g.inputs, ins)?;
            check("outputs", &g.outputs, outs)?;
            if g.file.is_empty() || g.file.contains('/') || g.file.contains("..") {
                return Err(QwmError::bundle(
                    path,
                    format!("graphs.{role}.file '{}' must be a plain file name", g.file),
                ));
            }
            Ok(())
        };
        expect(
            &self.graphs.encoder,
            "encoder",
            &[
                ("pixels", vec![-1, 3, s, s]),
                ("proprio", vec![-1, self.proprio_dim as i64]),
            ],
            &[("visual", vec![-1, n, d]), ("proprio_emb", vec![-1, e])],
        )?;
        expect(
            &self.graphs.predictor,
            "predictor",
            &[
                ("visual", vec![-1, h, n, d]),
                ("proprio_emb", vec![-1, h, e]),
                ("action", vec![-1, h, a]),
            ],
            &[
                ("next_visual", vec![-1, n, d]),
                ("next_proprio_emb", vec![-1, e]),
            ],
        )?;
        Ok(())
    }
}

/// A graph file mapped into memory, with its spec (cloning shares the mapping).
#[derive(Clone)]
pub struct MappedGraph {
    /// Path on disk.
    pub path: PathBuf,
    /// Manifest entry.
    pub spec: GraphSpec,
    /// Read-only mapping of the file (shared with sessions that decode from it later).
    pub bytes: std::sync::Arc<Mmap>,
    /// Whether `bytes` map the file at `path` (false for [`MappedGraph::from_bytes`]): only then
    /// can an engine read weights from the file itself.
    pub on_disk: bool,
}

impl MappedGraph {
    /// Hold graph bytes (a rewritten copy, a fuzz input) in an anonymous read-only mapping, as if
    /// mapped from `path` (kept for error messages).
    pub fn from_bytes(path: &Path, bytes: &[u8], spec: GraphSpec) -> Result<MappedGraph> {
        let mut map =
            memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| QwmError::io(path, e))?;
        map[..bytes.len()].copy_from_slice(bytes);
        let map = map.make_read_only().map_err(|e| QwmError::io(path, e))?;
        Ok(MappedGraph {
            path: path.to_path_buf(),
            spec,
            bytes: std::sync::Arc::new(map),
            on_disk: false,
        })
    }
}

/// A loaded, verified bundle.
pub struct Bundle {
    /// Bundle folder.
    pub dir: PathBuf,
    /// Parsed manifest.
    pub manifest: Manifest,
    /// Encoder graph bytes.
    pub encoder: MappedGraph,
    /// Predictor graph bytes.
    pub predictor: MappedGraph,
}

/// Read and validate `dir/manifest.json` without touching the graphs.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = crate::util::fs::read_text(&path).map_err(|e| QwmError::io(&path, e))?;
    parse_manifest(&text, &path)
}

/// Parse and validate manifest text; `path` names it in errors.
pub fn parse_manifest(text: &str, path: &Path) -> Result<Manifest> {
    // serde_path_to_error names the offending field ("image_size: invalid type ...").
    let de = &mut serde_json::Deserializer::from_str(text);
    let m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field.is_empty() || field == "." {
            QwmError::bundle(path, format!("invalid manifest: {inner}"))
        } else {
            QwmError::bundle(path, format!("invalid manifest: field {field}: {inner}"))
        }
    })?;
    m.validate(path)?;
    Ok(m)
}

fn map_graph(dir: &Path, spec: &GraphSpec, verify: bool) -> Result<MappedGraph> {
    let path = dir.join(&spec.file);
    let file = crate::util::fs::open_regular(&path).map_err(|e| QwmError::io(&path, e))?;
    let len = file.metadata().map_err(|e| QwmError::io(&path, e))?.len();
    if len != spec.bytes {
        return Err(QwmError::bundle(
            &path,
            format!("file is {len} bytes, manifest says {}", spec.bytes),
        ));
    }
    // SAFETY: the mapping is read-only and private to this process; a concurrent writer could
    // change bytes under us, which the sha256 check below detects at load time.
    let bytes = unsafe { Mmap::map(&file) }.map_err(|e| QwmError::io(&path, e))?;
    if verify {
        let digest = hex(&Sha256::digest(&bytes[..]));
        if !digest.eq_ignore_ascii_case(&spec.sha256) {
            return Err(QwmError::bundle(
                &path,
                format!(
                    "sha256 mismatch: file has {digest}, manifest says {}",
                    spec.sha256
                ),
            ));
        }
    }
    Ok(MappedGraph {
        path,
        spec: spec.clone(),
        bytes: std::sync::Arc::new(bytes),
        on_disk: true,
    })
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = crate::util::fs::open_regular(path).map_err(|e| QwmError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(|e| QwmError::io(path, e))?;
    Ok(hex(&h.finalize()))
}

impl Bundle {
    /// Open a bundle folder: manifest, mapped graphs, verified hashes.
    pub fn open(dir: &Path) -> Result<Bundle> {
        if !dir.is_dir() {
            return Err(QwmError::bundle(
                dir,
                "not a folder (expected a bundle with manifest.json)",
            ));
        }
        let manifest = read_manifest(dir)?;
        let encoder = map_graph(dir, &manifest.graphs.encoder, true)?;
        let predictor = map_graph(dir, &manifest.graphs.predictor, true)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            encoder,
            predictor,
        })
    }

    /// Total bytes of the graph files.
    pub fn file_bytes(&self) -> u64 {
        self.encoder.spec.bytes + self.predictor.spec.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `manifest` fuzz target: without serde_json's exact float parsing, a number in
    /// the free-form `training` record (0.015091286040842534) printed and parsed back as another
    /// double, so a manifest did not survive a write/read round trip.
    #[test]
    fn manifests_round_trip_exactly() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
        let path = dir.join("manifest-float-roundtrip.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let m = parse_manifest(&text, &path).unwrap();
        let again = serde_json::to_string(&m).unwrap();
        assert_eq!(parse_manifest(&again, &path).unwrap(), m);
        let v: serde_json::Value = serde_json::from_str("0.015091286040842534").unwrap();
        let w: serde_json::Value = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(v, w);
    }
}
