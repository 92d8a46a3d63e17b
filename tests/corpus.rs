//! Bad-input corpus: generated broken bundles, files and flags through every command. Each case
//! must end with a non-zero exit, an `error:` line naming the file, tensor, field or flag at
//! fault, no panic, and no hang (a case is killed after 20 s, which fails it).

mod common;
use common::*;
use prost::Message;
use std::path::Path;
use std::time::Duration;
use tract_onnx::pb;

/// Run qwm with a deadline of 20 s; returns (exit success, stderr).
fn run(args: &[String]) -> (bool, String) {
    run_qwm_within(args, Duration::from_secs(20))
}

/// One bad input: a bundle folder (or none) and arguments, and what the error must name.
struct Case {
    what: String,
    args: Vec<String>,
    needle: String,
    _dir: Option<tempfile::TempDir>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    qwm::bundle::hex(&sha2::Sha256::digest(bytes))
}

fn read_manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest(dir: &Path, m: &serde_json::Value) {
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(m).unwrap(),
    )
    .unwrap();
}

/// Replace a graph file and record its new hash and size, so the corruption reaches the parser.
fn replace_graph(dir: &Path, role: &str, bytes: &[u8]) {
    let mut m = read_manifest(dir);
    let file = m["graphs"][role]["file"].as_str().unwrap().to_string();
    std::fs::write(dir.join(&file), bytes).unwrap();
    m["graphs"][role]["sha256"] = serde_json::json!(sha256_hex(bytes));
    m["graphs"][role]["bytes"] = serde_json::json!(bytes.len());
    write_manifest(dir, &m);
}

/// A tiny planning run on a bundle (fast enough for hundreds of cases).
fn plan_args(dir: &Path) -> Vec<String> {
    [
        "plan",
        "--episodes",
        "1",
        "--samples",
        "8",
        "--topk",
        "2",
        "--opt-steps",
        "1",
        "--max-iter",
        "1",
        "--threads",
        "1",
        "--model",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect()
}

fn bundle_case(what: String, needle: &str, edit: impl FnOnce(&Path)) -> Case {
    let d = copy_bundle(&tiny_h3());
    edit(d.path());
    Case {
        what,
        args: plan_args(d.path()),
        needle: needle.to_string(),
        _dir: Some(d),
    }
}

fn manifest_cases() -> Vec<Case> {
    let mut cases = vec![];
    let edit = |what: &str, needle: &str, f: Box<dyn Fn(&mut serde_json::Value)>| {
        bundle_case(format!("manifest: {what}"), needle, move |d| {
            let mut m = read_manifest(d);
            f(&mut m);
            write_manifest(d, &m);
        })
    };
    for v in [0, 2, 99] {
        cases.push(edit(
            &format!("format_version {v}"),
            "format_version",
            Box::new(move |m| m["format_version"] = v.into()),
        ));
    }
    let fields = [
        "image_size",
        "action_dim",
        "frameskip",
        "proprio_dim",
        "num_hist",
        "num_patches",
        "visual_dim",
        "proprio_emb_dim",
    ];
    for f in fields {
        for (label, v) in [
            ("0", serde_json::json!(0)),
            ("huge", serde_json::json!(1u64 << 21)),
            ("negative", serde_json::json!(-3)),
            ("a string", serde_json::json!("four")),
        ] {
            cases.push(edit(
                &format!("{f} {label}"),
                f,
                Box::new(move |m| m[f] = v.clone()),
            ));
        }
    }
    for (f, n) in [
        ("pixel_mean", 2),
        ("pixel_std", 4),
        ("action_mean", 1),
        ("action_std", 3),
        ("proprio_mean", 5),
        ("proprio_std", 0),
    ] {
        cases.push(edit(
            &format!("{f} with {n} values"),
            f,
            Box::new(move |m| m[f] = serde_json::json!(vec![0.5; n])),
        ));
        cases.push(edit(
            &format!("{f} not numbers"),
            f,
            Box::new(move |m| m[f] = serde_json::json!(["a", "b"])),
        ));
    }
    for f in ["pixel_std", "action_std", "proprio_std"] {
        for v in [0.0, -1.0] {
            cases.push(edit(
                &format!("{f} {v}"),
                f,
                Box::new(move |m| {
                    let n = m[f].as_array().unwrap().len();
                    m[f] = serde_json::json!(vec![v; n]);
                }),
            ));
        }
    }
    cases.push(edit(
        "action_low without action_high",
        "action_high",
        Box::new(|m| {
            m["action_low"] = serde_json::json!([-1.0, -1.0]);
            m.as_object_mut().unwrap().remove("action_high");
        }),
    ));
    cases.push(edit(
        "action_low above action_high",
        "action_low",
        Box::new(|m| {
            m["action_low"] = serde_json::json!([1.0, 1.0]);
            m["action_high"] = serde_json::json!([-1.0, -1.0]);
        }),
    ));
    cases.push(edit(
        "objective mode",
        "objective.mode",
        Box::new(|m| m["objective"]["mode"] = "sum".into()),
    ));
    cases.push(edit(
        "objective alpha",
        "objective.alpha",
        Box::new(|m| m["objective"]["alpha"] = (-1.0).into()),
    ));
    // Every required top-level key removed in turn.
    let keys: Vec<String> = read_manifest(&tiny_h3())
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| {
            ![
                "name",
                "training",
                "quantization",
                "action_low",
                "action_high",
            ]
            .contains(&k.as_str())
        })
        .cloned()
        .collect();
    for k in keys {
        let k2 = k.clone();
        cases.push(edit(
            &format!("without {k}"),
            &k,
            Box::new(move |m| {
                m.as_object_mut().unwrap().remove(&k2);
            }),
        ));
    }
    for role in ["encoder", "predictor"] {
        let file = format!("{role}.onnx");
        cases.push(edit(
            &format!("{role} sha256 wrong"),
            &file,
            Box::new(move |m| m["graphs"][role]["sha256"] = "00".repeat(32).into()),
        ));
        cases.push(edit(
            &format!("{role} byte count wrong"),
            &file,
            Box::new(move |m| m["graphs"][role]["bytes"] = 12.into()),
        ));
        cases.push(edit(
            &format!("{role} file missing"),
            "nope.onnx",
            Box::new(move |m| m["graphs"][role]["file"] = "nope.onnx".into()),
        ));
        cases.push(edit(
            &format!("{role} file escapes the bundle"),
            "../",
            Box::new(move |m| m["graphs"][role]["file"] = "../manifest.json".into()),
        ));
        let first_input = if role == "encoder" {
            "pixels"
        } else {
            "visual"
        };
        cases.push(edit(
            &format!("{role} input renamed"),
            first_input,
            Box::new(move |m| m["graphs"][role]["inputs"][0]["name"] = "renamed".into()),
        ));
        cases.push(edit(
            &format!("{role} input rank wrong"),
            first_input,
            Box::new(move |m| m["graphs"][role]["inputs"][0]["shape"] = serde_json::json!([-1, 3])),
        ));
        cases.push(edit(
            &format!("{role} output removed"),
            role,
            Box::new(move |m| {
                m["graphs"][role]["outputs"].as_array_mut().unwrap().pop();
            }),
        ));
    }
    // Whole-manifest damage.
    for (what, text) in [
        ("empty", ""),
        ("truncated", "{\"format_version\": 1, \"env\": "),
        ("not an object", "[1, 2, 3]"),
        ("binary", "\u{0}\u{1}\u{2}"),
    ] {
        cases.push(bundle_case(
            format!("manifest {what}"),
            "manifest.json",
            move |d| std::fs::write(d.join("manifest.json"), text).unwrap(),
        ));
    }
    cases.push(bundle_case(
        "manifest missing".into(),
        "manifest.json",
        |d| std::fs::remove_file(d.join("manifest.json")).unwrap(),
    ));
    cases.push(bundle_case(
        "manifest is a folder".into(),
        "manifest.json",
        |d| {
            std::fs::remove_file(d.join("manifest.json")).unwrap();
            std::fs::create_dir(d.join("manifest.json")).unwrap();
        },
    ));
    cases
}

fn onnx_cases() -> Vec<Case> {
    let mut cases = vec![];
    for role in ["encoder", "predictor"] {
        let file = format!("{role}.onnx");
        let orig = std::fs::read(tiny_h3().join(&file)).unwrap();
        // Truncated (hash updated, so the parser sees it).
        for k in 1..=10 {
            let cut = orig.len() * k / 11;
            let bytes = orig[..cut].to_vec();
            cases.push(bundle_case(
                format!("{file} truncated to {cut} bytes"),
                &file,
                move |d| replace_graph(d, role, &bytes),
            ));
        }
        // Bit flips with the manifest's hash left alone: the hash check names the file.
        for k in 0..10 {
            let pos = (orig.len() / 10) * k + 7;
            let mut bytes = orig.clone();
            bytes[pos] ^= 1 << (k % 8);
            cases.push(bundle_case(
                format!("{file} bit flip at {pos}"),
                "sha256 mismatch",
                move |d| std::fs::write(d.join(format!("{role}.onnx")), &bytes).unwrap(),
            ));
        }
        // Empty file and a non-ONNX file.
        cases.push(bundle_case(format!("{file} empty"), &file, move |d| {
            replace_graph(d, role, b"")
        }));
        cases.push(bundle_case(format!("{file} is text"), &file, move |d| {
            replace_graph(d, role, b"this is not a protobuf at all, just text\n")
        }));
        // The other graph in its place: inputs disagree with the manifest.
        let other = if role == "encoder" {
            "predictor"
        } else {
            "encoder"
        };
        let other_bytes = std::fs::read(tiny_h3().join(format!("{other}.onnx"))).unwrap();
        cases.push(bundle_case(
            format!("{file} replaced by {other}.onnx"),
            &file,
            move |d| replace_graph(d, role, &other_bytes),
        ));
        // Missing file.
        cases.push(bundle_case(format!("{file} missing"), &file, move |d| {
            std::fs::remove_file(d.join(format!("{role}.onnx"))).unwrap()
        }));
        // NaN / Inf weights: every float initializer poisoned.
        for (label, v) in [("NaN", f32::NAN), ("Inf", f32::INFINITY)] {
            let mut m = pb::ModelProto::decode(&orig[..]).unwrap();
            for t in &mut m.graph.as_mut().unwrap().initializer {
                if t.data_type == pb::tensor_proto::DataType::Float as i32 && t.dims.len() >= 2 {
                    if !t.raw_data.is_empty() {
                        let n = t.raw_data.len() / 4;
                        t.raw_data = (0..n).flat_map(|_| v.to_le_bytes()).collect();
                    } else {
                        t.float_data.iter_mut().for_each(|x| *x = v);
                    }
                }
            }
            let bytes = m.encode_to_vec();
            cases.push(bundle_case(
                format!("{file} {label} weights"),
                "non-finite",
                move |d| replace_graph(d, role, &bytes),
            ));
        }
    }
    cases
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn flag_cases() -> Vec<Case> {
    let tiny = tiny_h3().display().to_string();
    let mut cases = vec![];
    let mut add = |what: &str, args: Vec<String>, needle: &str| {
        cases.push(Case {
            what: what.to_string(),
            args,
            needle: needle.to_string(),
            _dir: None,
        })
    };
    let plan = |extra: &[&str]| {
        let mut v = s(&[
            "plan",
            "--episodes",
            "1",
            "--samples",
            "8",
            "--topk",
            "2",
            "--opt-steps",
            "1",
            "--max-iter",
            "1",
        ]);
        if !extra.contains(&"--model") {
            v.extend(s(&["--model", &tiny]));
        }
        v.extend(s(extra));
        v
    };
    for (extra, needle) in [
        (&["--episodes", "0"][..], "--episodes"),
        (&["--samples", "0"], "--samples"),
        (&["--samples", "1", "--topk", "1"], "--samples"),
        (&["--topk", "0"], "--topk"),
        (&["--topk", "9"], "--topk"),
        (&["--opt-steps", "0"], "--opt-steps"),
        (&["--horizon", "0"], "--horizon"),
        (&["--n-taken", "0"], "--n-taken"),
        (&["--n-taken", "7", "--horizon", "5"], "--n-taken"),
        (&["--max-iter", "0"], "--max-iter"),
        (&["--var-scale", "0"], "--var-scale"),
        (&["--var-scale", "-1"], "--var-scale"),
        (&["--var-scale", "nan"], "--var-scale"),
        (&["--var-scale", "inf"], "--var-scale"),
        (&["--var-scale", "-inf"], "--var-scale"),
        (&["--samples", "4611686018427387904"], "--samples"),
        (&["--samples", "1000000000"], "--samples"),
        (
            &["--horizon", "4611686018427387904", "--n-taken", "1"],
            "--horizon",
        ),
        (
            &["--planner", "mppi", "--temperature", "-1e-30"],
            "--temperature",
        ),
        (
            &["--planner", "mppi", "--temperature", "-1"],
            "--temperature",
        ),
        (
            &["--planner", "mppi", "--temperature", "0"],
            "--temperature",
        ),
        (&["--chunk", "0"], "--chunk"),
        (&["--threads", "0"], "--threads"),
        (&["--threads", "100000"], "--threads"),
        (&["--backend", "onnx"], "--backend"),
        (&["--env", "pusht"], "pusht"),
        (&["--planner", "gradient"], "--planner"),
        (&["--episodes", "-1"], "--episodes"),
        (&["--seed", "x"], "--seed"),
        (&["--samples", "1e9x"], "--samples"),
        (&["--model", "/does/not/exist"], "/does/not/exist"),
        (&["--model", "/etc/hostname"], "/etc/hostname"),
        (
            &["--json", "/etc/hostname/out.json"],
            "/etc/hostname/out.json",
        ),
        (
            &["--json", "/proc/qwm-cannot-write.json"],
            "/proc/qwm-cannot-write.json",
        ),
        (
            &["--save-frames", "/etc/hostname/frames"],
            "/etc/hostname/frames",
        ),
        (&["--unknown-flag"], "--unknown-flag"),
        (&["--mem-limit", "lots"], "--mem-limit"),
        (&["--mem-limit", "0"], "--mem-limit"),
        (&["--mem-limit", "-1G"], "--mem-limit"),
        (&["--mem-limit", "1K"], "--mem-limit"),
        (&["--target", "no-such-board"], "--target no-such-board"),
        (&["--target", "/etc/hostname.toml"], "/etc/hostname.toml"),
        (&["--resume"], "--json"),
    ] {
        add(&format!("plan {extra:?}"), plan(extra), needle);
    }
    for (extra, needle) in [
        (&["--episodes", "0"][..], "--episodes"),
        (&["--steps", "0"], "--steps"),
        (&["--image-size", "4"], "--image-size"),
        (&["--image-size", "100000"], "--image-size"),
        (&["--speed-max", "9"], "--speed-max"),
        (&["--speed-max", "0"], "--speed-max"),
        (&["--env", "rope"], "rope"),
    ] {
        let mut v = s(&[
            "dataset",
            "--episodes",
            "2",
            "--steps",
            "3",
            "--out",
            "/tmp/qwm-corpus-never",
        ]);
        v.extend(s(extra));
        add(&format!("dataset {extra:?}"), v, needle);
    }
    add(
        "dataset into a file's path",
        s(&[
            "dataset",
            "--episodes",
            "1",
            "--steps",
            "2",
            "--out",
            "/etc/hostname/ds",
        ]),
        "/etc/hostname/ds",
    );
    let q = |scheme: &str| {
        s(&[
            "quantize",
            "--model",
            &tiny,
            "--out",
            "/tmp/qwm-corpus-q",
            "--encoder",
            scheme,
            "--predictor",
            "float",
        ])
    };
    for scheme in [
        "w5",
        "w8a3",
        "w4-g0",
        "w4-g",
        "x8",
        "w8a8-tokn",
        "w",
        "w99",
        "a8",
        "w8a8a8",
        "w4--g32",
        "W8",
        "w+8",
        "w08",
        "w4-g+32",
        "w4-g032",
    ] {
        add(&format!("quantize scheme {scheme}"), q(scheme), "--encoder");
    }
    let mut v = q("w8");
    v.extend(s(&["--method", "gptq", "--gptq-damp", "0"]));
    add("quantize gptq damp 0", v, "--gptq-damp");
    let mut v = q("w8");
    v.extend(s(&["--method", "gptq", "--gptq-damp", "nan"]));
    add("quantize gptq damp nan", v, "--gptq-damp");
    let mut v = q("w8");
    v.extend(s(&["--method", "hqq"]));
    add("quantize unknown method", v, "--method");
    // OmniQuant's own settings, refused before any calibration or Python runs.
    for (flag, value) in [
        ("--omni-batch", "0"),
        ("--omni-samples", "1"),
        ("--omni-lwc-lr", "nan"),
        ("--omni-let-lr", "-1"),
        ("--omni-python", "/nonexistent/python3"),
    ] {
        let mut v = q("w8");
        v.extend(s(&["--method", "omniquant", flag, value]));
        add("quantize omniquant bad setting", v, flag);
    }
    let mut v = q("w8");
    v.extend(s(&["--form", "deploy"]));
    add("quantize deploy form", v, "--form");
    let mut v = q("w8");
    v.extend(s(&["--threads", "0"]));
    add("quantize zero threads", v, "--threads");
    let mut v = q("w8a8");
    v.extend(s(&["--calib-episodes", "0"]));
    add("quantize zero calibration episodes", v, "--calib-episodes");
    let mut v = q("w8a8");
    v.extend(s(&["--smooth-alpha", "2"]));
    add("quantize smooth alpha", v, "--smooth-alpha");
    add(
        "quantize onto its own input",
        s(&[
            "quantize",
            "--model",
            &tiny,
            "--out",
            &tiny,
            "--encoder",
            "w8",
            "--predictor",
            "w8",
        ]),
        "--out",
    );
    add(
        "quantize missing model",
        s(&[
            "quantize",
            "--model",
            "/nope",
            "--out",
            "/tmp/qwm-corpus-q2",
            "--encoder",
            "w8",
            "--predictor",
            "w8",
        ]),
        "/nope",
    );
    for (extra, needle) in [
        (&["--batch", "0"][..], "--batch"),
        (&["--iters", "0"], "--iters"),
        (&["--graph", "decoder"], "--graph"),
        (&["--threads", "0"], "--threads"),
        (&["--backend", "cuda"], "--backend"),
        (&["--model", "/nope"], "/nope"),
        (&["--json", "/etc/hostname/b.json"], "/etc/hostname/b.json"),
    ] {
        let mut v = s(&["bench", "--batch", "2", "--iters", "1", "--warmup", "0"]);
        if !extra.contains(&"--model") {
            v.extend(s(&["--model", &tiny]));
        }
        v.extend(s(extra));
        add(&format!("bench {extra:?}"), v, needle);
    }
    add("inspect missing", s(&["inspect", "/nope"]), "/nope");
    add("no command", s(&[]), "Usage");
    add("unknown command", s(&["train"]), "train");
    cases
}

fn check(cases: Vec<Case>, min: usize, group: &str) {
    assert!(cases.len() >= min, "{group}: only {} cases", cases.len());
    let mut failures = vec![];
    for c in &cases {
        let (ok, err) = run(&c.args);
        if err.contains("panicked") {
            failures.push(format!("{}: panicked: {err}", c.what));
        } else if ok {
            failures.push(format!("{}: exited 0", c.what));
        } else if !err.contains(&c.needle) {
            failures.push(format!(
                "{}: message does not name '{}': {err}",
                c.what, c.needle
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{group}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_of_bad_manifests() {
    check(manifest_cases(), 90, "manifests");
}

#[test]
fn corpus_of_bad_graph_files() {
    check(onnx_cases(), 50, "graphs");
}

#[test]
fn corpus_of_bad_flags_and_paths() {
    check(flag_cases(), 60, "flags");
}

/// Random bit flips with the hash updated reach the ONNX parser and the runtime: a flip may
/// leave a valid graph (then it runs), but nothing may panic or hang.
#[test]
fn bit_flips_past_the_hash_never_panic() {
    let mut n = 0;
    for role in ["encoder", "predictor"] {
        let orig = std::fs::read(tiny_h3().join(format!("{role}.onnx"))).unwrap();
        for k in 0..25usize {
            let pos = (k * 7919 + 13) % orig.len();
            let mut bytes = orig.clone();
            bytes[pos] ^= 0xff;
            let d = copy_bundle(&tiny_h3());
            replace_graph(d.path(), role, &bytes);
            let (_, err) = run(&plan_args(d.path()));
            assert!(!err.contains("panicked"), "{role} flip at {pos}: {err}");
            n += 1;
        }
    }
    assert_eq!(n, 50);
}

/// Issue 23's classes as generated families: impossible initializers in both graphs (every
/// engine load must name the tensor), malformed fixture files for `verify` (named), and the
/// flags of `qwm serve`.
fn impossible_tensor_cases() -> Vec<Case> {
    use tract_onnx::pb::tensor_proto::DataType;
    let mut cases = vec![];
    type Edit = fn(&mut pb::TensorProto) -> bool;
    let edits: [(&str, Edit); 5] = [
        ("dims that cannot exist", |t| {
            t.dims = vec![1 << 32, 1 << 32];
            true
        }),
        ("a negative dim", |t| {
            t.dims = vec![-1];
            true
        }),
        ("STRING type", |t| {
            t.data_type = DataType::String as i32;
            true
        }),
        ("an unknown type", |t| {
            t.data_type = 99;
            true
        }),
        ("raw bytes short of its dims", |t| {
            if t.raw_data.len() < 8 {
                return false;
            }
            t.raw_data.truncate(t.raw_data.len() - 4);
            true
        }),
    ];
    for role in ["encoder", "predictor"] {
        let file = format!("{role}.onnx");
        let orig =
            pb::ModelProto::decode(&std::fs::read(tiny_h3().join(&file)).unwrap()[..]).unwrap();
        let names: Vec<String> = orig
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .filter(|t| !t.dims.is_empty() && t.raw_data.len() >= 8)
            .take(8)
            .map(|t| t.name.clone())
            .collect();
        for name in &names {
            for (label, edit) in edits {
                let mut m = orig.clone();
                let t = m
                    .graph
                    .as_mut()
                    .unwrap()
                    .initializer
                    .iter_mut()
                    .find(|t| &t.name == name)
                    .unwrap();
                if !edit(t) {
                    continue;
                }
                let bytes = m.encode_to_vec();
                cases.push(bundle_case(
                    format!("{file}: initializer {name} with {label}"),
                    &format!("initializer '{name}'"),
                    move |d| replace_graph(d, role, &bytes),
                ));
            }
        }
    }
    cases
}

fn npy_bytes(descr: &str, shape: &str, data: usize, version: u8) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({shape}), }}");
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY".to_vec();
    b.extend([version, 0]);
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend(vec![0u8; data]);
    b
}

fn fixture_cases() -> Vec<Case> {
    let mut cases = vec![];
    let fixtures: Vec<String> = std::fs::read_dir(tiny_h3().join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    type Make = fn() -> Vec<u8>;
    let bad: [(&str, Make); 6] = [
        ("declares 4e9 rows", || {
            npy_bytes("<f4", "4000000000, 3", 64, 1)
        }),
        ("declares 2^62 x 2^62", || {
            npy_bytes("<f4", "4611686018427387904, 4611686018427387904", 64, 1)
        }),
        ("holds half its data", || npy_bytes("<f4", "4, 8", 64, 1)),
        ("has a bad magic", || {
            b"\x93NUMPX\x01\x00\x10\x00{}".to_vec()
        }),
        ("is version 9", || npy_bytes("<f4", "2", 8, 9)),
        ("is float64", || npy_bytes("<f8", "2, 2", 32, 1)),
    ];
    for f in &fixtures {
        for (label, bytes) in bad {
            let d = copy_bundle(&tiny_h3());
            let fx = d.path().join("fixtures");
            std::fs::create_dir_all(&fx).unwrap();
            for g in &fixtures {
                std::fs::copy(tiny_h3().join("fixtures").join(g), fx.join(g)).unwrap();
            }
            std::fs::write(fx.join(f), bytes()).unwrap();
            cases.push(Case {
                what: format!("fixture {f} {label}"),
                args: s(&["verify", "--model", d.path().to_str().unwrap()]),
                needle: f.trim_end_matches(".npy").to_string(),
                _dir: Some(d),
            });
        }
    }
    cases
}

fn serve_flag_cases() -> Vec<Case> {
    let mut cases = vec![];
    let sock = |d: &tempfile::TempDir| format!("unix:{}", d.path().join("s.sock").display());
    for listen in [
        "udp:1",
        "unix:",
        "tcp:nohost",
        "tcp:999.1.1.1:5",
        "",
        "stdio:x",
    ] {
        cases.push(Case {
            what: format!("serve --listen '{listen}'"),
            args: s(&["serve", "--threads", "1", "--listen", listen]),
            needle: "--listen".into(),
            _dir: None,
        });
    }
    for v in ["0", "-1", "5G", "abc", "1e99"] {
        let d = tempfile::tempdir().unwrap();
        cases.push(Case {
            what: format!("serve --max-frame-bytes {v}"),
            args: s(&["serve", "--listen", &sock(&d), "--max-frame-bytes", v]),
            needle: "--max-frame-bytes".into(),
            _dir: Some(d),
        });
    }
    for v in ["0", "-1", "nan", "inf", "1e9", "x"] {
        let d = tempfile::tempdir().unwrap();
        cases.push(Case {
            what: format!("serve --io-timeout {v}"),
            args: s(&["serve", "--listen", &sock(&d), "--io-timeout", v]),
            needle: "--io-timeout".into(),
            _dir: Some(d),
        });
    }
    cases
}

#[test]
fn corpus_of_impossible_tensors_fixtures_and_serve_flags() {
    let mut cases = impossible_tensor_cases();
    let tensors = cases.len();
    cases.extend(fixture_cases());
    cases.extend(serve_flag_cases());
    assert!(tensors >= 50, "only {tensors} initializer cases");
    check(cases, 150, "tensors, fixtures, serve flags");
}
