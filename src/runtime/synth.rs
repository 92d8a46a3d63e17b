//! `qwm synth`: full-size DINO-WM-shaped bundles with random weights, written by qwm itself as
//! ONNX (no PyTorch), so users can profile and benchmark real scale before exporting their own
//! checkpoint.
//!
//! The graphs have the same structure and interface as the shipped models (models/wm.py):
//! - encoder: a DINOv2-like ViT (patch Conv, learned position embedding, pre-norm blocks with layer
//!   scale, exact GELU, final LayerNorm, patch tokens out) plus the proprio encoder (a Linear,
//!   written as Einsum so that the quantizer leaves it float like the shipped models' Conv1d);
//! - predictor: tokens `[visual | proprio emb | action emb]` per patch (DINO-WM's concat_dim = 1),
//!   learned position embedding, pre-norm blocks with a frame-causal mask, final LayerNorm; the last
//!   frame's visual tokens and the mean of its proprio slots come out.
//!
//! Attention keeps heads as an Einsum axis, as the exported models do (tract runs it without
//! transposes). Weights are N(0, 0.02) from a seed; LayerNorms are identity-initialised.

use crate::bundle::{sha256_file, GraphSpec, Graphs, Manifest, ObjectiveSpec, TensorSpec};
use crate::error::{QwmError, Result};
use crate::onnx::proto::{attr_i, attr_ints, f32_tensor, node, value_info};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::path::Path;
use tract_onnx::pb::{
    self, tensor_proto::DataType, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
};

/// Sizes of a synthetic DINO-WM.
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    /// Preset name.
    pub name: String,
    /// Input image side (pixels).
    pub image_size: usize,
    /// Patch side.
    pub patch: usize,
    /// Encoder width, depth, heads, MLP width.
    pub enc_dim: usize,
    /// Encoder blocks.
    pub enc_depth: usize,
    /// Encoder heads.
    pub enc_heads: usize,
    /// Encoder MLP width.
    pub enc_mlp: usize,
    /// Predictor blocks.
    pub pred_depth: usize,
    /// Predictor heads.
    pub pred_heads: usize,
    /// Predictor head width.
    pub pred_dim_head: usize,
    /// Predictor MLP width.
    pub pred_mlp: usize,
    /// Proprio and action embedding width.
    pub emb_dim: usize,
    /// History frames.
    pub num_hist: usize,
}

impl Arch {
    /// A named preset: `vits14-wall` (DINOv2 ViT-S/14 at 196 px, predictor depth 6, 16 x 64 heads,
    /// MLP 2048, num_hist 1) or `vits14-h3` (the same with 3 history frames); `tiny` for tests.
    pub fn preset(name: &str) -> Result<Arch> {
        let vits = |num_hist: usize, name: &str| Arch {
            name: name.into(),
            image_size: 196,
            patch: 14,
            enc_dim: 384,
            enc_depth: 12,
            enc_heads: 6,
            enc_mlp: 1536,
            pred_depth: 6,
            pred_heads: 16,
            pred_dim_head: 64,
            pred_mlp: 2048,
            emb_dim: 10,
            num_hist,
        };
        match name {
            "vits14-wall" => Ok(vits(1, name)),
            "vits14-h3" => Ok(vits(3, name)),
            "tiny" => Ok(Arch {
                name: name.into(),
                image_size: 28,
                patch: 14,
                enc_dim: 32,
                enc_depth: 2,
                enc_heads: 2,
                enc_mlp: 64,
                pred_depth: 2,
                pred_heads: 2,
                pred_dim_head: 16,
                pred_mlp: 64,
                emb_dim: 10,
                num_hist: 2,
            }),
            other => Err(QwmError::Usage(format!(
                "--preset '{other}': known presets are vits14-wall, vits14-h3 (and tiny, for tests)"
            ))),
        }
    }

    /// Patch tokens per frame.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch).pow(2)
    }
}

fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A graph under construction.
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    rng: rand_chacha::ChaCha8Rng,
    count: usize,
}

impl Builder {
    fn new(seed: u64) -> Builder {
        Builder {
            nodes: vec![],
            inits: vec![],
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            count: 0,
        }
    }

    fn init(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> String {
        let d: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
        self.inits.push(f32_tensor(name, &d, &data));
        name.to_string()
    }

    fn random(&mut self, name: &str, dims: &[usize], std: f32) -> String {
        let n: usize = dims.iter().product();
        let data = (0..n)
            .map(|_| std * self.rng.sample::<f32, _>(StandardNormal))
            .collect();
        self.init(name, dims, data)
    }

    fn constant(&mut self, name: &str, dims: &[usize], v: f32) -> String {
        let n: usize = dims.iter().product();
        self.init(name, dims, vec![v; n])
    }

    fn ints(&mut self, name: &str, v: &[i64]) -> String {
        self.inits.push(i64_tensor(name, v));
        name.to_string()
    }

    /// Add a node; its output is named after the node.
    fn op(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.count += 1;
        let out = format!("{name}_out{}", self.count);
        self.nodes.push(node(op, name, inputs, &[&out], attrs));
        out
    }

    /// A Linear written as Einsum (`equation` over the input's axes), for the proprio and action
    /// encoders: the quantizer leaves them float, as the study does (it quantizes `MatMul`s).
    fn einsum_linear(
        &mut self,
        x: &str,
        k: usize,
        n: usize,
        equation: &str,
        prefix: &str,
    ) -> String {
        let w = self.random(&format!("{prefix}.weight"), &[k, n], 0.02);
        let b = self.constant(&format!("{prefix}.bias"), &[n], 0.0);
        let y = self.op(
            "Einsum",
            &format!("/{prefix}/Einsum"),
            &[x, &w],
            vec![attr_s("equation", equation)],
        );
        self.op("Add", &format!("/{prefix}/Add"), &[&y, &b], vec![])
    }

    /// `x @ W + b` with a named weight (the quantizer finds `MatMul` with a rank-2 initializer).
    fn linear(&mut self, x: &str, k: usize, n: usize, prefix: &str) -> String {
        let w = self.random(&format!("{prefix}.weight"), &[k, n], 0.02);
        let b = self.constant(&format!("{prefix}.bias"), &[n], 0.0);
        let y = self.op("MatMul", &format!("/{prefix}/MatMul"), &[x, &w], vec![]);
        self.op("Add", &format!("/{prefix}/Add"), &[&y, &b], vec![])
    }

    fn layernorm(&mut self, x: &str, dim: usize, prefix: &str) -> String {
        let s = self.constant(&format!("{prefix}.weight"), &[dim], 1.0);
        let b = self.constant(&format!("{prefix}.bias"), &[dim], 0.0);
        self.op(
            "LayerNormalization",
            &format!("/{prefix}/LayerNormalization"),
            &[x, &s, &b],
            vec![attr_i("axis", -1), attr_f("epsilon", 1e-6)],
        )
    }

    /// Exact GELU: x * 0.5 * (1 + erf(x / sqrt 2)).
    fn gelu(&mut self, x: &str, prefix: &str) -> String {
        let r2 = self.constant(&format!("{prefix}.sqrt2"), &[], std::f32::consts::SQRT_2);
        let one = self.constant(&format!("{prefix}.one"), &[], 1.0);
        let half = self.constant(&format!("{prefix}.half"), &[], 0.5);
        let d = self.op("Div", &format!("/{prefix}/Div"), &[x, &r2], vec![]);
        let e = self.op("Erf", &format!("/{prefix}/Erf"), &[&d], vec![]);
        let a = self.op("Add", &format!("/{prefix}/Add"), &[&e, &one], vec![]);
        let m = self.op("Mul", &format!("/{prefix}/Mul"), &[x, &a], vec![]);
        self.op("Mul", &format!("/{prefix}/Mul_1"), &[&m, &half], vec![])
    }

    /// Multi-head self-attention over `[B, N, dim]`; `mask`: additive `[N, N]` (0 / -1e9).
    fn attention(
        &mut self,
        x: &str,
        dim: usize,
        heads: usize,
        dim_head: usize,
        mask: Option<&str>,
        prefix: &str,
    ) -> String {
        let inner = heads * dim_head;
        let qkv = self.linear(x, dim, 3 * inner, &format!("{prefix}/qkv"));
        let shape = self.ints(
            &format!("{prefix}.heads_shape"),
            &[0, 0, heads as i64, dim_head as i64],
        );
        let mut parts = vec![];
        for (i, n) in ["q", "k", "v"].iter().enumerate() {
            let st = self.ints(&format!("{prefix}.{n}_start"), &[(i * inner) as i64]);
            let en = self.ints(&format!("{prefix}.{n}_end"), &[((i + 1) * inner) as i64]);
            let ax = self.ints(&format!("{prefix}.{n}_axis"), &[-1]);
            let s = self.op(
                "Slice",
                &format!("/{prefix}/Slice_{n}"),
                &[&qkv, &st, &en, &ax],
                vec![],
            );
            parts.push(self.op(
                "Reshape",
                &format!("/{prefix}/Reshape_{n}"),
                &[&s, &shape],
                vec![],
            ));
        }
        let att = self.op(
            "Einsum",
            &format!("/{prefix}/Einsum"),
            &[&parts[0], &parts[1]],
            vec![attr_s("equation", "bnhd,bmhd->bhnm")],
        );
        let scale = self.constant(
            &format!("{prefix}.scale"),
            &[],
            1.0 / (dim_head as f32).sqrt(),
        );
        let mut att = self.op("Mul", &format!("/{prefix}/Mul"), &[&att, &scale], vec![]);
        if let Some(m) = mask {
            att = self.op("Add", &format!("/{prefix}/AddMask"), &[&att, m], vec![]);
        }
        let p = self.op(
            "Softmax",
            &format!("/{prefix}/Softmax"),
            &[&att],
            vec![attr_i("axis", -1)],
        );
        let o = self.op(
            "Einsum",
            &format!("/{prefix}/Einsum_1"),
            &[&p, &parts[2]],
            vec![attr_s("equation", "bhnm,bmhd->bnhd")],
        );
        let flat = self.ints(&format!("{prefix}.flat_shape"), &[0, 0, inner as i64]);
        let o = self.op(
            "Reshape",
            &format!("/{prefix}/Reshape"),
            &[&o, &flat],
            vec![],
        );
        self.linear(&o, inner, dim, &format!("{prefix}/proj"))
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        x: &str,
        dim: usize,
        heads: usize,
        dim_head: usize,
        mlp: usize,
        layer_scale: bool,
        mask: Option<&str>,
        prefix: &str,
    ) -> String {
        let h = self.layernorm(x, dim, &format!("{prefix}/norm1"));
        let mut a = self.attention(&h, dim, heads, dim_head, mask, &format!("{prefix}/attn"));
        if layer_scale {
            let ls = self.constant(&format!("{prefix}.ls1"), &[dim], 0.1);
            a = self.op("Mul", &format!("/{prefix}/ls1/Mul"), &[&a, &ls], vec![]);
        }
        let x = self.op("Add", &format!("/{prefix}/Add"), &[x, &a], vec![]);
        let h = self.layernorm(&x, dim, &format!("{prefix}/norm2"));
        let h = self.linear(&h, dim, mlp, &format!("{prefix}/fc1"));
        let h = self.gelu(&h, &format!("{prefix}/gelu"));
        let mut m = self.linear(&h, mlp, dim, &format!("{prefix}/fc2"));
        if layer_scale {
            let ls = self.constant(&format!("{prefix}.ls2"), &[dim], 0.1);
            m = self.op("Mul", &format!("/{prefix}/ls2/Mul"), &[&m, &ls], vec![]);
        }
        self.op("Add", &format!("/{prefix}/Add_1"), &[&x, &m], vec![])
    }

    fn finish(
        mut self,
        name: &str,
        inputs: Vec<pb::ValueInfoProto>,
        outputs: &[(&str, &str, Vec<i64>)],
    ) -> ModelProto {
        let mut out_infos = vec![];
        for (src, dst, dims) in outputs {
            self.nodes
                .push(node("Identity", dst, &[src], &[dst], vec![]));
            out_infos.push(value_info(dst, DataType::Float, dims));
        }
        ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            producer_name: "qwm synth".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                name: name.into(),
                node: self.nodes,
                initializer: self.inits,
                input: inputs,
                output: out_infos,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The encoder graph: `pixels [B,3,S,S]`, `proprio [B,P]` -> `visual [B,N,D]`, `proprio_emb [B,E]`.
pub fn encoder(a: &Arch, proprio_dim: usize, seed: u64) -> ModelProto {
    let mut g = Builder::new(seed);
    let (d, n, s) = (a.enc_dim, a.num_patches(), a.image_size as i64);
    let w = g.random("vit.patch_embed.weight", &[d, 3, a.patch, a.patch], 0.02);
    let b = g.constant("vit.patch_embed.bias", &[d], 0.0);
    let p = a.patch as i64;
    let x = g.op(
        "Conv",
        "/vit/patch_embed/Conv",
        &["pixels", &w, &b],
        vec![
            attr_ints("kernel_shape", &[p, p]),
            attr_ints("strides", &[p, p]),
        ],
    );
    let shp = g.ints("vit.flat_shape", &[0, d as i64, n as i64]);
    let x = g.op("Reshape", "/vit/Reshape", &[&x, &shp], vec![]);
    let x = g.op(
        "Transpose",
        "/vit/Transpose",
        &[&x],
        vec![attr_ints("perm", &[0, 2, 1])],
    );
    let pos = g.random("vit.pos_embed", &[1, n, d], 0.02);
    let mut x = g.op("Add", "/vit/AddPos", &[&x, &pos], vec![]);
    for i in 0..a.enc_depth {
        x = g.block(
            &x,
            d,
            a.enc_heads,
            d / a.enc_heads,
            a.enc_mlp,
            true,
            None,
            &format!("vit/blocks.{i}"),
        );
    }
    let visual = g.layernorm(&x, d, "vit/norm");
    let pe = g.einsum_linear(
        "proprio",
        proprio_dim,
        a.emb_dim,
        "bi,io->bo",
        "proprio_encoder",
    );
    g.finish(
        "encoder",
        vec![
            value_info("pixels", DataType::Float, &[-1, 3, s, s]),
            value_info("proprio", DataType::Float, &[-1, proprio_dim as i64]),
        ],
        &[
            (&visual, "visual", vec![-1, n as i64, d as i64]),
            (&pe, "proprio_emb", vec![-1, a.emb_dim as i64]),
        ],
    )
}

/// The predictor graph: `visual [B,H,N,D]`, `proprio_emb [B,H,E]`, `action [B,H,A]` ->
/// `next_visual [B,N,D]`, `next_proprio_emb [B,E]`.
pub fn predictor(a: &Arch, action_in: usize, seed: u64) -> ModelProto {
    let mut g = Builder::new(seed);
    let (d, n, h, e) = (a.enc_dim, a.num_patches(), a.num_hist, a.emb_dim);
    let dim = d + 2 * e;
    let ae = g.einsum_linear("action", action_in, e, "bhi,io->bho", "action_encoder");
    let axis2 = g.ints("unsqueeze_axis", &[2]);
    let expand = g.ints("expand_shape", &[1, 1, n as i64, 1]);
    let pu = g.op(
        "Unsqueeze",
        "/Unsqueeze_p",
        &["proprio_emb", &axis2],
        vec![],
    );
    let pexp = g.op("Expand", "/Expand_p", &[&pu, &expand], vec![]);
    let au = g.op("Unsqueeze", "/Unsqueeze_a", &[&ae, &axis2], vec![]);
    let aexp = g.op("Expand", "/Expand_a", &[&au, &expand], vec![]);
    let tok = g.op(
        "Concat",
        "/Concat",
        &["visual", &pexp, &aexp],
        vec![attr_i("axis", -1)],
    );
    let shp = g.ints("tokens_shape", &[0, (h * n) as i64, dim as i64]);
    let x = g.op("Reshape", "/Reshape", &[&tok, &shp], vec![]);
    let pos = g.random("pos_embedding", &[1, h * n, dim], 0.02);
    let mut x = g.op("Add", "/AddPos", &[&x, &pos], vec![]);
    // Frame-causal mask: a token of frame i sees frames <= i.
    let mask = if h > 1 {
        let t = h * n;
        let m: Vec<f32> = (0..t * t)
            .map(|ij| {
                let (i, j) = (ij / t, ij % t);
                if j / n <= i / n {
                    0.0
                } else {
                    -1e9
                }
            })
            .collect();
        Some(g.init("frame_causal_mask", &[t, t], m))
    } else {
        None
    };
    for i in 0..a.pred_depth {
        x = g.block(
            &x,
            dim,
            a.pred_heads,
            a.pred_dim_head,
            a.pred_mlp,
            false,
            mask.as_deref(),
            &format!("blocks.{i}"),
        );
    }
    let x = g.layernorm(&x, dim, "norm");
    let st = g.ints("last_start", &[((h - 1) * n) as i64]);
    let en = g.ints("last_end", &[(h * n) as i64]);
    let ax1 = g.ints("axis1", &[1]);
    let last = g.op("Slice", "/SliceLast", &[&x, &st, &en, &ax1], vec![]);
    let z0 = g.ints("zero", &[0]);
    let vd = g.ints("visual_end", &[d as i64]);
    let pd = g.ints("proprio_end", &[(d + e) as i64]);
    let axm = g.ints("axis_last", &[-1]);
    let visual = g.op("Slice", "/SliceVisual", &[&last, &z0, &vd, &axm], vec![]);
    let p = g.op("Slice", "/SliceProprio", &[&last, &vd, &pd, &axm], vec![]);
    let p = g.op(
        "ReduceMean",
        "/ReduceMean",
        &[&p],
        vec![attr_ints("axes", &[1]), attr_i("keepdims", 0)],
    );
    g.finish(
        "predictor",
        vec![
            value_info(
                "visual",
                DataType::Float,
                &[-1, h as i64, n as i64, d as i64],
            ),
            value_info("proprio_emb", DataType::Float, &[-1, h as i64, e as i64]),
            value_info("action", DataType::Float, &[-1, h as i64, action_in as i64]),
        ],
        &[
            (&visual, "next_visual", vec![-1, n as i64, d as i64]),
            (&p, "next_proprio_emb", vec![-1, e as i64]),
        ],
    )
}

/// Write a synthetic bundle for the Wall environment (its action / proprio sizes and
/// normalization from a reference manifest, here the shipped models/wall when given).
pub fn write_bundle(a: &Arch, out: &Path, seed: u64, like: Option<&Manifest>) -> Result<Manifest> {
    std::fs::create_dir_all(out).map_err(|e| QwmError::io(out, e))?;
    let (action_dim, frameskip, proprio_dim) = (2usize, 5usize, 2usize);
    let enc = encoder(a, proprio_dim, seed);
    let pred = predictor(a, action_dim * frameskip, seed.wrapping_add(1));
    let (n, d, h, e) = (
        a.num_patches() as i64,
        a.enc_dim as i64,
        a.num_hist as i64,
        a.emb_dim as i64,
    );
    let s = a.image_size as i64;
    let mut specs = vec![];
    for (file, proto, inputs, outputs) in [
        (
            "encoder.onnx",
            &enc,
            vec![("pixels", vec![-1, 3, s, s]), ("proprio", vec![-1, 2])],
            vec![("visual", vec![-1, n, d]), ("proprio_emb", vec![-1, e])],
        ),
        (
            "predictor.onnx",
            &pred,
            vec![
                ("visual", vec![-1, h, n, d]),
                ("proprio_emb", vec![-1, h, e]),
                ("action", vec![-1, h, 10]),
            ],
            vec![
                ("next_visual", vec![-1, n, d]),
                ("next_proprio_emb", vec![-1, e]),
            ],
        ),
    ] {
        let path = out.join(file);
        crate::util::fs::write_atomic(&path, &crate::onnx::proto::encode(proto))
            .map_err(|e| QwmError::io(&path, e))?;
        let ts = |v: Vec<(&str, Vec<i64>)>| {
            v.into_iter()
                .map(|(name, shape)| TensorSpec {
                    name: name.into(),
                    shape,
                })
                .collect()
        };
        specs.push(GraphSpec {
            file: file.into(),
            sha256: sha256_file(&path)?,
            bytes: std::fs::metadata(&path)
                .map_err(|e| QwmError::io(&path, e))?
                .len(),
            inputs: ts(inputs),
            outputs: ts(outputs),
        });
    }
    let predictor_spec = specs.pop().expect("two graphs");
    let encoder_spec = specs.pop().expect("two graphs");
    let m = Manifest {
        format_version: 1,
        name: format!("synth-{}", a.name),
        env: "wall".into(),
        image_size: a.image_size,
        pixel_mean: vec![0.5; 3],
        pixel_std: vec![0.5; 3],
        action_dim,
        frameskip,
        action_mean: like.map(|m| m.action_mean.clone()).unwrap_or(vec![0.0; 2]),
        action_std: like.map(|m| m.action_std.clone()).unwrap_or(vec![1.0; 2]),
        action_low: Some(vec![-2.45; 2]),
        action_high: Some(vec![2.45; 2]),
        proprio_dim,
        proprio_mean: like
            .map(|m| m.proprio_mean.clone())
            .unwrap_or(vec![32.0; 2]),
        proprio_std: like.map(|m| m.proprio_std.clone()).unwrap_or(vec![13.0; 2]),
        num_hist: a.num_hist,
        num_patches: a.num_patches(),
        visual_dim: a.enc_dim,
        proprio_emb_dim: a.emb_dim,
        proprio_tokens: 1,
        objective: ObjectiveSpec {
            mode: "last".into(),
            alpha: 1.0,
        },
        graphs: Graphs {
            encoder: encoder_spec,
            predictor: predictor_spec,
        },
        quantization: Default::default(),
        training: serde_json::json!({"synthetic": true, "preset": a.name, "seed": seed,
            "note": "random weights (N(0, 0.02)); for profiling and benchmarks, not planning quality"}),
    };
    let text = serde_json::to_string_pretty(&m).expect("manifest serializes");
    let path = out.join("manifest.json");
    crate::util::fs::write_atomic(&path, text.as_bytes()).map_err(|e| QwmError::io(&path, e))?;
    crate::bundle::read_manifest(out)?;
    Ok(m)
}
