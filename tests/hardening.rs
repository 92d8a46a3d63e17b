//! Bad files as an attacker or a careless user plants them (issue 23's classes): FIFOs where
//! inputs belong must be refused at once, never waited on; symlinks planted where qwm writes must
//! be replaced, never written through; reference data with NaN must not pass. Every case runs
//! the real binary with a deadline and checks the files it must not change by hash.

#![cfg(unix)]

mod common;
use common::run_qwm_within;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// Run qwm with a deadline; (success, stderr). A panic message fails the test too.
fn qwm(args: &[&str]) -> (bool, String) {
    let (ok, err) = run_qwm_within(args, DEADLINE);
    assert!(!err.contains("panicked at"), "qwm {args:?} panicked: {err}");
    (ok, err)
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

/// Rewrite `b/encoder.onnx` with `edit` and record its new size and hash in the manifest.
fn edit_encoder(b: &Path, edit: impl FnOnce(&mut tract_onnx::pb::ModelProto)) {
    let path = b.join("encoder.onnx");
    let mut m = qwm::onnx::proto::decode(&std::fs::read(&path).unwrap(), "encoder.onnx").unwrap();
    edit(&mut m);
    let bytes = qwm::onnx::proto::encode(&m);
    std::fs::write(&path, &bytes).unwrap();
    let mpath = b.join("manifest.json");
    let mut man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    man["graphs"]["encoder"]["sha256"] = sha(&path).into();
    man["graphs"]["encoder"]["bytes"] = (bytes.len() as u64).into();
    std::fs::write(&mpath, serde_json::to_string(&man).unwrap()).unwrap();
}

#[test]
fn graphs_that_disagree_with_the_manifest_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = |b: &Path| {
        qwm(&[
            "plan",
            "--model",
            b.to_str().unwrap(),
            "--episodes",
            "1",
            "--max-iter",
            "1",
            "--samples",
            "20",
            "--topk",
            "2",
            "--opt-steps",
            "1",
        ])
    };
    // `pixels` declared int64.
    let b = copy_wall(&tmp.path().join("dtype"));
    edit_encoder(&b, |m| {
        let g = m.graph.as_mut().unwrap();
        let i = g.input.iter_mut().find(|i| i.name == "pixels").unwrap();
        if let Some(tract_onnx::pb::type_proto::Value::TensorType(tt)) =
            i.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            tt.elem_type = tract_onnx::pb::tensor_proto::DataType::Int64 as i32;
        }
    });
    let (ok, err) = plan(&b);
    assert!(
        !ok && err.contains("pixels") && err.contains("Int64"),
        "{err}"
    );
    // `visual` transposed: the right length, the wrong layout.
    let b = copy_wall(&tmp.path().join("transposed"));
    edit_encoder(&b, |m| {
        let g = m.graph.as_mut().unwrap();
        for n in g.node.iter_mut() {
            for o in n.output.iter_mut() {
                if o == "visual" {
                    *o = "visual_raw".into();
                }
            }
        }
        g.node.push(tract_onnx::pb::NodeProto {
            op_type: "Transpose".into(),
            name: "qwm_test_transpose".into(),
            input: vec!["visual_raw".into()],
            output: vec!["visual".into()],
            attribute: vec![tract_onnx::pb::AttributeProto {
                name: "perm".into(),
                r#type: tract_onnx::pb::attribute_proto::AttributeType::Ints as i32,
                ints: vec![0, 2, 1],
                ..Default::default()
            }],
            ..Default::default()
        });
        let o = g.output.iter_mut().find(|o| o.name == "visual").unwrap();
        o.r#type = None;
    });
    let (ok, err) = plan(&b);
    assert!(!ok && err.contains("output 'visual' has shape"), "{err}");
    // A Constant whose value is external data at `etc/passwd`.
    let b = copy_wall(&tmp.path().join("constant"));
    edit_encoder(&b, |m| {
        let g = m.graph.as_mut().unwrap();
        let kv = |k: &str, v: &str| tract_onnx::pb::StringStringEntryProto {
            key: k.into(),
            value: v.into(),
        };
        g.node.insert(
            0,
            tract_onnx::pb::NodeProto {
                op_type: "Constant".into(),
                name: "qwm_test_constant".into(),
                output: vec!["qwm_test_c".into()],
                attribute: vec![tract_onnx::pb::AttributeProto {
                    name: "value".into(),
                    r#type: tract_onnx::pb::attribute_proto::AttributeType::Tensor as i32,
                    t: Some(tract_onnx::pb::TensorProto {
                        name: "c".into(),
                        dims: vec![4],
                        data_type: tract_onnx::pb::tensor_proto::DataType::Float as i32,
                        data_location: Some(1),
                        external_data: vec![kv("location", "etc/passwd"), kv("length", "16")],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
    });
    let (ok, err) = plan(&b);
    assert!(
        !ok && err.contains("qwm_test_constant") && err.contains("external data"),
        "{err}"
    );
}

/// A copy of Wall whose first float matrix initializer of the encoder is edited.
fn with_encoder_weight(dir: &Path, edit: impl FnOnce(&mut tract_onnx::pb::TensorProto)) -> PathBuf {
    let b = copy_wall(dir);
    edit_encoder(&b, |m| {
        let g = m.graph.as_mut().unwrap();
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.dims.len() == 2 && t.dims.iter().all(|&d| d > 1))
            .expect("a weight matrix");
        edit(t);
    });
    b
}

#[test]
fn impossible_graphs_and_sizes_are_errors_not_panics_or_aborts() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = |b: &Path| {
        qwm(&[
            "plan",
            "--model",
            b.to_str().unwrap(),
            "--episodes",
            "1",
            "--max-iter",
            "1",
            "--samples",
            "8",
            "--topk",
            "2",
            "--opt-steps",
            "1",
        ])
    };
    let quantize = |b: &Path, out: &Path| {
        qwm(&[
            "quantize",
            "--model",
            b.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--encoder",
            "w8",
            "--predictor",
            "float",
            "--calib-episodes",
            "1",
            "--calib-iters",
            "1",
            "--calib-samples",
            "8",
        ])
    };
    // Weight dims that cannot be (2^32 x 2^32), negative, or a STRING tensor: plan and quantize
    // refuse them, naming the tensor; no bundle is written.
    type Edit = Box<dyn Fn(&mut tract_onnx::pb::TensorProto)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("huge", Box::new(|t| t.dims = vec![1 << 32, 1 << 32])),
        ("negative", Box::new(|t| t.dims = vec![-1, t.dims[1]])),
        (
            "string",
            Box::new(|t| {
                t.data_type = tract_onnx::pb::tensor_proto::DataType::String as i32;
                t.string_data = vec![b"x".to_vec(); 4];
                t.raw_data.clear();
            }),
        ),
    ];
    for (label, edit) in cases {
        let b = with_encoder_weight(&tmp.path().join(label), edit);
        let (ok, err) = plan(&b);
        assert!(
            !ok && err.contains("error:") && err.contains("initializer '"),
            "plan, weight {label}: {err}"
        );
        let out = tmp.path().join(format!("q-{label}"));
        let (ok, err) = quantize(&b, &out);
        assert!(
            !ok && err.contains("error:"),
            "quantize, weight {label}: {err}"
        );
        assert!(
            !out.join("manifest.json").exists(),
            "{label}: a bundle was written"
        );
    }
    // A graph without nodes, and a ConstantOfShape of [2^20, 2^20].
    let b = copy_wall(&tmp.path().join("empty"));
    edit_encoder(&b, |m| m.graph.as_mut().unwrap().node.clear());
    let (ok, err) = plan(&b);
    assert!(!ok && err.contains("encoder"), "zero nodes: {err}");
    let b = copy_wall(&tmp.path().join("cos"));
    edit_encoder(&b, |m| {
        let g = m.graph.as_mut().unwrap();
        g.initializer.push(tract_onnx::pb::TensorProto {
            name: "qwm_test_shape".into(),
            dims: vec![2],
            data_type: tract_onnx::pb::tensor_proto::DataType::Int64 as i32,
            int64_data: vec![1 << 20, 1 << 20],
            ..Default::default()
        });
        g.node.insert(
            0,
            tract_onnx::pb::NodeProto {
                op_type: "ConstantOfShape".into(),
                name: "qwm_test_cos".into(),
                input: vec!["qwm_test_shape".into()],
                output: vec!["qwm_test_big".into()],
                ..Default::default()
            },
        );
        g.output.push(tract_onnx::pb::ValueInfoProto {
            name: "qwm_test_big".into(),
            ..Default::default()
        });
    });
    let (ok, err) = plan(&b);
    assert!(!ok && err.contains("error:"), "ConstantOfShape 2^40: {err}");
    // A fixture whose .npy header declares 4e9 rows: verify refuses it, naming the file.
    let b = copy_wall(&tmp.path().join("npy"));
    let fx = b.join("fixtures/encoder_proprio.npy");
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4000000000, 2), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    bytes.extend([0u8; 64]);
    std::fs::write(&fx, &bytes).unwrap();
    let (ok, err) = qwm(&["verify", "--model", b.to_str().unwrap()]);
    assert!(
        !ok && err.contains("encoder_proprio"),
        "npy 4e9 rows: {err}"
    );
}

#[test]
fn graphs_beyond_any_world_models_size_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let b = copy_wall(&tmp.path().join("big"));
    let n = qwm::engine::tract::MAX_NODES + 1;
    edit_encoder(&b, |m| {
        let g = m.graph.as_mut().unwrap();
        for node in g.node.iter_mut() {
            for o in node.output.iter_mut() {
                if o == "visual" {
                    *o = "v0".into();
                }
            }
        }
        for i in 0..n {
            let out = if i + 1 == n {
                "visual".to_string()
            } else {
                format!("v{}", i + 1)
            };
            g.node.push(tract_onnx::pb::NodeProto {
                op_type: "Identity".into(),
                name: format!("id{i}"),
                input: vec![format!("v{i}")],
                output: vec![out],
                ..Default::default()
            });
        }
    });
    // Without the bound this graph loads (in about 4 s: tract's import is quadratic) and plans.
    let (ok, err) = qwm(&["plan", "--model", b.to_str().unwrap(), "--episodes", "1"]);
    assert!(
        !ok && err.contains("nodes") && err.contains("encoder.onnx"),
        "{err}"
    );
}
