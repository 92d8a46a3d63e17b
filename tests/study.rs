//! `qwm study` and `qwm report` end to end on the shipped Wall model with a tiny planner budget:
//! results, resume (after more episodes are asked for, and after a kill), sharding + merge, the
//! report's files, and bad configurations.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn qwm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_qwm")
}

fn qwm(args: &[&str]) -> (bool, String, String) {
    common::run_qwm(args)
}

/// A 2 x 2-cell study (float, W4-g32 on both modules) x (1, 2 opt steps) with 20 CEM samples.
fn write_config(dir: &Path, episodes: usize) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            r#"model = "{}"
episodes = {episodes}
threads = 1
calib_episodes = 1
[planner]
samples = 20
topk = 4
horizon = 2
n_taken = 2
[[grid]]
name = "bits"
schemes = ["float", "w4-g32"]
opt_steps = [1, 2]
max_iter = [1]
"#,
            common::wall().display()
        ),
    )
    .unwrap();
    path
}

/// Cell results without the fields that depend on timing or process memory.
fn outcomes(files: &[PathBuf]) -> Vec<serde_json::Value> {
    let cells = qwm::study::read_results(files).unwrap();
    cells
        .into_iter()
        .map(|c| {
            let mut v = serde_json::to_value(&c).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in ["plan_time_p50_s", "peak_rss_bytes"] {
                o.remove(k);
            }
            v
        })
        .collect()
}

#[test]
fn study_runs_resumes_shards_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), 2);
    let cfg_s = cfg.to_str().unwrap();
    let out = tmp.path().join("full");
    let out_s = out.to_str().unwrap();

    // 1 episode per cell first, then 2: the cells continue their episodes (plan --resume).
    let (ok, stdout, stderr) = qwm(&[
        "study",
        "--config",
        cfg_s,
        "--out",
        out_s,
        "--episodes",
        "1",
        "--no-report",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("4 of 4 cells finished now"), "{stdout}");
    let (ok, stdout, stderr) = qwm(&["study", "--config", cfg_s, "--out", out_s]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("4 of 4 cells finished now"), "{stdout}");
    let full = outcomes(&[out.join("results.jsonl")]);
    assert_eq!(full.len(), 4);
    for c in &full {
        assert_eq!(c["episodes"], 2, "{c}");
        assert_eq!(c["per_episode"].as_array().unwrap().len(), 2);
        let rate = c["success_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate));
        assert!(c["mean_final_distance"].as_f64().unwrap().is_finite());
    }
    let ids: Vec<&str> = full.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "float-o1-i1-s0",
            "float-o2-i1-s0",
            "rtn-both-w4-g32-o1-i1-s0",
            "rtn-both-w4-g32-o2-i1-s0"
        ]
    );
    // Quantized weights are smaller than float, and the file records it.
    assert!(full[2]["weight_bytes_at_bits"].as_u64() < full[0]["weight_bytes_at_bits"].as_u64());
    // The extension reused the first episode: each cell's report has 2 episodes, the first equal
    // to the 1-episode run's.
    let (ok, stdout, _) = qwm(&["study", "--config", cfg_s, "--out", out_s]);
    assert!(ok);
    assert!(
        stdout.contains("0 of 4 cells finished now, 4 earlier"),
        "{stdout}"
    );

    // The report: markdown with every cell, and plots in both formats.
    let report = out.join("report");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for id in &ids {
        assert!(md.contains(id), "{id} missing from report.md");
    }
    for stem in [
        "success_vs_bits",
        "objective_vs_distance",
        "success_vs_opt_steps",
        "success_vs_memory",
    ] {
        let png = std::fs::read(report.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..4], b"\x89PNG", "{stem}.png");
        let svg = std::fs::read_to_string(report.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text"), "{stem}.svg");
    }

    // Two shards into another folder give the same cells and the same episodes; report merges.
    let sharded = tmp.path().join("sharded");
    let sh_s = sharded.to_str().unwrap();
    for k in ["0/2", "1/2"] {
        let (ok, stdout, stderr) = qwm(&["study", "--config", cfg_s, "--out", sh_s, "--shard", k]);
        assert!(ok, "{stdout}\n{stderr}");
        assert!(stdout.contains("2 of 2 cells finished now"), "{stdout}");
    }
    let files = qwm::study::results_files(&sharded).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(
        outcomes(&files),
        full,
        "sharded study differs from the single run"
    );
    let merged = tmp.path().join("merged");
    let (ok, stdout, stderr) = qwm(&["report", sh_s, "--out", merged.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("4 cells from 2 file(s)"), "{stdout}");
    assert!(merged.join("success_vs_memory.png").exists());

    // Other shared settings into the same folder are refused, naming the file.
    let (ok, _, stderr) = qwm(&["study", "--config", cfg_s, "--out", out_s, "--threads", "2"]);
    assert!(!ok);
    assert!(stderr.contains("study.json"), "{stderr}");
}

#[test]
#[cfg(unix)]
fn killed_study_resumes_to_the_same_results() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), 3);
    let cfg_s = cfg.to_str().unwrap();
    let whole = tmp.path().join("whole");
    let (ok, stdout, stderr) = qwm(&[
        "study",
        "--config",
        cfg_s,
        "--out",
        whole.to_str().unwrap(),
        "--no-report",
    ]);
    assert!(ok, "{stdout}\n{stderr}");

    // Kill the study (and its cell process, as Ctrl-C does to the process group) once the first
    // cell has finished, then run the same command again.
    let out = tmp.path().join("killed");
    let mut child = Command::new(qwm_bin())
        .args([
            "study",
            "--config",
            cfg_s,
            "--out",
            out.to_str().unwrap(),
            "--no-report",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let results = out.join("results.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&results)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 1
    {
        assert!(t0.elapsed().as_secs() < 300, "study made no progress");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    let (ok, stdout, stderr) = qwm(&[
        "study",
        "--config",
        cfg_s,
        "--out",
        out.to_str().unwrap(),
        "--no-report",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(
        outcomes(&[results]),
        outcomes(&[whole.join("results.jsonl")]),
        "resumed study differs from the uninterrupted one"
    );
}

#[test]
fn bad_study_input_fails_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            write("scheme.toml", "model='m'\n[[grid]]\nschemes=['w5']\n"),
            "w5",
        ),
        (
            write(
                "field.toml",
                "model='m'\nepisodes=2\nbogus=1\n[[grid]]\nschemes=['w4']\n",
            ),
            "bogus",
        ),
        (write("nogrid.toml", "model='m'\n"), "grid"),
        (write("syntax.toml", "model = \n"), "syntax.toml"),
        (
            write(
                "model.toml",
                "model='/nonexistent/bundle'\n[[grid]]\nschemes=['w4']\n",
            ),
            "/nonexistent/bundle",
        ),
    ];
    for (path, needle) in &cases {
        let (ok, _, stderr) = qwm(&[
            "study",
            "--config",
            path.to_str().unwrap(),
            "--out",
            tmp.path().join("o").to_str().unwrap(),
        ]);
        assert!(!ok, "{} was accepted", path.display());
        assert!(stderr.contains(needle), "{}: {stderr}", path.display());
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let good = write_config(tmp.path(), 1);
    for (flags, needle) in [
        (vec!["--shard", "2/2"], "--shard"),
        (vec!["--jobs", "0"], "--jobs"),
        (vec!["--backend", "cuda"], "cuda"),
        (vec!["--episodes", "0"], "--episodes"),
    ] {
        let mut args = vec![
            "study",
            "--config",
            good.to_str().unwrap(),
            "--out",
            "/tmp/never-written-qwm",
        ];
        args.extend(flags);
        let (ok, _, stderr) = qwm(&args);
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let (ok, _, stderr) = qwm(&["study", "--config", "/nonexistent.toml"]);
    assert!(!ok && stderr.contains("/nonexistent.toml"), "{stderr}");
    let (ok, _, stderr) = qwm(&[
        "report",
        "/nonexistent/results.jsonl",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("/nonexistent/results.jsonl"),
        "{stderr}"
    );
    // A device instead of a results file: refused at once (reading /dev/zero would never end).
    if Path::new("/dev/zero").exists() {
        let (ok, _, stderr) = qwm(&[
            "report",
            "/dev/zero",
            "--out",
            tmp.path().join("z").to_str().unwrap(),
        ]);
        assert!(!ok && stderr.contains("not a regular file"), "{stderr}");
    }
    let garbage = write("results.jsonl", "{\"id\": 1}\nnot json\n");
    let (ok, _, stderr) = qwm(&[
        "report",
        garbage.to_str().unwrap(),
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("line 1"), "{stderr}");
}

/// A full disk while appending results is reported (the cell is listed as failed, the run exits
/// non-zero, the message says why), not ignored; the same command resumes once there is space.
#[test]
#[cfg(target_os = "linux")]
fn full_disk_is_reported_and_the_study_resumes() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), 1);
    let out = tmp.path().join("full");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("results.jsonl")).unwrap();
    let args = [
        "study",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-report",
    ];
    let (ok, stdout, stderr) = qwm(&args);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("No space left on device"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("cells failed"), "{stderr}");
    // Space again: the rerun finishes every cell from the plan reports already on disk.
    std::fs::remove_file(out.join("results.jsonl")).unwrap();
    let (ok, stdout, stderr) = qwm(&args);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(
        qwm::study::read_results(&[out.join("results.jsonl")])
            .unwrap()
            .len(),
        4
    );
}

/// The PointMaze and PushT models run through quantize, plan and study as Wall does: a 2-cell
/// study (float, W8 on both modules) of one episode each, with a tiny planner budget.
#[test]
fn study_runs_on_the_pointmaze_and_pusht_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for env in ["pointmaze", "pusht"] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join(format!("{env}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"model = "{}"
episodes = 1
threads = 1
calib_episodes = 1
[planner]
samples = 16
topk = 4
horizon = 2
n_taken = 2
[[grid]]
name = "bits"
schemes = ["float", "w8"]
opt_steps = [1]
max_iter = [1]
"#,
                root.join("models").join(env).display()
            ),
        )
        .unwrap();
        let out = tmp.path().join("out");
        let (ok, stdout, stderr) = qwm(&[
            "study",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{env}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("2 of 2 cells finished now"),
            "{env}: {stdout}"
        );
        let cells = outcomes(&[out.join("results.jsonl")]);
        assert_eq!(cells.len(), 2, "{env}");
        for c in &cells {
            assert_eq!(c["episodes"], 1, "{env}: {c}");
            assert!(
                c["mean_final_distance"].as_f64().unwrap().is_finite(),
                "{env}: {c}"
            );
        }
        // The W8 cell's bundle really is quantized.
        let w8 = cells
            .iter()
            .find(|c| c["scheme"] == "w8")
            .unwrap_or_else(|| panic!("{env}: no w8 cell in {cells:?}"));
        assert_eq!(w8["weight_bits"], 8, "{env}: {w8}");
        assert!(
            w8["weight_bytes_at_bits"].as_u64().unwrap()
                < w8["weight_bytes_float"].as_u64().unwrap(),
            "{env}: {w8}"
        );
    }
}
