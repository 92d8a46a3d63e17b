//! Bundle loading, tract parity against the PyTorch fixtures, and rollout semantics.

mod common;
use common::*;
use qwm::bundle::Bundle;
use qwm::engine::{make_backend, LoadOptions};
use qwm::runtime::model::{Latent, WorldModel};

/// Tolerance on max |tract - torch| / max |torch| per output.
const PARITY_REL: f64 = 1e-4;

fn load(dir: &std::path::Path, threads: usize) -> WorldModel {
    let b = Bundle::open(dir).unwrap();
    WorldModel::load(
        &b,
        make_backend("tract").unwrap().as_ref(),
        &LoadOptions::with_threads(threads),
    )
    .unwrap()
}

fn parity(dir: &std::path::Path, threads: usize) {
    let b = Bundle::open(dir).unwrap();
    let backend = make_backend("tract").unwrap();
    let opts = LoadOptions::with_threads(threads);
    let enc = backend.load(&b.encoder, &opts).unwrap();
    check_fixture(
        dir,
        &run_encoder_fixture(dir, enc.as_ref()),
        &["encoder_visual", "encoder_proprio_emb"],
        PARITY_REL,
        "tract",
    );
    let pred = backend.load(&b.predictor, &opts).unwrap();
    let out = run_predictor_fixture(dir, pred.as_ref());
    check_fixture(
        dir,
        &out,
        &["predictor_next_visual", "predictor_next_proprio_emb"],
        PARITY_REL,
        "tract",
    );
}

#[test]
fn shipped_wall_model_matches_pytorch() {
    parity(&wall(), 1);
    // Splitting the batch across threads gives the same numbers.
    parity(&wall(), 2);
}

#[test]
fn tiny_history_model_matches_pytorch() {
    parity(&tiny_h3(), 1);
    parity(&tiny_h3(), 3);
}

fn latent(v: &ndarray::ArrayD<f32>, p: &ndarray::ArrayD<f32>, b: usize, slot: usize) -> Latent {
    let vs = v
        .index_axis(ndarray::Axis(0), b)
        .index_axis(ndarray::Axis(0), slot)
        .iter()
        .copied()
        .collect();
    let ps = p
        .index_axis(ndarray::Axis(0), b)
        .index_axis(ndarray::Axis(0), slot)
        .iter()
        .copied()
        .collect();
    Latent {
        visual: vs,
        proprio: ps,
    }
}

#[test]
fn rollout_uses_the_last_num_hist_frames_with_their_actions() {
    let dir = tiny_h3();
    let mut wm = load(&dir, 1);
    let (v, p, a) = (
        npy(&dir, "predictor_visual"),
        npy(&dir, "predictor_proprio_emb"),
        npy(&dir, "predictor_action"),
    );
    let want_v = npy(&dir, "predictor_next_visual");
    let want_p = npy(&dir, "predictor_next_proprio_emb");
    let ad = wm.manifest.model_action_dim();
    for b in 0..4 {
        let hist: Vec<Latent> = (0..3).map(|s| latent(&v, &p, b, s)).collect();
        let acts: Vec<Vec<f32>> = (0..3)
            .map(|s| {
                a.index_axis(ndarray::Axis(0), b)
                    .index_axis(ndarray::Axis(0), s)
                    .iter()
                    .copied()
                    .collect()
            })
            .collect();
        // One step from three observed frames: the past actions label frames 0 and 1, the
        // candidate's first action labels the current frame.
        let out = wm.rollout(&hist, &acts[..2], &acts[2], 1, 1).unwrap();
        let wv: Vec<f32> = want_v
            .index_axis(ndarray::Axis(0), b)
            .iter()
            .copied()
            .collect();
        let wp: Vec<f32> = want_p
            .index_axis(ndarray::Axis(0), b)
            .iter()
            .copied()
            .collect();
        assert!(rel_err(&out.visual, &wv) <= PARITY_REL);
        assert!(rel_err(&out.proprio, &wp) <= PARITY_REL);
        // A fourth, older frame is outside the window and changes nothing.
        let mut longer = vec![latent(&v, &p, (b + 1) % 4, 0)];
        longer.extend(hist.iter().cloned());
        let mut past = vec![vec![9.0; ad]];
        past.extend(acts[..2].iter().cloned());
        let out2 = wm.rollout(&longer, &past, &acts[2], 1, 1).unwrap();
        assert_eq!(out2.visual, out.visual);
        // The oldest frame inside the window does matter (the predictor attends to it).
        let mut changed = hist.clone();
        changed[0] = latent(&v, &p, (b + 1) % 4, 0);
        let out3 = wm.rollout(&changed, &acts[..2], &acts[2], 1, 1).unwrap();
        assert_ne!(out3.visual, out.visual);
    }
}

#[test]
fn rollout_is_autoregressive_and_batched_consistently() {
    let dir = tiny_h3();
    let mut wm = load(&dir, 1);
    let (v, p) = (
        npy(&dir, "predictor_visual"),
        npy(&dir, "predictor_proprio_emb"),
    );
    let hist = vec![latent(&v, &p, 0, 2)];
    let ad = wm.manifest.model_action_dim();
    let horizon = 4;
    let batch = 5;
    let actions: Vec<f32> = (0..batch * horizon * ad)
        .map(|i| ((i * 37 % 17) as f32 / 8.0) - 1.0)
        .collect();
    let all = wm.rollout(&hist, &[], &actions, batch, horizon).unwrap();
    assert_eq!(all.visual.len(), batch * wm.visual_len());
    assert_eq!(all.proprio.len(), batch * wm.manifest.proprio_emb_dim);
    for c in 0..batch {
        let one = wm
            .rollout(
                &hist,
                &[],
                &actions[c * horizon * ad..(c + 1) * horizon * ad],
                1,
                horizon,
            )
            .unwrap();
        let vl = wm.visual_len();
        assert!(rel_err(&one.visual, &all.visual[c * vl..(c + 1) * vl]) < 1e-5);
        // Horizon h equals: roll h-1 steps, then one more step from the extended history.
        let short = wm
            .rollout(
                &hist,
                &[],
                &actions[c * horizon * ad..c * horizon * ad + (horizon - 1) * ad],
                1,
                horizon - 1,
            )
            .unwrap();
        assert_ne!(
            short.visual, one.visual,
            "the last action must change the prediction"
        );
    }
    // Bad arguments are errors, not panics.
    assert!(wm
        .rollout(&hist, &[], &actions, batch + 1, horizon)
        .is_err());
    assert!(wm.rollout(&[], &[], &actions, batch, horizon).is_err());
    assert!(wm
        .rollout(&hist, &[vec![0.0; ad]], &actions, batch, horizon)
        .is_err());
}

#[test]
fn bundle_errors_name_the_problem() {
    let src = tiny_h3();
    // Missing file.
    let d = copy_bundle(&src);
    std::fs::remove_file(d.path().join("predictor.onnx")).unwrap();
    let e = Bundle::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("predictor.onnx"), "{e}");
    // Hash mismatch (same size, one byte flipped).
    let d = copy_bundle(&src);
    let p = d.path().join("encoder.onnx");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();
    let e = Bundle::open(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("sha256 mismatch") && e.contains("encoder.onnx"),
        "{e}"
    );
    // Manifest shapes that disagree with the graphs.
    let d = copy_bundle(&src);
    let mp = d.path().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    m["visual_dim"] = serde_json::json!(17);
    for (g, k) in [
        ("encoder", "outputs"),
        ("predictor", "inputs"),
        ("predictor", "outputs"),
    ] {
        for t in m["graphs"][g][k].as_array_mut().unwrap() {
            if t["name"] == "visual" || t["name"] == "next_visual" {
                let n = t["shape"].as_array().unwrap().len();
                t["shape"][n - 1] = serde_json::json!(17);
            }
        }
    }
    std::fs::write(&mp, serde_json::to_string(&m).unwrap()).unwrap();
    let b = Bundle::open(d.path()).unwrap();
    let e = WorldModel::load(
        &b,
        make_backend("tract").unwrap().as_ref(),
        &LoadOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("predictor.onnx") || e.contains("encoder.onnx"),
        "{e}"
    );
    // Wrong format version.
    let d = copy_bundle(&src);
    let mp = d.path().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    m["format_version"] = serde_json::json!(99);
    std::fs::write(&mp, serde_json::to_string(&m).unwrap()).unwrap();
    let e = Bundle::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("format_version 99"), "{e}");
}

/// The shipped PointMaze and PushT models match their PyTorch fixtures and plan an episode in
/// their environments.
#[test]
fn shipped_pointmaze_and_pusht_models_match_pytorch_and_plan() {
    for env in ["pointmaze", "pusht"] {
        let dir = format!("models/{env}");
        let b = Bundle::open(&root().join(&dir)).unwrap();
        assert_eq!(b.manifest.env, env);
        let r =
            qwm::runtime::verify::verify(&b, make_backend("tract").unwrap().as_ref(), 1).unwrap();
        assert!(r.pass(), "{env}: {r:?}");
        let (ok, out, err) = run_qwm(&[
            "plan",
            "--model",
            &dir,
            "--episodes",
            "1",
            "--samples",
            "64",
            "--topk",
            "8",
            "--opt-steps",
            "3",
            "--max-iter",
            "2",
            "--threads",
            "1",
        ]);
        assert!(ok, "{env}: {out}{err}");
        assert!(out.contains("non-finite candidates 0"), "{env}: {out}");
    }
}

/// tract copies each weight once while loading: the graph's protobuf is read with its weights
/// left in the mapped file (external data into the file itself), so the heap never holds a
/// decoded protobuf copy next to tract's tensors, and large temporaries go back to the kernel as
/// they are freed. Checked on a full-size synthetic predictor (80 MB): the allocator counts
/// exactly (before: heap peak 155 MiB for 81 MiB kept, now 84 MiB), and RSS meets issue 8's
/// bound (load peak <= 1.3 x resident + 20 MiB; before: 178 MiB for 93 MiB).
#[test]
fn tract_loads_each_weight_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("synth");
    let (ok, out, err) = run_qwm(&["synth", "--out", model.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let json = tmp.path().join("bench.json");
    let (ok, out, err) = run_qwm(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--graph",
        "predictor",
        "--backend",
        "tract",
        "--batch",
        "1",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("at most while loading"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let q = &v["qwm"];
    let n = |k: &str| q[k].as_f64().unwrap();
    let (kept, peak) = (n("heap_after_load"), n("heap_peak_load"));
    let file = std::fs::metadata(model.join("predictor.onnx"))
        .unwrap()
        .len() as f64;
    assert!(
        kept >= 0.9 * file,
        "tract keeps {kept} bytes for a {file}-byte graph"
    );
    assert!(
        peak <= 1.15 * kept,
        "load peaked at {peak} heap bytes for {kept} kept"
    );
    let resident = n("rss_after_load") - n("rss_before_load");
    let rss_peak = n("peak_rss_load") - n("rss_before_load");
    assert!(
        rss_peak <= 1.3 * resident + 20.0 * 1048576.0,
        "RSS rose {rss_peak} bytes while loading for {resident} resident"
    );
}

/// tract runs a large batch tile by tile (and split over threads): every tiling gives the
/// outputs of one call on the whole batch. Rows are independent, so tiles change only the
/// working set; tolerance 1e-6 of max |output| (tract's kernels may take other code paths for
/// other row counts).
#[test]
fn tiled_batches_match_one_call() {
    use qwm::engine::TensorRef;
    let b = Bundle::open(&wall()).unwrap();
    let backend = make_backend("tract").unwrap();
    let inputs = qwm::engine::random_inputs(&b.predictor, 11, 5);
    let refs: Vec<(&str, TensorRef<'_>)> = inputs
        .iter()
        .map(|(n, s, d)| (n.as_str(), TensorRef { shape: s, data: d }))
        .collect();
    let run = |tile: Option<usize>, threads: usize| {
        let opts = LoadOptions {
            tile_rows: tile,
            ..LoadOptions::with_threads(threads)
        };
        backend
            .load(&b.predictor, &opts)
            .unwrap()
            .run(&refs)
            .unwrap()
    };
    let whole = run(Some(usize::MAX), 1);
    for (tile, threads) in [(Some(1), 1), (Some(3), 1), (Some(4), 2), (None, 2)] {
        let tiled = run(tile, threads);
        assert_eq!(tiled.len(), whole.len());
        for (t, w) in tiled.iter().zip(&whole) {
            assert_eq!(t.shape, w.shape, "tile {tile:?} threads {threads}");
            assert_eq!(t.shape[0], 11);
            let e = rel_err(&t.data, &w.data);
            assert!(e <= 1e-6, "tile {tile:?} threads {threads}: rel err {e}");
        }
    }
}

/// `x [B, n, h*d]` through an exported-style attention block to `y [B, n, h*d]`: q = x,
/// k = 0.7 x, v = x + 0.3, reshaped to `[B, n, h, d]`. Masked: a causal condition computed from
/// a constant (`Not(Slice(keep))`), filled with -inf, and a constant scale. Unmasked: the scale computed as `d^-0.5` from the
/// shape q is reshaped to (how PyTorch exports `dim_head ** -0.5`).
fn attention_graph(n: usize, h: usize, d: usize, masked: bool) -> tract_onnx::pb::ModelProto {
    use tract_onnx::pb;
    let vi = |name: &str, last: i64| {
        qwm::onnx::proto::value_info(
            name,
            pb::tensor_proto::DataType::Float,
            &[-1, n as i64, last],
        )
    };
    let konst = |out: &str, t: pb::TensorProto| pb::NodeProto {
        op_type: "Constant".into(),
        output: vec![out.into()],
        attribute: vec![pb::AttributeProto {
            name: "value".into(),
            r#type: pb::attribute_proto::AttributeType::Tensor as i32,
            t: Some(t),
            ..Default::default()
        }],
        ..Default::default()
    };
    let tensor = |dt: pb::tensor_proto::DataType, dims: &[i64], raw: Vec<u8>| pb::TensorProto {
        dims: dims.to_vec(),
        data_type: dt as i32,
        raw_data: raw,
        ..Default::default()
    };
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    use pb::tensor_proto::DataType as Dt;
    let nd = |op: &str, ins: &[&str], out: &str, attrs: Vec<pb::AttributeProto>| pb::NodeProto {
        op_type: op.into(),
        name: out.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        attribute: attrs,
        ..Default::default()
    };
    let attr_s = |name: &str, s: &str| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    };
    let attr_i = |name: &str, i: i64| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    };
    let mut nodes = vec![
        konst("c07", tensor(Dt::Float, &[], f32s(&[0.7]))),
        konst("c03", tensor(Dt::Float, &[], f32s(&[0.3]))),
        konst("flat", tensor(Dt::Int64, &[3], i64s(&[0, 0, -1]))),
    ];
    if masked {
        nodes.push(konst(
            "shape4",
            tensor(Dt::Int64, &[4], i64s(&[0, 0, h as i64, d as i64])),
        ));
        nodes.push(konst(
            "scale",
            tensor(Dt::Float, &[], f32s(&[0.6 / (d as f32).sqrt()])),
        ));
    } else {
        nodes.push(konst(
            "lead",
            tensor(Dt::Int64, &[3], i64s(&[0, 0, h as i64])),
        ));
        nodes.push(konst("dsc", tensor(Dt::Int64, &[], i64s(&[d as i64]))));
        nodes.push(konst("ax0", tensor(Dt::Int64, &[1], i64s(&[0]))));
        nodes.push(nd("Unsqueeze", &["dsc", "ax0"], "dvec", vec![]));
        nodes.push(nd(
            "Concat",
            &["lead", "dvec"],
            "shape4",
            vec![attr_i("axis", 0)],
        ));
        nodes.push(konst("half", tensor(Dt::Float, &[], f32s(&[-0.5]))));
        nodes.push(nd("Cast", &["dsc"], "dscf", vec![attr_i("to", 1)]));
        nodes.push(nd("Pow", &["dscf", "half"], "scale", vec![]));
    }
    nodes.extend([
        nd("Mul", &["x", "c07"], "xk", vec![]),
        nd("Add", &["x", "c03"], "xv", vec![]),
        nd("Reshape", &["x", "shape4"], "q", vec![]),
        nd("Reshape", &["xk", "shape4"], "k", vec![]),
        nd("Reshape", &["xv", "shape4"], "v", vec![]),
        nd(
            "Einsum",
            &["q", "k"],
            "s",
            vec![attr_s("equation", "bnhd,bmhd->bhnm")],
        ),
        nd("Mul", &["s", "scale"], "ss", vec![]),
    ]);
    let mut sm_in = "ss";
    if masked {
        // As the exporters build a frame-causal mask: Not(Slice(constant of what to keep)).
        let keep: Vec<u8> = (0..n * n).map(|i| u8::from(i % n <= i / n)).collect();
        nodes.push(konst("keep", tensor(Dt::Bool, &[n as i64, n as i64], keep)));
        nodes.push(konst("zeros", tensor(Dt::Int64, &[2], i64s(&[0, 0]))));
        nodes.push(konst(
            "ends",
            tensor(Dt::Int64, &[2], i64s(&[n as i64, n as i64])),
        ));
        nodes.push(nd("Slice", &["keep", "zeros", "ends"], "kept", vec![]));
        nodes.push(nd("Not", &["kept"], "cond", vec![]));
        nodes.push(konst(
            "fill",
            tensor(Dt::Float, &[], f32s(&[f32::NEG_INFINITY])),
        ));
        nodes.push(nd("Where", &["cond", "fill", "ss"], "sw", vec![]));
        sm_in = "sw";
    }
    nodes.extend([
        nd("Softmax", &[sm_in], "p", vec![attr_i("axis", -1)]),
        nd(
            "Einsum",
            &["p", "v"],
            "o",
            vec![attr_s("equation", "bhnm,bmhd->bnhd")],
        ),
        nd("Reshape", &["o", "flat"], "y", vec![]),
    ]);
    opset17_model(pb::GraphProto {
        node: nodes,
        input: vec![vi("x", (h * d) as i64)],
        output: vec![vi("y", (h * d) as i64)],
        ..Default::default()
    })
}

/// The float64 reference of [`attention_graph`].
fn attention_reference(
    x: &[f32],
    b: usize,
    n: usize,
    h: usize,
    d: usize,
    masked: bool,
) -> Vec<f32> {
    let scale = if masked { 0.6 } else { 1.0 } / (d as f64).sqrt();
    let at = |bi: usize, i: usize, hh: usize, c: usize| x[((bi * n + i) * h + hh) * d + c] as f64;
    let mut y = vec![0f32; b * n * h * d];
    for bi in 0..b {
        for hh in 0..h {
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        if masked && j > i {
                            return f64::NEG_INFINITY;
                        }
                        scale
                            * (0..d)
                                .map(|c| at(bi, i, hh, c) * 0.7 * at(bi, j, hh, c))
                                .sum::<f64>()
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                let sum: f64 = w.iter().sum();
                for c in 0..d {
                    let v: f64 = (0..n).map(|j| w[j] / sum * (at(bi, j, hh, c) + 0.3)).sum();
                    y[((bi * n + i) * h + hh) * d + c] = v as f32;
                }
            }
        }
    }
    y
}

/// Attention blocks, as qwm hands them to each engine (tract: qwm's fused operator; ONNX
/// Runtime: its MultiHeadAttention kernel), match the float64 reference within 1e-5 of
/// max |y|, masked and unmasked. Both rewrites must have happened.
#[test]
fn attention_blocks_match_the_float64_reference_on_every_backend() {
    use prost::Message;
    use qwm::bundle::{GraphSpec, MappedGraph, TensorSpec};
    use qwm::engine::TensorRef;
    let (b, n, h, d) = (3usize, 13usize, 2usize, 8usize);
    let x: Vec<f32> = (0..b * n * h * d)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
        .collect();
    let mut backends = vec!["tract"];
    if cfg!(feature = "ort") {
        backends.push("ort");
    }
    for masked in [true, false] {
        let m = attention_graph(n, h, d, masked);
        let mut t = m.clone();
        assert_eq!(qwm::engine::tract::attention::fuse_model(&mut t), 1);
        let mut o = m.clone();
        assert_eq!(qwm::onnx::passes::ort::fuse_model(&mut o).attention, 1);
        let want = attention_reference(&x, b, n, h, d, masked);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.onnx");
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            shape: vec![-1, n as i64, (h * d) as i64],
        };
        let g = MappedGraph {
            path: p.clone(),
            spec: GraphSpec {
                file: "g.onnx".into(),
                sha256: String::new(),
                bytes: 0,
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
            bytes: std::sync::Arc::new(unsafe { memmap2::Mmap::map(&f).unwrap() }),
            on_disk: true,
        };
        for be in &backends {
            let s = make_backend(be)
                .unwrap()
                .load(&g, &LoadOptions::default())
                .unwrap();
            let shape = [b, n, h * d];
            let y = s
                .run(&[(
                    "x",
                    TensorRef {
                        shape: &shape,
                        data: &x,
                    },
                )])
                .unwrap()
                .remove(0);
            assert_eq!(y.shape, shape);
            let e = rel_err(&y.data, &want);
            assert!(e <= 1e-5, "{be} masked {masked}: rel err {e}");
        }
    }
}
