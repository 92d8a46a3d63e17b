//! ONNX Runtime backend parity (cargo feature `ort`; needs libonnxruntime, see README).
#![cfg(feature = "ort")]

mod common;
use common::*;
use qwm::backend::{make_backend, LoadOptions};
use qwm::bundle::Bundle;

/// Tolerance on max |ort - torch| / max |torch| per output (same as tract's).
const PARITY_REL: f64 = 1e-4;

fn run_both(dir: &std::path::Path) {
    let b = Bundle::open(dir).unwrap();
    let mut preds = vec![];
    for name in ["tract", "ort"] {
        let backend = make_backend(name).unwrap();
        let enc = backend
            .load(&b.encoder, &LoadOptions { threads: 2 })
            .unwrap();
        check_fixture(
            dir,
            &run_encoder_fixture(dir, enc.as_ref()),
            &["encoder_visual", "encoder_proprio_emb"],
            PARITY_REL,
            name,
        );
        let pred = backend
            .load(&b.predictor, &LoadOptions { threads: 2 })
            .unwrap();
        let out = run_predictor_fixture(dir, pred.as_ref());
        check_fixture(
            dir,
            &out,
            &["predictor_next_visual", "predictor_next_proprio_emb"],
            PARITY_REL,
            name,
        );
        preds.push(out);
    }
    let err = rel_err(&preds[1][0].data, &preds[0][0].data);
    assert!(err <= PARITY_REL, "ort vs tract next_visual rel err {err}");
}

#[test]
fn ort_matches_pytorch_and_tract() {
    run_both(&wall());
    run_both(&tiny_h3());
}
