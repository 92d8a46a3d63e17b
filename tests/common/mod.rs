//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ndarray::ArrayD;
use std::path::{Path, PathBuf};

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped Wall bundle.
pub fn wall() -> PathBuf {
    root().join("models/wall")
}

/// The tiny random bundle with a 3-frame history.
pub fn tiny_h3() -> PathBuf {
    root().join("tests/data/tiny_h3")
}

/// Read a fixture array.
pub fn npy(bundle: &Path, name: &str) -> ArrayD<f32> {
    let p = bundle.join("fixtures").join(format!("{name}.npy"));
    ndarray_npy::read_npy(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Copy a bundle folder (files only, plus fixtures) into a temporary directory.
pub fn copy_bundle(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// max |a - b| / max |b|, failing on any non-finite value.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    assert!(
        a.iter().all(|v| v.is_finite()),
        "non-finite value in the output under test"
    );
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
        / scale
}

/// Run a session on a bundle's encoder fixture inputs.
pub fn run_encoder_fixture(dir: &Path, s: &dyn qwm::engine::Session) -> Vec<qwm::engine::Tensor> {
    use qwm::engine::TensorRef;
    let (pix, pr) = (npy(dir, "encoder_pixels"), npy(dir, "encoder_proprio"));
    s.run(&[
        (
            "pixels",
            TensorRef {
                shape: pix.shape(),
                data: pix.as_slice().unwrap(),
            },
        ),
        (
            "proprio",
            TensorRef {
                shape: pr.shape(),
                data: pr.as_slice().unwrap(),
            },
        ),
    ])
    .unwrap()
}

/// Run a session on a bundle's predictor fixture inputs (given in a different order than the
/// graph's, to exercise name matching).
pub fn run_predictor_fixture(dir: &Path, s: &dyn qwm::engine::Session) -> Vec<qwm::engine::Tensor> {
    use qwm::engine::TensorRef;
    let (v, p, a) = (
        npy(dir, "predictor_visual"),
        npy(dir, "predictor_proprio_emb"),
        npy(dir, "predictor_action"),
    );
    s.run(&[
        (
            "action",
            TensorRef {
                shape: a.shape(),
                data: a.as_slice().unwrap(),
            },
        ),
        (
            "visual",
            TensorRef {
                shape: v.shape(),
                data: v.as_slice().unwrap(),
            },
        ),
        (
            "proprio_emb",
            TensorRef {
                shape: p.shape(),
                data: p.as_slice().unwrap(),
            },
        ),
    ])
    .unwrap()
}

/// Check outputs against the named fixtures: same shapes, max |a - b| / max |b| <= tol.
pub fn check_fixture(
    dir: &Path,
    out: &[qwm::engine::Tensor],
    names: &[&str],
    tol: f64,
    what: &str,
) {
    for (o, name) in out.iter().zip(names) {
        let want = npy(dir, name);
        assert_eq!(o.shape, want.shape(), "{what} {name}");
        let e = rel_err(&o.data, want.as_slice().unwrap());
        assert!(e <= tol, "{what} {}: {name} rel err {e}", dir.display());
    }
}

/// Run the qwm binary with `args` from the repository root, killing it (and failing the test)
/// after `deadline`: a hang is a bug. Returns (success, stderr).
pub fn run_qwm_within<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
    deadline: std::time::Duration,
) -> (bool, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qwm"))
        .args(args)
        .current_dir(root())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run qwm");
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        if t0.elapsed() > deadline {
            let _ = child.kill();
            panic!("qwm {args:?} still running after {deadline:?} (hang?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Run the qwm binary with `args` from the repository root: (success, stdout, stderr).
pub fn run_qwm(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwm"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run qwm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A model of one graph, default-domain opset 17 (what the exporters write).
pub fn opset17_model(graph: tract_onnx::pb::GraphProto) -> tract_onnx::pb::ModelProto {
    tract_onnx::pb::ModelProto {
        ir_version: 8,
        opset_import: vec![tract_onnx::pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    }
}
