//! Bad files as an attacker or a careless user plants them (issue 23's classes): FIFOs where
//! inputs belong must be refused at once, never waited on; symlinks planted where qwm writes must
//! be replaced, never written through; reference data with NaN must not pass. Every case runs
//! the real binary with a deadline and checks the files it must not change by hash.

#![cfg(unix)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// Run qwm with a deadline; (success, stderr). A run past the deadline is killed and fails the test.
fn qwm(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qwm runs");
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!err.contains("panicked at"), "qwm {args:?} panicked: {err}");
            return (status.success(), err);
        }
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("qwm {args:?} still running after {DEADLINE:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

fn sha(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

fn wall() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/wall")
}

/// A copy of the shipped Wall bundle (fixtures included) in `dir`.
fn copy_wall(dir: &Path) -> PathBuf {
    let b = dir.join("wall");
    std::fs::create_dir_all(b.join("fixtures")).unwrap();
    for f in ["manifest.json", "encoder.onnx", "predictor.onnx"] {
        std::fs::copy(wall().join(f), b.join(f)).unwrap();
    }
    for e in std::fs::read_dir(wall().join("fixtures")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), b.join("fixtures").join(e.file_name())).unwrap();
    }
    b
}

#[test]
fn fifos_in_place_of_inputs_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    // One bundle per graph file replaced by a FIFO (and one with a FIFO manifest).
    for f in ["manifest.json", "encoder.onnx", "predictor.onnx"] {
        let b = copy_wall(&tmp.path().join(f));
        std::fs::remove_file(b.join(f)).unwrap();
        mkfifo(&b.join(f));
        let (ok, err) = qwm(&["inspect", b.to_str().unwrap()]);
        assert!(!ok, "inspect with a FIFO {f} succeeded");
        assert!(
            err.contains(f) && err.contains("not a regular file"),
            "{f}: {err}"
        );
    }
    // A FIFO fixture (verify), --json --resume report, study config, board profile, report font.
    let b = copy_wall(&tmp.path().join("fixture"));
    let fx = b.join("fixtures/encoder_pixels.npy");
    std::fs::remove_file(&fx).unwrap();
    mkfifo(&fx);
    let (ok, err) = qwm(&["verify", "--model", b.to_str().unwrap()]);
    assert!(!ok && err.contains("encoder_pixels.npy"), "{err}");
    let fifo = tmp.path().join("fifo.json");
    mkfifo(&fifo);
    let f = fifo.to_str().unwrap();
    let w = wall();
    let w = w.to_str().unwrap();
    for (args, what) in [
        (
            vec![
                "plan",
                "--model",
                w,
                "--episodes",
                "1",
                "--json",
                f,
                "--resume",
            ],
            "fifo.json",
        ),
        (vec!["study", "--config", f, "--list"], "fifo.json"),
        (vec!["plan", "--model", w, "--target", f], "fifo.json"),
    ] {
        let (ok, err) = qwm(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            err.contains(what) && err.contains("not a regular file"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn planted_symlinks_are_replaced_not_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_wall(tmp.path());
    let hashes: Vec<(PathBuf, String)> = ["manifest.json", "encoder.onnx", "predictor.onnx"]
        .iter()
        .map(|f| (src.join(f), sha(&src.join(f))))
        .collect();
    // The output folder holds symlinks to the source bundle's files at every name qwm writes or
    // once wrote as a temporary.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for (name, target) in [
        ("manifest.json", "manifest.json"),
        ("encoder.onnx", "encoder.onnx"),
        ("predictor.onnx", "predictor.onnx"),
        ("manifest.tmp", "manifest.json"),
        ("encoder.tmp", "encoder.onnx"),
        ("predictor.tmp", "predictor.onnx"),
    ] {
        std::os::unix::fs::symlink(src.join(target), out.join(name)).unwrap();
    }
    let (ok, err) = qwm(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--predictor",
        "w8",
    ]);
    assert!(ok, "{err}");
    for (p, h) in &hashes {
        assert_eq!(
            &sha(p),
            h,
            "{} changed through a planted symlink",
            p.display()
        );
    }
    assert!(!out.join("manifest.json").is_symlink());
    // `plan --json R`: a symlink at R and at R's old temporary name R.json.tmp.
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let report = tmp.path().join("r.json");
    std::os::unix::fs::symlink(&victim, &report).unwrap();
    std::os::unix::fs::symlink(&victim, tmp.path().join("r.json.tmp")).unwrap();
    let (ok, err) = qwm(&[
        "plan",
        "--model",
        src.to_str().unwrap(),
        "--episodes",
        "1",
        "--samples",
        "20",
        "--topk",
        "2",
        "--opt-steps",
        "1",
        "--max-iter",
        "1",
        "--json",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(std::fs::read_to_string(&report)
        .unwrap()
        .contains("\"episodes\""));
}

#[test]
fn non_finite_reference_data_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let b = copy_wall(tmp.path());
    let fx = b.join("fixtures/encoder_visual.npy");
    let mut bytes = std::fs::read(&fx).unwrap();
    // The last f32 of the array (little-endian) becomes NaN.
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&fx, bytes).unwrap();
    let (ok, err) = qwm(&["verify", "--model", b.to_str().unwrap()]);
    assert!(!ok, "verify passed with NaN in its reference");
    assert!(
        err.contains("encoder_visual.npy") && err.contains("non-finite"),
        "{err}"
    );
}

#[test]
fn sizes_from_flags_and_manifests_are_checked_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let w = wall();
    let w = w.to_str().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let huge = "4611686018427387904";
    for (args, what) in [
        (vec!["plan", "--model", w, "--samples", huge], "--samples"),
        (
            vec!["plan", "--model", w, "--samples", "1000000000"],
            "--samples",
        ),
        (
            vec!["profile", "--model", w, "--samples", huge],
            "--samples",
        ),
        (vec!["bench", "--model", w, "--batch", huge], "--batch"),
        (
            vec!["bench", "--model", w, "--batch", "1000000000"],
            "--batch",
        ),
        (
            vec![
                "dataset",
                "--episodes",
                "1000000",
                "--steps",
                "1000",
                "--out",
                o,
            ],
            "--episodes",
        ),
        (
            vec![
                "quantize",
                "--model",
                w,
                "--out",
                o,
                "--predictor",
                "w8a8",
                "--calib-samples",
                huge,
            ],
            "--calib-samples",
        ),
    ] {
        let (ok, err) = qwm(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            err.contains(what) && err.contains("needs"),
            "{args:?}: {err}"
        );
    }
    assert!(!out.exists(), "a refused run left {o}");
    // Manifest sizes that validation used to accept.
    for (field, value) in [("image_size", 1u64 << 20), ("num_hist", 1 << 20)] {
        let b = copy_wall(&tmp.path().join(field));
        let path = b.join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        m[field] = value.into();
        std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        let (ok, err) = qwm(&["plan", "--model", b.to_str().unwrap(), "--episodes", "1"]);
        assert!(!ok && err.contains(field), "{field}: {err}");
    }
}
