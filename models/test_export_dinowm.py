#!/usr/bin/env python3
"""Tests of the DINO-WM exporter (run by .ci/run; needs torch, onnx, onnxruntime, pyyaml):

    python models/test_export_dinowm.py [--full]

Builds miniature DINO-WM runs in DINO-WM's on-disk format (models/make_dinowm_ckpt.py), exports
them, and checks that parity holds (the exporter fails otherwise), that the bundle is what qwm
expects, and that bad input fails loudly with the file or key named. --full also round-trips the
full-size model (ViT-S/14 encoder, 19.9 M-parameter predictor; about a minute).
"""
import contextlib
import io
import json
import os
import sys
import tempfile

import numpy as np
import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_dinowm  # noqa: E402
import make_dinowm_ckpt  # noqa: E402


def run_export(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = export_dinowm.main(list(argv))
    return rc, err.getvalue()


def make(tmp, name, *extra):
    run = os.path.join(tmp, name)
    with contextlib.redirect_stdout(io.StringIO()):
        make_dinowm_ckpt.main(["--out", run, *extra])
    return run


def export_args(run, out, weights=True):
    a = ["--ckpt", run, "--stats", os.path.join(run, "stats.json"), "--out", out]
    enc = [f for f in os.listdir(run) if f.endswith(".pth")]
    if weights and enc:
        a += ["--dinov2-weights", os.path.join(run, enc[0])]
    return a


def check_bundle(out, n, d, h):
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    assert m["num_patches"] == n and m["visual_dim"] == d and m["num_hist"] == h, m
    assert m["proprio_tokens"] == n and m["proprio_emb_dim"] == 10
    assert m["pixel_mean"] == [0.5] * 3 and m["pixel_std"] == [0.5] * 3
    par = m["training"]["parity_onnxruntime_vs_torch"]
    assert set(par) >= {"encoder_visual", "predictor_next_visual", "rollout_next_visual"}
    for k, v in par.items():
        assert np.isfinite(v["rel_err"]) and v["rel_err"] <= v["tol"], (k, v)
    fx = os.path.join(out, "fixtures")
    assert np.load(os.path.join(fx, "rollout_action.npy")).shape[1] == 5
    assert np.load(os.path.join(fx, "rollout_visual.npy")).shape == (h, n, d)
    return m


def test_tiny_round_trips(tmp):
    for hist, extra in [(3, []), (1, []), (1, ["--train-encoder"])]:
        run = make(tmp, f"tiny_h{hist}{len(extra)}", "--preset", "tiny", "--num-hist", str(hist), *extra)
        out = os.path.join(tmp, f"bundle_h{hist}{len(extra)}")
        rc, err = run_export(*export_args(run, out))
        assert rc == 0, err
        check_bundle(out, 4, 48, hist)


def test_rollout_keeps_per_token_proprio(tmp):
    """DINO-WM's rollout feeds each token's predicted proprio channels back; tiling token 0's
    instead (a tempting simplification) changes the rollout, so the fixtures must tell them apart."""
    out = os.path.join(tmp, "bundle_h30")
    p = np.load(os.path.join(out, "fixtures", "rollout_next_proprio_emb.npy")).reshape(2, 4, 10)
    assert np.abs(p - p[:, :1]).max() > 1e-2


def test_errors_name_the_problem(tmp):
    run = make(tmp, "bad_base", "--preset", "tiny", "--num-hist", "1")
    out = os.path.join(tmp, "bad_out")
    cfg_path = os.path.join(run, "hydra.yaml")
    with open(cfg_path) as f:
        good = yaml.safe_load(f)

    def with_cfg(mutate):
        c = json.loads(json.dumps(good))
        mutate(c)
        with open(cfg_path, "w") as f:
            yaml.safe_dump(c, f)
        return run_export(*export_args(run, out))

    cases = [
        (lambda c: c["encoder"].update(_target_="models.resnet.ResNet"), "encoder._target_"),
        (lambda c: c.update(concat_dim=0), "concat_dim 0"),
        (lambda c: c["predictor"].update(depth=3), "'predictor'"),
        (lambda c: c.update(num_hist=2), "'predictor'"),
        (lambda c: c.pop("frameskip"), "missing config key 'frameskip'"),
        (lambda c: c["encoder"].update(feature_key="x_norm_clstoken"), "feature_key"),
        (lambda c: c.update(img_size="${img}"), "unresolved"),
    ]
    for mutate, needle in cases:
        rc, err = with_cfg(mutate)
        assert rc == 1 and needle in err, (needle, rc, err)
    with open(cfg_path, "w") as f:
        yaml.safe_dump(good, f)
    rc, err = run_export(*export_args(run, out, weights=False))
    assert rc == 1 and "--dinov2-weights" in err, err
    rc, err = run_export("--ckpt", run, "--out", out, "--dinov2-weights", os.path.join(run, "qwm_test_tiny14.pth"))
    assert rc == 1 and "--stats" in err, err
    stats = os.path.join(tmp, "bad_stats.json")
    with open(stats, "w") as f:
        json.dump({"action_mean": [0], "action_std": [1, 1], "proprio_mean": [0, 0], "proprio_std": [1, 1]}, f)
    rc, err = run_export("--ckpt", run, "--out", out, "--stats", stats,
                         "--dinov2-weights", os.path.join(run, "qwm_test_tiny14.pth"))
    assert rc == 1 and "'action_mean' must be a list of 2" in err, err
    # A checkpoint whose predictor is not DINO-WM's ViTPredictor, and one that is not a checkpoint.
    ck = os.path.join(run, "checkpoints", "model_latest.pth")
    payload = export_dinowm.load_checkpoint(ck)
    make_dinowm_ckpt.save_as_dinowm(
        {"epoch": 7, "predictor": make_dinowm_ckpt.VQVAE(), "action_encoder": payload["action_encoder"],
         "proprio_encoder": payload["proprio_encoder"]}, os.path.join(run, "checkpoints", "model_7.pth"))
    rc, err = run_export(*export_args(run, out), "--epoch", "7")
    assert rc == 1 and "'predictor' is a models.vqvae.VQVAE, not DINO-WM's ViTPredictor" in err, err
    with open(os.path.join(run, "checkpoints", "model_8.pth"), "wb") as f:
        f.write(b"not a checkpoint")
    rc, err = run_export(*export_args(run, out), "--epoch", "8")
    assert rc == 1 and "model_8.pth: cannot read the checkpoint" in err, err
    rc, err = run_export(*export_args(run, out), "--epoch", "9")
    assert rc == 1 and "model_9.pth: checkpoint not found" in err, err
    # The decoder (an unknown class) was read as an opaque stand-in, never executed.
    assert isinstance(payload["decoder"], export_dinowm.Opaque)
    assert payload["decoder"].qwm_class == "models.vqvae.VQVAE"


def test_refuses_code_in_checkpoints(tmp):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = os.path.join(tmp, "evil.pth")
    torch.save({"predictor": Evil()}, path)
    try:
        p = export_dinowm.load_checkpoint(path)
    except export_dinowm.ExportError:
        return
    # os.system resolved to an opaque stand-in: loading did not run it.
    assert isinstance(p["predictor"], export_dinowm.Opaque), p


def test_full_size(tmp):
    run = make(tmp, "full", "--preset", "full", "--num-hist", "1")
    out = os.path.join(tmp, "full_bundle")
    rc, err = run_export(*export_args(run, out))
    assert rc == 0, err
    m = check_bundle(out, 196, 384, 1)
    print("  full-size parity:", {k: f"{v['rel_err']:.1e}" for k, v in m["training"]["parity_onnxruntime_vs_torch"].items()})


def main():
    torch.set_num_threads(1)
    tests = [test_tiny_round_trips, test_rollout_keeps_per_token_proprio, test_errors_name_the_problem,
             test_refuses_code_in_checkpoints]
    if "--full" in sys.argv:
        tests.append(test_full_size)
    with tempfile.TemporaryDirectory() as tmp:
        for t in tests:
            t(tmp)
            print(f"ok {t.__name__}")
    print(f"{len(tests)} exporter tests passed")


if __name__ == "__main__":
    main()
