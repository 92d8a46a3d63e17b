//! `qwm synth` (full-size DINO-WM-shaped bundles built by qwm) and `qwm profile`.

mod common;

fn qwm(args: &[&str]) -> (bool, String, String) {
    common::run_qwm(args)
}

/// Parameters of the synthetic graphs, counted from the ONNX initializers, against the sizes of
/// DINOv2 ViT-S/14 at 196 px (patch embedding, position embedding for 196 tokens, 12 blocks with
/// layer scale, final norm; no CLS token) and the DINO-WM predictor (depth 6, 16 x 64 heads, MLP
/// 2048, 404-wide tokens).
#[test]
fn full_size_presets_have_dinowm_shapes() {
    use qwm::runtime::synth::{encoder, predictor, Arch};
    let a = Arch::preset("vits14-wall").unwrap();
    assert_eq!(a.num_patches(), 196);
    let params = |m: &tract_onnx::pb::ModelProto| -> u64 {
        qwm::onnx::proto::float_initializer_bytes(m) / 4
    };
    let (d, mlp) = (384u64, 1536u64);
    let block = |dim: u64, inner: u64, mlp: u64, ls: bool| {
        4 * dim
            + dim * 3 * inner
            + 3 * inner
            + inner * dim
            + dim
            + dim * mlp
            + mlp
            + mlp * dim
            + dim
            + if ls { 2 * dim } else { 0 }
    };
    let gelu_consts = 3u64; // sqrt 2, 1, 0.5 per block
    let attn_scale = 1u64;
    let enc = encoder(&a, 2, 0);
    let want_enc = 3 * 14 * 14 * d
        + d
        + 196 * d
        + 12 * (block(d, d, mlp, true) + gelu_consts + attn_scale)
        + 2 * d
        + 2 * 10
        + 10;
    assert_eq!(params(&enc), want_enc);
    assert!((21_000_000..22_500_000).contains(&want_enc), "{want_enc}");
    let pred = predictor(&a, 10, 1);
    let dim = 404u64;
    let want_pred = 10 * 10
        + 10
        + 196 * dim
        + 6 * (block(dim, 1024, 2048, false) + gelu_consts + attn_scale)
        + 2 * dim;
    assert_eq!(params(&pred), want_pred);
    // Linear layers the quantizer sees: 4 per block (proprio / action encoders stay float).
    assert_eq!(qwm::onnx::proto::find_linears(&enc).len(), 12 * 4);
    assert_eq!(qwm::onnx::proto::find_linears(&pred).len(), 6 * 4);
    // h3: a frame-causal mask over 3 x 196 tokens.
    let h3 = predictor(&Arch::preset("vits14-h3").unwrap(), 10, 1);
    assert_eq!(params(&h3), want_pred + 2 * 196 * dim + (588 * 588) as u64);
    assert!(Arch::preset("vitb").is_err());
}

#[test]
fn synthetic_bundle_plans_quantizes_and_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("tiny");
    let bs = b.to_str().unwrap();
    let (ok, stdout, stderr) = qwm(&["synth", "--preset", "tiny", "--out", bs, "--seed", "3"]);
    assert!(ok, "{stdout}\n{stderr}");
    // Deterministic per seed.
    let b2 = tmp.path().join("tiny2");
    assert!(
        qwm(&[
            "synth",
            "--preset",
            "tiny",
            "--out",
            b2.to_str().unwrap(),
            "--seed",
            "3"
        ])
        .0
    );
    for f in ["encoder.onnx", "predictor.onnx"] {
        assert_eq!(
            std::fs::read(b.join(f)).unwrap(),
            std::fs::read(b2.join(f)).unwrap(),
            "{f}"
        );
    }
    let (ok, stdout, stderr) = qwm(&[
        "plan",
        "--model",
        bs,
        "--episodes",
        "1",
        "--max-iter",
        "1",
        "--samples",
        "16",
        "--topk",
        "4",
        "--opt-steps",
        "2",
        "--threads",
        "1",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("non-finite candidates 0"), "{stdout}");
    let q = tmp.path().join("q");
    let (ok, stdout, stderr) = qwm(&[
        "quantize",
        "--model",
        bs,
        "--out",
        q.to_str().unwrap(),
        "--encoder",
        "w8",
        "--predictor",
        "w4-g32",
        "--threads",
        "1",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, stdout, _) = qwm(&["inspect", q.to_str().unwrap()]);
    assert!(ok && stdout.contains("/blocks.1/fc2/MatMul"), "{stdout}");

    // Profile: modules and operators, as text and JSON.
    let json = tmp.path().join("profile.json");
    let (ok, stdout, stderr) = qwm(&[
        "profile",
        "--model",
        bs,
        "--samples",
        "16",
        "--topk",
        "4",
        "--opt-steps",
        "2",
        "--threads",
        "1",
        "--reps",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    for needle in [
        "load",
        "weights resident",
        "predictor",
        "operators of encoder.onnx",
        "operators of predictor.onnx",
        "slowest nodes",
    ] {
        assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["weights_resident_bytes"].as_u64().unwrap() > 0);
    assert!(v["per_mpc_step_s"]["predictor"].as_f64().unwrap() > 0.0);
    let ops = v["operators"].as_array().unwrap();
    assert_eq!(ops.len(), 2);
    for o in ops {
        let share: f64 = o["by_op"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["share"].as_f64().unwrap())
            .sum();
        assert!(
            share > 0.5 && share <= 1.0001,
            "operator shares sum to {share}"
        );
        assert!(o["by_op"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"].as_str().unwrap().contains("MatMul")));
    }
    // --mem-limit on a synthetic bundle: the predicted heap peak is within 25% of the measured.
    let (ok, stdout, stderr) = qwm(&[
        "plan",
        "--model",
        bs,
        "--episodes",
        "1",
        "--max-iter",
        "1",
        "--samples",
        "120",
        "--topk",
        "12",
        "--opt-steps",
        "2",
        "--threads",
        "1",
        "--mem-limit",
        "64M",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let mib = |key: &str| -> f64 {
        let rest = stdout
            .split(key)
            .nth(1)
            .unwrap_or_else(|| panic!("{key} in {stdout}"));
        let mut it = rest.split_whitespace();
        let v: f64 = it.next().unwrap().parse().unwrap();
        match it.next().unwrap().trim_end_matches([',', ')']) {
            "KiB" => v / 1024.0,
            "MiB" => v,
            u => panic!("unit {u}"),
        }
    };
    let (predicted, measured) = (mib("predicted heap peak"), mib("heap peak  "));
    assert!(
        (predicted - measured).abs() / measured <= 0.25,
        "predicted {predicted} MiB vs measured {measured} MiB"
    );
    let (ok, _, stderr) = qwm(&["synth", "--preset", "vitb", "--out", bs]);
    assert!(!ok && stderr.contains("vitb"), "{stderr}");
    let (ok, _, stderr) = qwm(&["synth", "--arch", "llama", "--out", bs]);
    assert!(!ok && stderr.contains("llama"), "{stderr}");
}

/// A memory limit far below what the full-size model needs is refused at once.
#[test]
fn full_size_bundle_refuses_an_impossible_limit_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("full");
    let (ok, stdout, stderr) = qwm(&[
        "synth",
        "--preset",
        "vits14-wall",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let t0 = std::time::Instant::now();
    let (ok, _, stderr) = qwm(&[
        "plan",
        "--model",
        b.to_str().unwrap(),
        "--mem-limit",
        "40M",
        "--episodes",
        "1",
    ]);
    let took = t0.elapsed().as_secs_f64();
    assert!(!ok);
    assert!(stderr.contains("--mem-limit"), "{stderr}");
    assert!(took < 5.0, "refusal took {took:.2} s");
}
