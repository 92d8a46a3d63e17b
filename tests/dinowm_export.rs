//! A bundle exported from a DINO-WM checkpoint (models/export_dinowm.py, committed in miniature as
//! tests/data/dinowm_tiny: DINOv2 and DINO-WM module structure, 3-frame history, per-token
//! proprio) runs in qwm exactly as DINO-WM's PyTorch code computes it: encoder, predictor and a
//! 5-step rollout, checked with `qwm verify` (tolerances in `qwm::runtime::verify`).

mod common;
use common::*;
use qwm::bundle::Bundle;
use qwm::engine::{make_backend, LoadOptions};
use qwm::runtime::model::{BatchLatents, Latent, WorldModel};
use std::path::{Path, PathBuf};

fn dinowm_tiny() -> PathBuf {
    root().join("tests/data/dinowm_tiny")
}

/// Copy a bundle with its fixtures.
fn copy_with_fixtures(src: &Path) -> tempfile::TempDir {
    let d = copy_bundle(src);
    let fx = d.path().join("fixtures");
    std::fs::create_dir(&fx).unwrap();
    for e in std::fs::read_dir(src.join("fixtures")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), fx.join(e.file_name())).unwrap();
    }
    d
}

#[test]
fn exported_dinowm_bundle_matches_pytorch_including_the_rollout() {
    let b = Bundle::open(&dinowm_tiny()).unwrap();
    assert_eq!(b.manifest.proprio_tokens, b.manifest.num_patches);
    let tract = make_backend("tract").unwrap();
    for threads in [1, 2] {
        let r = qwm::runtime::verify::verify(&b, tract.as_ref(), threads).unwrap();
        let names: Vec<&str> = r.checks.iter().map(|c| c.output.as_str()).collect();
        assert_eq!(
            names,
            [
                "encoder_visual",
                "encoder_proprio_emb",
                "predictor_next_visual",
                "predictor_next_proprio_emb",
                "rollout_next_visual",
                "rollout_next_proprio_emb"
            ]
        );
        assert!(r.pass(), "{r:?}");
    }
    // The command line says the same and exits 0.
    let (ok, out, err) = run_qwm(&["verify", "--model", "tests/data/dinowm_tiny"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches(" ok").count(), 6, "{out}");
}

#[test]
fn verify_fails_when_a_number_is_off() {
    let d = copy_with_fixtures(&dinowm_tiny());
    let p = d.path().join("fixtures/rollout_next_visual.npy");
    let mut a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(&p).unwrap();
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    a[[1, 2, 5]] += 0.01 * scale; // a 1% error in one value of the rollout's last frame
    ndarray_npy::write_npy(&p, &a).unwrap();
    let dir = d.path().to_str().unwrap();
    let (ok, out, err) = run_qwm(&["verify", "--model", dir]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("rollout_next_visual") && out.contains("FAIL"),
        "{out}"
    );
    assert!(err.contains("1 of 6 outputs differ"), "{err}");
    // A NaN in qwm's output never passes (here: in the reference, compared the other way).
    assert!(qwm::runtime::verify::rel_err(&[f32::NAN], &[1.0]).is_infinite());
}

#[test]
fn objective_reads_token_zero_of_per_token_proprio() {
    let b = Bundle::open(&dinowm_tiny()).unwrap();
    let wm = WorldModel::load(
        &b,
        make_backend("tract").unwrap().as_ref(),
        &LoadOptions::with_threads(1),
    )
    .unwrap();
    let m = &wm.manifest;
    let (vl, e, pl) = (
        m.num_patches * m.visual_dim,
        m.proprio_emb_dim,
        m.proprio_len(),
    );
    assert_eq!(pl, m.num_patches * e);
    let goal = Latent {
        visual: vec![0.0; vl],
        proprio: (0..pl).map(|i| (i % e) as f32).collect(),
    };
    // Candidate 0: token 0's proprio equals the goal's, the other tokens' differ; visual off by 1.
    // Candidate 1: token 0's proprio off by 2 in every value.
    let mut proprio = goal.proprio.clone();
    for v in &mut proprio[e..] {
        *v += 100.0;
    }
    let mut p1 = goal.proprio.clone();
    for v in &mut p1[..e] {
        *v += 2.0;
    }
    proprio.extend(p1);
    let mut visual = vec![1.0; vl];
    visual.extend(vec![0.0; vl]);
    let pred = BatchLatents {
        batch: 2,
        visual,
        proprio,
    };
    let o = wm.objective(&pred, &goal);
    let alpha = m.objective.alpha as f32;
    assert!((o[0] - 1.0).abs() < 1e-6, "{o:?}");
    assert!((o[1] - 4.0 * alpha).abs() < 1e-5, "{o:?}");
}

#[test]
fn manifest_refuses_proprio_tokens_other_than_one_or_num_patches() {
    let d = copy_with_fixtures(&dinowm_tiny());
    let mp = d.path().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    m["proprio_tokens"] = serde_json::json!(3);
    std::fs::write(&mp, serde_json::to_string(&m).unwrap()).unwrap();
    let e = Bundle::open(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("proprio_tokens = 3 must be 1 or num_patches (4)"),
        "{e}"
    );
    // Without the field the graphs' per-token shapes disagree with a one-row proprio.
    m.as_object_mut().unwrap().remove("proprio_tokens");
    std::fs::write(&mp, serde_json::to_string(&m).unwrap()).unwrap();
    let e = Bundle::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("proprio_emb"), "{e}");
}

#[test]
fn exported_bundle_quantizes_and_plans() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("w8");
    let qs = q.to_str().unwrap();
    let (ok, out, err) = run_qwm(&[
        "quantize",
        "--model",
        "tests/data/dinowm_tiny",
        "--out",
        qs,
        "--encoder",
        "w8",
        "--predictor",
        "w4-g32",
        "--threads",
        "1",
    ]);
    assert!(ok, "{out}{err}");
    // Quantized predictions stay near the float fixtures (W4 g32 on a random model: loose).
    let b = Bundle::open(&q).unwrap();
    let tract = make_backend("tract").unwrap();
    let pred = tract
        .load(&b.predictor, &LoadOptions::with_threads(1))
        .unwrap();
    let out = run_predictor_fixture(&dinowm_tiny(), pred.as_ref());
    let want = npy(&dinowm_tiny(), "predictor_next_visual");
    let e = rel_err(&out[0].data, want.as_slice().unwrap());
    assert!(e > 0.0 && e < 0.1, "W4-g32 predictor rel err {e}");
    // Verify refuses it: its fixtures are the float model's.
    let (ok, _, err) = run_qwm(&["verify", "--model", qs]);
    assert!(!ok && err.contains("quantized bundle"), "{err}");
    // Both plan an episode in the Wall environment.
    for model in ["tests/data/dinowm_tiny", qs] {
        let (ok, out, err) = run_qwm(&[
            "plan",
            "--model",
            model,
            "--episodes",
            "1",
            "--samples",
            "16",
            "--topk",
            "4",
            "--opt-steps",
            "2",
            "--horizon",
            "3",
            "--n-taken",
            "3",
            "--max-iter",
            "2",
            "--threads",
            "1",
        ]);
        assert!(ok, "{model}: {out}{err}");
        assert!(out.contains("non-finite candidates 0"), "{out}");
    }
}

#[test]
fn verify_needs_fixtures() {
    let d = copy_bundle(&dinowm_tiny());
    let (ok, _, err) = run_qwm(&["verify", "--model", d.path().to_str().unwrap()]);
    assert!(!ok && err.contains("no parity fixtures"), "{err}");
}
