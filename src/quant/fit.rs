//! `qwm fit`: the per-layer weight bit allocation that fits a memory budget with the least
//! distortion of the planning objective.
//!
//! 1. **Probe.** A fixed set of planning situations (calibration task seeds 99 n + 2: start frame,
//!    goal frame) and seeded random candidate action sequences. The float model scores every
//!    candidate with DINO-WM's objective; that vector `J` is what the planner ranks.
//! 2. **Sensitivity.** Every Linear layer of encoder and predictor is quantized alone at every
//!    option (weight-only, by `--method`: RTN, OMSE, GPTQ or OmniQuant's clipping; w8, w6, w4-g32, w4, w3-g32, w3 by
//!    default), and the objective's
//!    distortion `D = sum (J_q - J)^2 / sum J^2` is measured through the whole model (an encoder
//!    layer changes the start and goal latents; a predictor layer the predictions).
//! 3. **Allocation.** Assuming distortions add, a multiple-choice knapsack (dynamic programming over
//!    bytes) picks one option per layer minimising the summed distortion with all weights (at
//!    their bit width; the non-Linear parameters stay f32) within the budget.
//! 4. **Check.** The chosen allocation, and every uniform scheme, are measured as whole models, so
//!    the additivity assumption and the gain over the best uniform scheme of at most the same size
//!    are reported; `qwm fit` then plans episodes with both (see the command).

use super::calib::Calibration;
use super::gptq::GptqOptions;
use super::qdq;
use super::scheme::Scheme;
use super::weights::Observer;
use crate::bundle::Bundle;
use crate::engine::{Backend, LoadOptions};
use crate::env::Frame;
use crate::error::{QwmError, Result};
use crate::onnx::proto::{self as onnx, LinearLayer};
use crate::runtime::model::WorldModel;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::Serialize;
use tract_onnx::pb::ModelProto;

/// Default options, most to least precise.
pub const DEFAULT_OPTIONS: &[&str] = &["w8", "w6", "w4-g32", "w4", "w3-g32", "w3"];

/// How `qwm fit` quantizes a layer's weights (the weight-only methods: AWQ and SmoothQuant
/// rescale activations too, which a per-layer weight allocation does not model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FitMethod {
    /// Round to nearest, min-max scales.
    Rtn,
    /// MSE-optimal clipping per block.
    Omse,
    /// GPTQ with its default settings, Hessians from one calibration run of the float model
    /// (`qwm quantize`'s default calibration: 4 episodes, 2 MPC steps, 100 samples).
    Gptq,
    /// OmniQuant's learned weight clipping, trained once per option on the same calibration as
    /// GPTQ, without equivalent transformations (they change the float graph, so per-layer
    /// choices trained at different schemes would not compose).
    Omniquant,
}

impl FitMethod {
    /// The same method for `qwm quantize`.
    pub fn method(self) -> crate::bundle::Method {
        match self {
            FitMethod::Rtn => crate::bundle::Method::Rtn,
            FitMethod::Omse => crate::bundle::Method::Omse,
            FitMethod::Gptq => crate::bundle::Method::Gptq,
            FitMethod::Omniquant => crate::bundle::Method::Omniquant,
        }
    }
}

/// OmniQuant's settings in `qwm fit` (clipping only, see [`FitMethod::Omniquant`]).
pub fn omni_options() -> super::omniquant::OmniOptions {
    super::omniquant::OmniOptions {
        learn_let: false,
        ..Default::default()
    }
}

/// Calibration of `qwm fit --method gptq` and `--method omniquant` (`qwm quantize`'s defaults).
pub const GPTQ_CALIBRATION: (usize, usize, usize) = (4, 2, 100);

/// What `qwm fit` needs.
#[derive(Clone, Debug)]
pub struct FitConfig {
    /// Weight quantizer of every option.
    pub method: FitMethod,
    /// Weight-only schemes a layer may take (float is always allowed).
    pub options: Vec<Scheme>,
    /// Probe situations (task seeds 99 n + 2).
    pub tasks: usize,
    /// Candidate action sequences per situation.
    pub candidates: usize,
    /// Planning horizon of the candidates.
    pub horizon: usize,
    /// Seed of the candidates.
    pub seed: u64,
    /// Threads.
    pub threads: usize,
}

/// One Linear layer's options.
#[derive(Clone, Debug, Serialize)]
pub struct LayerOptions {
    /// `encoder` or `predictor`.
    pub module: String,
    /// MatMul node.
    pub node: String,
    /// Input x output features.
    pub shape: [usize; 2],
    /// Bytes per option (`float` first, then the configured options).
    pub bytes: Vec<u64>,
    /// Objective distortion per option with only this layer quantized.
    pub distortion: Vec<f64>,
}

/// A measured whole-model configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// Name (`uniform w4`, `fit`).
    pub name: String,
    /// Weight bytes at bit width (all parameters).
    pub bytes: u64,
    /// Objective distortion of the whole model.
    pub distortion: f64,
    /// Mean Spearman rank correlation of the candidates' objectives with the float model's, per
    /// probe situation (1 = same ranking).
    pub rank_correlation: f64,
}

/// Sensitivities of every layer, plus the uniform schemes as whole models.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    /// Option names: `float`, then the configured options.
    pub options: Vec<String>,
    /// Bytes of the parameters that are never quantized (f32).
    pub fixed_bytes: u64,
    /// Per layer.
    pub layers: Vec<LayerOptions>,
    /// Each uniform option on every layer.
    pub uniform: Vec<Measured>,
}

/// A chosen allocation.
#[derive(Clone, Debug, Serialize)]
pub struct Allocation {
    /// Budget (bytes).
    pub budget_bytes: u64,
    /// Chosen option index per layer (into `Analysis::options`).
    pub choice: Vec<usize>,
    /// Total weight bytes.
    pub bytes: u64,
    /// Sum of the per-layer distortions (the prediction).
    pub predicted_distortion: f64,
}

struct ProbeTask {
    obs: (Frame, Vec<f32>),
    goal: (Frame, Vec<f32>),
}

struct Probe {
    tasks: Vec<ProbeTask>,
    actions: Vec<f32>,
    candidates: usize,
    horizon: usize,
}

fn make_probe(wm: &WorldModel, cfg: &FitConfig) -> Result<Probe> {
    let env = crate::env::make_env(&wm.manifest.env)?;
    let size = wm.manifest.image_size;
    let mut tasks = Vec::new();
    for n in 0..cfg.tasks {
        let task = env.sample_task(crate::env::TaskSeeds::calibration(n));
        tasks.push(ProbeTask {
            obs: (
                env.render_state(&task.start, size),
                env.proprio_of(&task.start),
            ),
            goal: (
                env.render_state(&task.goal, size),
                env.proprio_of(&task.goal),
            ),
        });
    }
    let a = wm.manifest.model_action_dim();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let bounds = wm.normalized_action_bounds();
    let mut actions = Vec::with_capacity(cfg.candidates * cfg.horizon * a);
    for _ in 0..cfg.candidates * cfg.horizon {
        for j in 0..a {
            let mut v: f32 = rng.sample(StandardNormal);
            if let Some((lo, hi)) = &bounds {
                v = v.clamp(lo[j], hi[j]);
            }
            actions.push(v);
        }
    }
    Ok(Probe {
        tasks,
        actions,
        candidates: cfg.candidates,
        horizon: cfg.horizon,
    })
}

/// Objectives of every candidate in every probe situation.
fn objectives(wm: &mut WorldModel, p: &Probe) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(p.tasks.len());
    for t in &p.tasks {
        let z = wm.encode(&[&t.obs.0, &t.goal.0], &[&t.obs.1, &t.goal.1])?;
        let pred = wm.rollout(&z[..1], &[], &p.actions, p.candidates, p.horizon)?;
        out.push(wm.objective(&pred, &z[1]));
    }
    Ok(out)
}

fn distortion(q: &[Vec<f32>], f: &[Vec<f32>]) -> (f64, f64) {
    let (mut num, mut den, mut rank) = (0.0, 0.0, 0.0);
    for (a, b) in q.iter().zip(f) {
        for (x, y) in a.iter().zip(b) {
            num += (*x as f64 - *y as f64).powi(2);
            den += (*y as f64).powi(2);
        }
        let xa: Vec<f64> = a.iter().map(|v| *v as f64).collect();
        let xb: Vec<f64> = b.iter().map(|v| *v as f64).collect();
        rank += crate::util::stats::spearman(&xa, &xb).unwrap_or(0.0);
    }
    let d = if num.is_finite() {
        num / den.max(1e-30)
    } else {
        f64::INFINITY
    };
    (d, rank / q.len().max(1) as f64)
}

/// The weight quantizer of a fit: the method, and GPTQ's Hessians by `module:input`.
struct Quantizer {
    method: FitMethod,
    calib: Option<Calibration>,
    /// OmniQuant's clipping factors by (module, MatMul node, scheme); the full method's (with
    /// equivalent transformations) under the scheme name followed by `+let`.
    clips: std::collections::BTreeMap<(usize, String, String), Vec<f64>>,
    /// The full OmniQuant's transformed float graphs per scheme (the uniform rows).
    transformed: std::collections::BTreeMap<String, [ModelProto; 2]>,
}

impl Quantizer {
    /// Quantize one layer of a graph in place (weight only); returns its bytes at bit width.
    fn layer(
        &self,
        proto: &mut ModelProto,
        module: usize,
        layer: &LinearLayer,
        s: Scheme,
    ) -> Result<u64> {
        self.layer_as(proto, module, layer, s, &s.to_string())
    }

    /// [`Quantizer::layer`] with OmniQuant's clipping learned under `key`.
    fn layer_as(
        &self,
        proto: &mut ModelProto,
        module: usize,
        layer: &LinearLayer,
        s: Scheme,
        key: &str,
    ) -> Result<u64> {
        let Some(bits) = s.weight_bits else {
            return Ok(4 * (layer.k * layer.n) as u64);
        };
        let w = onnx::initializer(proto, &layer.weight)?;
        let named = |e: QwmError| QwmError::Usage(format!("{}: {e}", layer.node));
        let observer = match self.method {
            FitMethod::Omse => Observer::Omse,
            _ => Observer::Rtn,
        };
        let gptq = (self.method == FitMethod::Gptq).then(GptqOptions::default);
        let clip = if self.method == FitMethod::Omniquant {
            Some(
                self.clips
                    .get(&(module, layer.node.clone(), key.to_string()))
                    .ok_or_else(|| named(QwmError::Usage(format!("no OmniQuant clipping at {s}"))))?
                    .as_slice(),
            )
        } else {
            None
        };
        let (q, _) = super::quantize_weight(
            &w,
            ["encoder", "predictor"][module],
            layer,
            bits,
            s.group,
            observer,
            gptq.as_ref(),
            self.calib.as_ref(),
            clip,
        )
        .map_err(named)?;
        qdq::rewrite_weight(proto, layer, &q)?;
        Ok(((layer.k * layer.n * bits as usize).div_ceil(8) + 4 * q.scales.len()) as u64)
    }
}

fn layer_bytes(layer: &LinearLayer, s: Scheme) -> u64 {
    match s.weight_bits {
        None => 4 * (layer.k * layer.n) as u64,
        Some(bits) => {
            let groups = s.group.map(|g| layer.k.div_ceil(g)).unwrap_or(1);
            ((layer.k * layer.n * bits as usize).div_ceil(8) + 4 * groups * layer.n) as u64
        }
    }
}

/// Everything the allocation needs, measured on a float bundle.
pub struct Fitter {
    bundle: Bundle,
    protos: [ModelProto; 2],
    linears: [Vec<LinearLayer>; 2],
    wm: WorldModel,
    probe: Probe,
    reference: Vec<Vec<f32>>,
    options: Vec<Scheme>,
    opts: LoadOptions,
    quantizer: Quantizer,
}

impl Fitter {
    /// Load the float model and score the probe with it.
    pub fn new(bundle: Bundle, backend: &dyn Backend, cfg: &FitConfig) -> Result<Fitter> {
        if cfg.tasks == 0 || cfg.candidates < 3 || cfg.horizon == 0 {
            return Err(QwmError::Usage(
                "fit: --tasks must be at least 1, --candidates at least 3".into(),
            ));
        }
        for s in &cfg.options {
            if s.is_float() || s.act_bits.is_some() {
                return Err(QwmError::Usage(format!(
                    "fit: option '{s}' must be a weight-only scheme such as w4-g32"
                )));
            }
        }
        let opts = LoadOptions::with_threads(cfg.threads);
        let mut wm = WorldModel::load(&bundle, backend, &opts)?;
        let probe = make_probe(&wm, cfg)?;
        let reference = objectives(&mut wm, &probe)?;
        if reference.iter().flatten().any(|v| !v.is_finite()) {
            return Err(QwmError::Numeric(
                "the float model's objective is not finite on the probe".into(),
            ));
        }
        let protos = [
            onnx::decode(&bundle.encoder.bytes, &bundle.encoder.spec.file)?,
            onnx::decode(&bundle.predictor.bytes, &bundle.predictor.spec.file)?,
        ];
        let linears = [
            onnx::find_linears(&protos[0]),
            onnx::find_linears(&protos[1]),
        ];
        let calib = if cfg.method == FitMethod::Gptq {
            let taps = linears.clone().map(|ls| {
                let mut v: Vec<String> = ls.into_iter().map(|l| l.input).collect();
                v.dedup();
                v
            });
            let (episodes, iters, samples) = GPTQ_CALIBRATION;
            Some(super::calibrate_with(
                &bundle,
                backend,
                episodes,
                iters,
                samples,
                cfg.threads,
                true,
                taps,
            )?)
        } else {
            None
        };
        let mut clips = std::collections::BTreeMap::new();
        let mut transformed = std::collections::BTreeMap::new();
        if cfg.method == FitMethod::Omniquant {
            let work = tempfile::Builder::new()
                .prefix("qwm-fit-omniquant-")
                .tempdir()
                .map_err(|e| QwmError::io(std::env::temp_dir(), e))?;
            // Per option: clipping only (per-layer sensitivities, the allocation), then the
            // full method with its equivalent transformations (the uniform rows).
            for (i, &s) in cfg.options.iter().enumerate() {
                for full in [false, true] {
                    let dir = work.path().join(format!("option{i}-{full}"));
                    std::fs::create_dir_all(&dir).map_err(|e| QwmError::io(&dir, e))?;
                    let opts = super::omniquant::OmniOptions {
                        learn_let: full,
                        ..omni_options()
                    };
                    let p = super::omniquant::prepare(
                        &bundle,
                        backend,
                        [s, s],
                        GPTQ_CALIBRATION,
                        cfg.threads,
                        &opts,
                        &dir,
                    )?;
                    let key = if full {
                        format!("{s}+let")
                    } else {
                        s.to_string()
                    };
                    for (m, res) in &p.result.modules {
                        let m = usize::from(m == "predictor");
                        for (node, l) in &res.layers {
                            clips.insert((m, node.clone(), key.clone()), l.clip.clone());
                        }
                    }
                    if full {
                        let t = Bundle::open(&p.bundle)?;
                        transformed.insert(
                            s.to_string(),
                            [
                                onnx::decode(&t.encoder.bytes, &t.encoder.spec.file)?,
                                onnx::decode(&t.predictor.bytes, &t.predictor.spec.file)?,
                            ],
                        );
                    }
                }
            }
        }
        Ok(Fitter {
            bundle,
            protos,
            linears,
            wm,
            probe,
            reference,
            options: cfg.options.clone(),
            opts,
            quantizer: Quantizer {
                method: cfg.method,
                calib,
                clips,
                transformed,
            },
        })
    }

    fn graph(&self, m: usize) -> &crate::bundle::MappedGraph {
        if m == 0 {
            &self.bundle.encoder
        } else {
            &self.bundle.predictor
        }
    }

    /// Measure a whole-model configuration: `scheme_of(module, layer index)`.
    fn measure(
        &mut self,
        backend: &dyn Backend,
        scheme_of: &dyn Fn(usize, usize) -> Scheme,
    ) -> Result<(f64, f64)> {
        for m in 0..2 {
            let mut p = self.protos[m].clone();
            for (i, l) in self.linears[m].clone().iter().enumerate() {
                self.quantizer.layer(&mut p, m, l, scheme_of(m, i))?;
            }
            let g = self.graph(m).clone();
            self.wm
                .replace_graph(m, &g, &onnx::encode(&p), backend, &self.opts)?;
        }
        let q = objectives(&mut self.wm, &self.probe)?;
        Ok(distortion(&q, &self.reference))
    }

    /// Measure OmniQuant's transformed graphs with every layer at `s` (its learned clipping),
    /// then go back to the float graphs.
    fn measure_transformed(
        &mut self,
        backend: &dyn Backend,
        graphs: [ModelProto; 2],
        s: Scheme,
    ) -> Result<(f64, f64)> {
        let key = format!("{s}+let");
        for (m, mut p) in graphs.into_iter().enumerate() {
            for l in onnx::find_linears(&p) {
                self.quantizer.layer_as(&mut p, m, &l, s, &key)?;
            }
            let g = self.graph(m).clone();
            self.wm
                .replace_graph(m, &g, &onnx::encode(&p), backend, &self.opts)?;
        }
        let q = objectives(&mut self.wm, &self.probe)?;
        for m in 0..2 {
            let g = self.graph(m).clone();
            let float = onnx::encode(&self.protos[m]);
            self.wm.replace_graph(m, &g, &float, backend, &self.opts)?;
        }
        Ok(distortion(&q, &self.reference))
    }

    /// Per-layer sensitivities and the uniform schemes. `progress(done, total)` is called as it goes.
    pub fn analyze(
        &mut self,
        backend: &dyn Backend,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Analysis> {
        let n_layers = self.linears[0].len() + self.linears[1].len();
        if n_layers == 0 {
            return Err(QwmError::bundle(
                &self.bundle.dir,
                "has no Linear (MatMul with a constant weight) layers to quantize",
            ));
        }
        let total = n_layers * self.options.len() + self.options.len();
        let mut done = 0;
        let mut layers = Vec::new();
        for m in 0..2 {
            for l in self.linears[m].clone() {
                let mut bytes = vec![layer_bytes(&l, Scheme::FLOAT)];
                let mut dist = vec![0.0];
                for &s in &self.options.clone() {
                    let mut p = self.protos[m].clone();
                    bytes.push(self.quantizer.layer(&mut p, m, &l, s)?);
                    let g = self.graph(m).clone();
                    self.wm
                        .replace_graph(m, &g, &onnx::encode(&p), backend, &self.opts)?;
                    let q = objectives(&mut self.wm, &self.probe)?;
                    dist.push(distortion(&q, &self.reference).0);
                    done += 1;
                    progress(done, total);
                }
                // Back to the float graph for the next layer.
                let g = self.graph(m).clone();
                let float = onnx::encode(&self.protos[m]);
                self.wm.replace_graph(m, &g, &float, backend, &self.opts)?;
                layers.push(LayerOptions {
                    module: ["encoder", "predictor"][m].into(),
                    node: l.node.clone(),
                    shape: [l.k, l.n],
                    bytes,
                    distortion: dist,
                });
            }
        }
        let linear_float: u64 = layers.iter().map(|l| l.bytes[0]).sum();
        let all_float = onnx::float_initializer_bytes(&self.protos[0])
            + onnx::float_initializer_bytes(&self.protos[1]);
        let fixed_bytes = all_float.saturating_sub(linear_float);
        let mut uniform = Vec::new();
        for (o, &s) in self.options.clone().iter().enumerate() {
            let (d, r) = match self.quantizer.transformed.get(&s.to_string()).cloned() {
                // OmniQuant's uniform rows: the full method (its transformed graphs).
                Some(graphs) => self.measure_transformed(backend, graphs, s)?,
                None => self.measure(backend, &|_, _| s)?,
            };
            let bytes = fixed_bytes + layers.iter().map(|l| l.bytes[o + 1]).sum::<u64>();
            uniform.push(Measured {
                name: format!("uniform {s}"),
                bytes,
                distortion: d,
                rank_correlation: r,
            });
            done += 1;
            progress(done, total);
        }
        let mut options = vec!["float".to_string()];
        options.extend(self.options.iter().map(|s| s.to_string()));
        Ok(Analysis {
            options,
            fixed_bytes,
            layers,
            uniform,
        })
    }

    /// Measure an allocation as a whole model.
    pub fn measure_allocation(
        &mut self,
        backend: &dyn Backend,
        a: &Analysis,
        alloc: &Allocation,
    ) -> Result<Measured> {
        let schemes = allocation_schemes(a, alloc)?;
        let n_enc = self.linears[0].len();
        let (d, r) = self.measure(backend, &|m, i| {
            schemes[if m == 0 { i } else { n_enc + i }].1
        })?;
        Ok(Measured {
            name: "fit".into(),
            bytes: alloc.bytes,
            distortion: d,
            rank_correlation: r,
        })
    }
}

/// `(module:node, scheme)` of every layer in an allocation.
pub fn allocation_schemes(a: &Analysis, alloc: &Allocation) -> Result<Vec<(String, Scheme)>> {
    a.layers
        .iter()
        .zip(&alloc.choice)
        .map(|(l, &c)| {
            Ok((
                format!("{}:{}", l.module, l.node),
                Scheme::parse(&a.options[c], "option")?,
            ))
        })
        .collect()
}

/// The allocation with the least summed distortion whose weights fit `budget` bytes: a
/// multiple-choice knapsack solved by dynamic programming over bytes (in units of at most 1/4096
/// of the budget, rounded up, so the result never exceeds the budget).
pub fn allocate(a: &Analysis, budget: u64) -> Result<Allocation> {
    let smallest: u64 = a.fixed_bytes
        + a.layers
            .iter()
            .map(|l| *l.bytes.iter().min().expect("options"))
            .sum::<u64>();
    if budget < smallest {
        return Err(QwmError::Usage(format!(
            "--mem-limit {} ({budget} bytes): even the smallest allocation needs {} ({smallest} bytes) of weights ({} of them f32 parameters that are never quantized)",
            crate::util::fmt::fmt_bytes(budget),
            crate::util::fmt::fmt_bytes(smallest),
            crate::util::fmt::fmt_bytes(a.fixed_bytes)
        )));
    }
    let room = budget - a.fixed_bytes;
    let unit = room.div_ceil(4096).max(1);
    let cap = (room / unit) as usize;
    let inf = f64::INFINITY;
    // best[c]: least distortion of the layers so far with cost exactly <= c units.
    let mut best = vec![0.0f64; cap + 1];
    let mut pick: Vec<Vec<u8>> = Vec::with_capacity(a.layers.len());
    for l in &a.layers {
        let mut next = vec![inf; cap + 1];
        let mut choice = vec![u8::MAX; cap + 1];
        for (o, (&b, &d)) in l.bytes.iter().zip(&l.distortion).enumerate() {
            if !d.is_finite() {
                continue;
            }
            let w = b.div_ceil(unit) as usize;
            for c in w..=cap {
                let v = best[c - w] + d;
                if v < next[c] {
                    next[c] = v;
                    choice[c] = o as u8;
                }
            }
        }
        best = next;
        pick.push(choice);
    }
    if !best[cap].is_finite() {
        return Err(QwmError::Usage(format!(
            "--mem-limit {}: no allocation of finite distortion fits",
            crate::util::fmt::fmt_bytes(budget)
        )));
    }
    let mut choice = vec![0usize; a.layers.len()];
    let mut c = cap;
    for (i, l) in a.layers.iter().enumerate().rev() {
        let o = pick[i][c] as usize;
        choice[i] = o;
        c -= l.bytes[o].div_ceil(unit) as usize;
    }
    let bytes = a.fixed_bytes
        + a.layers
            .iter()
            .zip(&choice)
            .map(|(l, &o)| l.bytes[o])
            .sum::<u64>();
    let predicted = a
        .layers
        .iter()
        .zip(&choice)
        .map(|(l, &o)| l.distortion[o])
        .sum();
    Ok(Allocation {
        budget_bytes: budget,
        choice,
        bytes,
        predicted_distortion: predicted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis() -> Analysis {
        // Two layers, options float / 8 / 4 bits.
        Analysis {
            options: vec!["float".into(), "w8".into(), "w4".into()],
            fixed_bytes: 100,
            layers: vec![
                LayerOptions {
                    module: "encoder".into(),
                    node: "a".into(),
                    shape: [10, 10],
                    bytes: vec![400, 100, 50],
                    distortion: vec![0.0, 0.01, 0.5],
                },
                LayerOptions {
                    module: "predictor".into(),
                    node: "b".into(),
                    shape: [10, 10],
                    bytes: vec![400, 100, 50],
                    distortion: vec![0.0, 0.02, 0.03],
                },
            ],
            uniform: vec![],
        }
    }

    #[test]
    fn allocation_spends_bytes_where_distortion_is_high() {
        let a = analysis();
        // 100 fixed + 150: one layer at 8 bits, one at 4: the sensitive one keeps 8.
        let r = allocate(&a, 250).unwrap();
        assert_eq!(r.choice, vec![1, 2]);
        assert_eq!(r.bytes, 250);
        assert!((r.predicted_distortion - 0.04).abs() < 1e-12);
        // Plenty of room: float everywhere.
        assert_eq!(allocate(&a, 10_000).unwrap().choice, vec![0, 0]);
        // Exactly the smallest.
        assert_eq!(allocate(&a, 200).unwrap().choice, vec![2, 2]);
        // Below it: a clear error with the needed size.
        let e = allocate(&a, 199).unwrap_err().to_string();
        assert!(
            e.contains("--mem-limit") && e.contains("(200 bytes)"),
            "{e}"
        );
    }

    #[test]
    fn allocation_is_optimal_against_brute_force() {
        use rand::Rng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let n = rng.random_range(1..6);
            let layers: Vec<LayerOptions> = (0..n)
                .map(|i| {
                    let full = rng.random_range(100..400u64);
                    LayerOptions {
                        module: "m".into(),
                        node: format!("{i}"),
                        shape: [1, 1],
                        bytes: vec![full, full / 4, full / 8],
                        distortion: vec![0.0, rng.random::<f64>() * 0.1, rng.random::<f64>()],
                    }
                })
                .collect();
            let a = Analysis {
                options: vec!["float".into(), "w8".into(), "w4".into()],
                fixed_bytes: 10,
                layers,
                uniform: vec![],
            };
            let budget =
                rng.random_range(10 + a.layers.iter().map(|l| l.bytes[2]).sum::<u64>()..2000);
            let r = allocate(&a, budget).unwrap();
            assert!(r.bytes <= budget);
            // Brute force over 3^n choices.
            let mut best = f64::INFINITY;
            for code in 0..3usize.pow(n as u32) {
                let (mut c, mut bytes, mut d) = (code, a.fixed_bytes, 0.0);
                for l in &a.layers {
                    bytes += l.bytes[c % 3];
                    d += l.distortion[c % 3];
                    c /= 3;
                }
                if bytes <= budget && d < best {
                    best = d;
                }
            }
            // Byte units are at most budget/4096: tiny budgets are exact.
            assert!(
                (r.predicted_distortion - best).abs() < 1e-12,
                "{} vs {best}",
                r.predicted_distortion
            );
        }
    }
}
