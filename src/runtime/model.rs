//! `WorldModel`: a bundle's graphs on a backend, with DINO-WM's token layout and objective.
//!
//! Knows how to preprocess frames, encode observations and goals, roll candidate action
//! sequences forward autoregressively, and score predicted frames against a goal. Knows nothing
//! about planners or environments.

use crate::bundle::{Bundle, Manifest, MappedGraph};
use crate::engine::{Backend, LoadOptions, Session, TensorRef};
use crate::env::{render, Frame};
use crate::error::{QwmError, Result};
use std::time::{Duration, Instant};

/// One frame in latent space: visual tokens and the proprio embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Latent {
    /// `num_patches * visual_dim` values.
    pub visual: Vec<f32>,
    /// `proprio_tokens x proprio_emb_dim` values (see [`Manifest::proprio_len`]).
    pub proprio: Vec<f32>,
}

/// Predicted last frames of a batch of candidates, stored contiguously.
#[derive(Clone, Debug)]
pub struct BatchLatents {
    /// Candidates.
    pub batch: usize,
    /// `[batch, num_patches * visual_dim]`.
    pub visual: Vec<f32>,
    /// `[batch, proprio_tokens x proprio_emb_dim]`.
    pub proprio: Vec<f32>,
}

/// Wall-clock spent inside graph calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelTimers {
    /// Encoder calls.
    pub encode: Duration,
    /// Predictor calls.
    pub predict: Duration,
    /// Number of predictor calls.
    pub predict_calls: u64,
}

/// Where a tapped model's intermediate tensors go (calibration statistics, for the quantizer):
/// the model knows which tensors it exposes, not what is done with them.
pub trait Tap: Send {
    /// One observed tensor, named `module:tensor`, with `channels` values per row.
    fn observe(&mut self, name: &str, data: &[f32], channels: usize);
    /// The inputs of one graph call (`module` 0 encoder, 1 predictor), before it runs; every
    /// input's first axis is the batch. Most taps ignore them (OmniQuant records them).
    fn inputs(&mut self, _module: usize, _inputs: &[(&str, TensorRef)]) {}
    /// The tap itself, for the caller that made it to take back its concrete type.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

/// A loaded world model.
pub struct WorldModel {
    /// The bundle's manifest.
    pub manifest: Manifest,
    encoder: Box<dyn Session>,
    predictor: Box<dyn Session>,
    /// Time spent in graph calls since the last reset.
    pub timers: ModelTimers,
    /// When set, intermediate tensors exposed by [`WorldModel::load_tapped`] go here.
    tap: Option<Box<dyn Tap>>,
    tap_names: [Vec<String>; 2],
}

fn check_objective(bundle: &Bundle) -> Result<()> {
    let mode = &bundle.manifest.objective.mode;
    if mode != "last" {
        return Err(QwmError::bundle(
            &bundle.dir,
            format!("objective.mode '{mode}' is not supported by this runtime (only 'last')"),
        ));
    }
    Ok(())
}

impl WorldModel {
    /// Load both graphs of a bundle on a backend.
    pub fn load(bundle: &Bundle, backend: &dyn Backend, opts: &LoadOptions) -> Result<WorldModel> {
        check_objective(bundle)?;
        let encoder = backend.load(&bundle.encoder, opts)?;
        let predictor = backend.load(&bundle.predictor, opts)?;
        Ok(WorldModel {
            manifest: bundle.manifest.clone(),
            encoder,
            predictor,
            timers: ModelTimers::default(),
            tap: None,
            tap_names: [vec![], vec![]],
        })
    }

    /// Load with extra graph outputs exposing intermediate tensors (encoder taps, predictor
    /// taps); every call then hands them to `tap` (see [`WorldModel::take_tap`]).
    pub fn load_tapped(
        bundle: &Bundle,
        backend: &dyn Backend,
        opts: &LoadOptions,
        taps: [Vec<String>; 2],
        tap: Box<dyn Tap>,
    ) -> Result<WorldModel> {
        check_objective(bundle)?;
        let mut sessions = vec![];
        for (g, t) in [&bundle.encoder, &bundle.predictor].into_iter().zip(&taps) {
            let mut proto = crate::onnx::proto::decode(&g.bytes, &g.spec.file)?;
            crate::onnx::proto::expose(&mut proto, t)?;
            let mut spec = g.spec.clone();
            spec.outputs
                .extend(t.iter().map(|n| crate::bundle::TensorSpec {
                    name: n.clone(),
                    shape: vec![],
                }));
            let graph =
                MappedGraph::from_bytes(&g.path, &crate::onnx::proto::encode(&proto), spec)?;
            sessions.push(backend.load(&graph, opts)?);
        }
        let predictor = sessions.pop().expect("two graphs");
        let encoder = sessions.pop().expect("two graphs");
        Ok(WorldModel {
            manifest: bundle.manifest.clone(),
            encoder,
            predictor,
            timers: ModelTimers::default(),
            tap: Some(tap),
            tap_names: taps,
        })
    }

    /// Take the tap back (None for an untapped model or one already taken).
    pub fn take_tap(&mut self) -> Option<Box<dyn Tap>> {
        self.tap.take()
    }

    /// Replace the encoder (`module` 0) or the predictor (1) with another graph of the same
    /// interface, such as a rewritten copy of `like` held only in memory.
    pub fn replace_graph(
        &mut self,
        module: usize,
        like: &MappedGraph,
        bytes: &[u8],
        backend: &dyn Backend,
        opts: &LoadOptions,
    ) -> Result<()> {
        let graph = MappedGraph::from_bytes(&like.path, bytes, like.spec.clone())?;
        let session = backend.load(&graph, opts)?;
        match module {
            0 => self.encoder = session,
            1 => self.predictor = session,
            _ => {
                return Err(QwmError::Usage(format!(
                    "replace_graph: module {module} (0 encoder, 1 predictor)"
                )))
            }
        }
        Ok(())
    }

    fn absorb_taps(&mut self, module: usize, out: &mut Vec<crate::engine::Tensor>) {
        if out.len() <= 2 {
            return;
        }
        let extra = out.split_off(2);
        if let Some(c) = self.tap.as_mut() {
            for (t, name) in extra.iter().zip(&self.tap_names[module]) {
                let ch = t.shape.last().copied().unwrap_or(0);
                c.observe(
                    &format!("{}:{name}", ["encoder", "predictor"][module]),
                    &t.data,
                    ch,
                );
            }
        }
    }

    /// Visual latent width: tokens x dim.
    pub fn visual_len(&self) -> usize {
        self.manifest.num_patches * self.manifest.visual_dim
    }

    /// Frame -> normalized CHW floats as the manifest says: resize to image_size if needed
    /// (antialiased bilinear), scale to 0..1, subtract the mean and divide by the std per channel.
    pub fn preprocess(&self, frame: &Frame) -> Result<Vec<f32>> {
        let s = self.manifest.image_size;
        if frame.data.len() != frame.height * frame.width * 3
            || frame.height == 0
            || frame.width == 0
        {
            return Err(QwmError::Usage(format!(
                "frame of {}x{} has {} bytes, expected {} (RGB)",
                frame.height,
                frame.width,
                frame.data.len(),
                frame.height * frame.width * 3
            )));
        }
        let hwc: Vec<f32> = if frame.height == s && frame.width == s {
            frame.data.iter().map(|&v| v as f32).collect()
        } else {
            let f: Vec<f32> = frame.data.iter().map(|&v| v as f32).collect();
            render::resize_bilinear_aa(&f, frame.height, frame.width, 3, s, s)
        };
        let mut chw = vec![0f32; 3 * s * s];
        for c in 0..3 {
            let (mean, std) = (self.manifest.pixel_mean[c], self.manifest.pixel_std[c]);
            for i in 0..s * s {
                chw[c * s * s + i] = (hwc[i * 3 + c] / 255.0 - mean) / std;
            }
        }
        Ok(chw)
    }

    /// Raw proprioception -> normalized.
    pub fn normalize_proprio(&self, p: &[f32]) -> Result<Vec<f32>> {
        let m = &self.manifest;
        if p.len() != m.proprio_dim || p.iter().any(|v| !v.is_finite()) {
            return Err(QwmError::Usage(format!(
                "proprio {p:?}: expected {} finite values",
                m.proprio_dim
            )));
        }
        Ok(p.iter()
            .enumerate()
            .map(|(i, v)| (v - m.proprio_mean[i]) / m.proprio_std[i])
            .collect())
    }

    /// The manifest's action limits in normalized model-action space (tiled over frameskip).
    pub fn normalized_action_bounds(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        let m = &self.manifest;
        let (lo, hi) = (m.action_low.as_ref()?, m.action_high.as_ref()?);
        let norm = |v: &[f32]| -> Vec<f32> {
            (0..m.model_action_dim())
                .map(|i| {
                    (v[i % m.action_dim] - m.action_mean[i % m.action_dim])
                        / m.action_std[i % m.action_dim]
                })
                .collect()
        };
        Some((norm(lo), norm(hi)))
    }

    /// Normalized model actions (`[.., frameskip * action_dim]`) -> environment actions per step.
    pub fn denormalize_action(&self, a: &[f32]) -> Vec<Vec<f32>> {
        let m = &self.manifest;
        a.chunks(m.action_dim)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .map(|(i, v)| v * m.action_std[i] + m.action_mean[i])
                    .collect()
            })
            .collect()
    }

    /// Encode frames with their raw proprioception.
    pub fn encode(&mut self, frames: &[&Frame], proprio: &[&[f32]]) -> Result<Vec<Latent>> {
        let m = &self.manifest;
        let b = frames.len();
        if b == 0 || proprio.len() != b {
            return Err(QwmError::Usage(format!(
                "encode: {b} frames and {} proprio vectors",
                proprio.len()
            )));
        }
        let s = m.image_size;
        let mut pix = Vec::with_capacity(b * 3 * s * s);
        let mut pr = Vec::with_capacity(b * m.proprio_dim);
        for (f, p) in frames.iter().zip(proprio) {
            pix.extend(self.preprocess(f)?);
            pr.extend(self.normalize_proprio(p)?);
        }
        let inputs = [
            (
                "pixels",
                TensorRef {
                    shape: &[b, 3, s, s],
                    data: &pix,
                },
            ),
            (
                "proprio",
                TensorRef {
                    shape: &[b, m.proprio_dim],
                    data: &pr,
                },
            ),
        ];
        if let Some(t) = self.tap.as_mut() {
            t.inputs(0, &inputs);
        }
        let t0 = Instant::now();
        let mut out = self.encoder.run(&inputs)?;
        self.timers.encode += t0.elapsed();
        self.absorb_taps(0, &mut out);
        let m = &self.manifest;
        let (vl, el) = (self.visual_len(), m.proprio_len());
        check_outputs(
            "encoder",
            &out,
            &[b * vl, b * el],
            &m.graphs.encoder.outputs,
            b,
        )?;
        Ok((0..b)
            .map(|i| Latent {
                visual: out[0].data[i * vl..(i + 1) * vl].to_vec(),
                proprio: out[1].data[i * el..(i + 1) * el].to_vec(),
            })
            .collect())
    }

    /// Roll `batch` candidate action sequences forward from an observed history.
    ///
    /// `history`: observed latents, oldest first (the last `num_hist` are used; fewer are padded by
    /// repeating the oldest). `past_actions`: normalized model actions taken between consecutive
    /// history frames (`history.len() - 1` of them). `actions`: `[batch, horizon, model_action_dim]`
    /// normalized. Frame t's tokens carry the action applied at t; each predicted frame gets the
    /// next candidate action. Returns the predicted latents after the last action.
    pub fn rollout(
        &mut self,
        history: &[Latent],
        past_actions: &[Vec<f32>],
        actions: &[f32],
        batch: usize,
        horizon: usize,
    ) -> Result<BatchLatents> {
        let m = &self.manifest;
        let (h, a_dim, vl, el) = (
            m.num_hist,
            m.model_action_dim(),
            self.visual_len(),
            m.proprio_len(),
        );
        let (n_patches, v_dim) = (m.num_patches, m.visual_dim);
        if history.is_empty() || past_actions.len() + 1 != history.len() {
            return Err(QwmError::Usage(format!(
                "rollout: {} history frames need {} past actions, got {}",
                history.len(),
                history.len().saturating_sub(1),
                past_actions.len()
            )));
        }
        if batch == 0 || horizon == 0 || actions.len() != batch * horizon * a_dim {
            return Err(QwmError::Usage(format!(
                "rollout: {} action values for batch {batch} x horizon {horizon} x {a_dim}",
                actions.len()
            )));
        }
        // Per-candidate frame store: shared observed frames, then predictions.
        let n_obs = history.len().min(h);
        let obs = &history[history.len() - n_obs..];
        let obs_act = &past_actions[past_actions.len() + 1 - n_obs..];
        // Sequence of frames per candidate: (visual, proprio) for obs (shared) then predicted.
        let mut pred_v: Vec<Vec<f32>> = Vec::with_capacity(horizon); // each [batch * vl]
        let mut pred_p: Vec<Vec<f32>> = Vec::with_capacity(horizon);
        let mut in_v = vec![0f32; batch * h * vl];
        let mut in_p = vec![0f32; batch * h * el];
        let mut in_a = vec![0f32; batch * h * a_dim];
        for k in 0..horizon {
            // Frame indices in the virtual sequence: obs[0..n_obs] then predictions 0..k.
            let total = n_obs + k; // frames available, the last is the current one
            for slot in 0..h {
                // Frame index for this slot (pad by repeating the oldest available frame).
                let want = total as isize - h as isize + slot as isize;
                let fi = want.max(0) as usize;
                for c in 0..batch {
                    let (v, p): (&[f32], &[f32]) = if fi < n_obs {
                        (&obs[fi].visual, &obs[fi].proprio)
                    } else {
                        let j = fi - n_obs;
                        (
                            &pred_v[j][c * vl..(c + 1) * vl],
                            &pred_p[j][c * el..(c + 1) * el],
                        )
                    };
                    in_v[(c * h + slot) * vl..(c * h + slot + 1) * vl].copy_from_slice(v);
                    in_p[(c * h + slot) * el..(c * h + slot + 1) * el].copy_from_slice(p);
                    // Action applied at frame fi: past action for observed frames before the
                    // current one, else the candidate's action at plan step (fi - (n_obs - 1)).
                    let dst = &mut in_a[(c * h + slot) * a_dim..(c * h + slot + 1) * a_dim];
                    if want < 0 {
                        dst.fill(0.0);
                    } else if fi + 1 < n_obs {
                        dst.copy_from_slice(&obs_act[fi]);
                    } else {
                        let step = fi + 1 - n_obs;
                        let off = (c * horizon + step) * a_dim;
                        dst.copy_from_slice(&actions[off..off + a_dim]);
                    }
                }
            }
            let inputs = [
                (
                    "visual",
                    TensorRef {
                        shape: &[batch, h, n_patches, v_dim],
                        data: &in_v,
                    },
                ),
                (
                    "proprio_emb",
                    TensorRef {
                        shape: &[batch, h, el],
                        data: &in_p,
                    },
                ),
                (
                    "action",
                    TensorRef {
                        shape: &[batch, h, a_dim],
                        data: &in_a,
                    },
                ),
            ];
            if let Some(t) = self.tap.as_mut() {
                t.inputs(1, &inputs);
            }
            let t0 = Instant::now();
            let mut out = self.predictor.run(&inputs)?;
            self.timers.predict += t0.elapsed();
            self.timers.predict_calls += 1;
            self.absorb_taps(1, &mut out);
            check_outputs(
                "predictor",
                &out,
                &[batch * vl, batch * el],
                &self.manifest.graphs.predictor.outputs,
                batch,
            )?;
            let mut it = out.into_iter();
            pred_v.push(it.next().expect("checked").data);
            pred_p.push(it.next().expect("checked").data);
        }
        Ok(BatchLatents {
            batch,
            visual: pred_v.pop().expect("horizon >= 1"),
            proprio: pred_p.pop().expect("horizon >= 1"),
        })
    }

    /// DINO-WM's "last" objective per candidate: MSE over visual tokens + alpha x MSE over the
    /// proprio embedding (token 0's when every token carries one, as in DINO-WM). Non-finite
    /// predictions score +inf (ranked last).
    pub fn objective(&self, pred: &BatchLatents, goal: &Latent) -> Vec<f32> {
        let (vl, stride, el) = (
            self.visual_len(),
            self.manifest.proprio_len(),
            self.manifest.proprio_emb_dim,
        );
        let alpha = self.manifest.objective.alpha as f64;
        (0..pred.batch)
            .map(|c| {
                let v = &pred.visual[c * vl..(c + 1) * vl];
                let p = &pred.proprio[c * stride..c * stride + el];
                let mv: f64 = v
                    .iter()
                    .zip(&goal.visual)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    / vl as f64;
                let mp: f64 = p
                    .iter()
                    .zip(&goal.proprio[..el])
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    / el as f64;
                let o = mv + alpha * mp;
                if o.is_finite() {
                    o as f32
                } else {
                    f32::INFINITY
                }
            })
            .collect()
    }
}

/// The outputs of a call must be the manifest's: their number, lengths and shapes (the leading
/// `-1` is the batch, a later `-1` any size). Equal lengths are not enough: a transposed
/// `visual` has the right length and the wrong meaning.
fn check_outputs(
    graph: &str,
    out: &[crate::engine::Tensor],
    lens: &[usize],
    specs: &[crate::bundle::TensorSpec],
    batch: usize,
) -> Result<()> {
    let bad = |msg: String| QwmError::Backend {
        backend: "any",
        graph: graph.into(),
        msg,
    };
    if out.len() != lens.len() || out.iter().zip(lens).any(|(t, l)| t.data.len() != *l) {
        return Err(bad(format!(
            "unexpected outputs: got lengths {:?}, expected {lens:?}",
            out.iter().map(|t| t.data.len()).collect::<Vec<_>>()
        )));
    }
    for (t, spec) in out.iter().zip(specs) {
        let agrees = t.shape.len() == spec.shape.len()
            && t.shape
                .iter()
                .zip(&spec.shape)
                .enumerate()
                .all(|(i, (&d, &w))| {
                    (i == 0 && w < 0 && d == batch) || (i > 0 && w < 0) || d as i64 == w
                });
        if !agrees {
            return Err(bad(format!(
                "output '{}' has shape {:?}, the manifest says {:?} (batch {batch})",
                spec.name, t.shape, spec.shape
            )));
        }
    }
    Ok(())
}
