//! `qwm fit` end to end on the tiny random bundle: the fitted bundle stays within the budget, its
//! manifest matches the allocation, the uniform baseline is the largest uniform scheme that fits,
//! both plan; bad budgets and options fail with messages naming the flag.

mod common;

fn qwm(args: &[&str]) -> (bool, String, String) {
    common::run_qwm(args)
}

#[test]
fn fit_writes_a_bundle_within_the_budget_and_checks_it_by_planning() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_h3();
    let out = tmp.path().join("fit");
    let common_args = [
        "fit",
        "--model",
        model.to_str().unwrap(),
        "--options",
        "w8,w4,w3",
        "--tasks",
        "2",
        "--candidates",
        "8",
        "--threads",
        "1",
    ];
    // Find the sizes first: a budget between uniform w4 and uniform w8.
    let mut args = common_args.to_vec();
    args.extend([
        "--mem-limit",
        "1G",
        "--out",
        out.to_str().unwrap(),
        "--episodes",
        "0",
    ]);
    let (ok, stdout, stderr) = qwm(&args);
    // With 1G every layer stays float: nothing to quantize, said clearly.
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("nothing to quantize"), "{stderr}");
    let size = |name: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {stdout}"));
        let kib: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        (kib * 1024.0) as u64
    };
    let (w8, w4, w3) = (size("uniform w8"), size("uniform w4"), size("uniform w3"));
    assert!(w3 < w4 && w4 < w8, "{stdout}");
    let budget = (w4 + w8) / 2;
    let mut args = common_args.to_vec();
    let b = budget.to_string();
    args.extend([
        "--mem-limit",
        &b,
        "--out",
        out.to_str().unwrap(),
        "--episodes",
        "1",
    ]);
    let (ok, stdout, stderr) = qwm(&args);
    assert!(ok, "{stdout}\n{stderr}");
    let fit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fit.json")).unwrap()).unwrap();
    let bytes = fit["allocation"]["bytes"].as_u64().unwrap();
    assert!(bytes <= budget, "{bytes} > {budget}");
    let m = fit["measured"]["distortion"].as_f64().unwrap();
    assert!(m.is_finite() && m >= 0.0);
    // The manifest's layers are the allocation's (float layers are absent).
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let options: Vec<String> = serde_json::from_value(fit["analysis"]["options"].clone()).unwrap();
    let mut want = 0;
    let mut packed = 0u64;
    for (l, c) in fit["analysis"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fit["allocation"]["choice"].as_array().unwrap())
    {
        let c = c.as_u64().unwrap() as usize;
        if options[c] != "float" {
            want += 1;
            packed += l["bytes"][c].as_u64().unwrap();
            let rec = manifest["quantization"][l["module"].as_str().unwrap()]["layers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["node"] == l["node"])
                .unwrap_or_else(|| panic!("{} not in the manifest", l["node"]));
            assert_eq!(
                rec["weight_bytes_packed"].as_u64().unwrap(),
                l["bytes"][c].as_u64().unwrap()
            );
        }
    }
    assert!(want > 0);
    let listed: usize = ["encoder", "predictor"]
        .iter()
        .map(|m| {
            manifest["quantization"][m]["layers"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(listed, want);
    assert!(packed > 0);
    // The baseline is uniform w4 (the largest that fits), and both were planned.
    let uniform = tmp.path().join("fit-uniform-w4");
    assert!(uniform.join("manifest.json").exists(), "{stdout}");
    assert!(out.join("plan.json").exists() && uniform.join("plan.json").exists());
    assert!(stdout.contains("fit check over 1 episodes"), "{stdout}");

    // Bad input.
    for (flags, needle) in [
        (vec!["--mem-limit", "10K"], "--mem-limit"),
        (vec!["--mem-limit", "lots"], "--mem-limit"),
        (vec!["--mem-limit", "1M", "--options", "w8a8"], "w8a8"),
        (vec!["--mem-limit", "1M", "--options", "w5"], "w5"),
    ] {
        let mut args = common_args.to_vec();
        args.retain(|a| !["--options", "w8,w4,w3"].contains(a));
        args.extend(flags.iter().copied());
        let bad = tmp.path().join("bad");
        args.extend(["--out", bad.to_str().unwrap()]);
        let (ok, _, stderr) = qwm(&args);
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `--method` picks the weight quantizer of every option: on the tiny bundle GPTQ's uniform w3
/// model distorts the objective less than RTN's, the fitted bundle records GPTQ on every layer,
/// and fit.json names the method.
#[test]
fn fit_method_gptq_distorts_less_than_rtn_and_writes_gptq_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_h3();
    let run = |method: &str, budget: &str, out: &std::path::Path| {
        qwm(&[
            "fit",
            "--model",
            model.to_str().unwrap(),
            "--options",
            "w4,w3",
            "--tasks",
            "2",
            "--candidates",
            "8",
            "--threads",
            "1",
            "--episodes",
            "0",
            "--method",
            method,
            "--mem-limit",
            budget,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let distortion = |stdout: &str, name: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {stdout}"));
        line.split_whitespace().nth(4).unwrap().parse().unwrap()
    };
    let (_, rtn, _) = run("rtn", "1G", &tmp.path().join("r"));
    let (_, gptq, _) = run("gptq", "1G", &tmp.path().join("g"));
    assert!(gptq.contains("Gptq"), "{gptq}");
    let (dr, dg) = (
        distortion(&rtn, "uniform w3"),
        distortion(&gptq, "uniform w3"),
    );
    assert!(dg < dr, "GPTQ {dg} RTN {dr}");
    // A budget of uniform w4: the fit writes a GPTQ bundle.
    let line = gptq
        .lines()
        .find(|l| l.trim_start().starts_with("uniform w4"))
        .unwrap();
    let kib: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let budget = ((kib * 1024.0) as u64).to_string();
    let out = tmp.path().join("fit");
    let (ok, stdout, stderr) = run("gptq", &budget, &out);
    assert!(ok, "{stdout}\n{stderr}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let mut n = 0;
    for module in ["encoder", "predictor"] {
        let rec = &m["quantization"][module];
        if let Some(layers) = rec["layers"].as_array() {
            assert_eq!(rec["method"], "gptq");
            for l in layers {
                assert!(l["gptq"]["output_error"].is_number(), "{l}");
                n += 1;
            }
        }
    }
    assert!(n > 0);
    let fit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fit.json")).unwrap()).unwrap();
    assert_eq!(fit["method"], "gptq");
}
