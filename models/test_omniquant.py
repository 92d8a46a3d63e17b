#!/usr/bin/env python3
"""Tests of models/omniquant.py (OmniQuant's training step), run by CI after torch is installed.

1. The equivalent transformation is exact in float: with random (far from identity) LayerNorm
   scales and shifts and q-k scales folded in, the written ONNX graphs give the original graphs'
   outputs within 1e-5 (relative to the output's scale) on ONNX Runtime, for the shipped Wall
   model and for a miniature DINO-WM export (DINOv2 encoder, DINO-WM predictor).
2. The same after a (short) training run through the command line, which also writes clipping
   factors in (0, 1] for every Linear layer and block losses no worse than round-to-nearest.
3. The fake weight quantizer equals a float64 reference of qwm's semantics (signed symmetric,
   scale = clip * absmax / ((qmax - qmin) / 2), round half to even), and passes gradients to the
   clipping factors.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import omniquant as oq  # noqa: E402

BUNDLES = [os.path.join(ROOT, "models", "wall"), os.path.join(ROOT, "tests", "data", "dinowm_tiny")]
TOL = 1e-5


def graph_inputs(bundle, module, n, rng):
    with open(os.path.join(bundle, "manifest.json")) as f:
        spec = json.load(f)["graphs"][module]
    feeds = {}
    for i in spec["inputs"]:
        shape = [n if d < 0 else d for d in i["shape"]]
        feeds[i["name"]] = rng.standard_normal(shape).astype(np.float32)
    return spec["file"], feeds


def ort_outputs(path, feeds):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def worst_rel(a_list, b_list):
    worst = 0.0
    for a, b in zip(a_list, b_list):
        assert np.isfinite(a).all() and np.isfinite(b).all()
        worst = max(worst, float(np.abs(a - b).max() / max(1.0, np.abs(a).max())))
    return worst


def write_calib(bundle, folder, n, seed):
    rng = np.random.default_rng(seed)
    for module in ("encoder", "predictor"):
        _, feeds = graph_inputs(bundle, module, n, rng)
        for name, a in feeds.items():
            np.save(os.path.join(folder, f"{module}.{name}.npy"), a)


class Opts:
    let = True


def test_random_transforms_are_exact(bundle, tmp):
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for module in ("encoder", "predictor"):
        file, feeds = graph_inputs(bundle, module, 3, rng)
        path = os.path.join(bundle, file)
        mod = oq.Module(module, path, {"wbits": 4, "abits": 8, "group": None, "token": False}, Opts())
        assert mod.lets, f"{path}: no LayerNorm -> Linear transform found"
        chunks = [{k: torch.from_numpy(v) for k, v in feeds.items()}]
        stats = oq.collect_stats(mod, chunks)
        oq.probe_transforms(mod, stats, chunks)
        params = oq.initial_params(mod, stats, use_shift=True)
        qk = 0
        for k in list(params):
            if k[0] == "let_s":  # scales in [1/4, 4]
                params[k] = (torch.rand(params[k].shape, generator=gen) * 2 - 1) * 1.386
            elif k[0] == "let_d":
                params[k] = torch.randn(params[k].shape, generator=gen)
            elif k[0] == "qk":
                params[k] = torch.randn(params[k].shape, generator=gen)
                qk += 1
        assert qk > 0, f"{path}: no q-k transform found"
        out = os.path.join(tmp, f"{os.path.basename(bundle)}-{module}.onnx")
        oq.write_module(mod, params, out)
        a, b = ort_outputs(path, feeds), ort_outputs(out, feeds)
        err = worst_rel(a, b)
        assert err < TOL, f"{path}: transformed graph moves outputs by {err:.2e}"
        # And the transform is not the identity: LayerNorm weights did change.
        import onnx
        before = {t.name: t for t in onnx.load(path).graph.initializer}
        changed = sum(1 for t in onnx.load(out).graph.initializer
                      if t.name in before and t.raw_data != before[t.name].raw_data)
        assert changed > 0
        print(f"ok {os.path.basename(bundle)} {module}: random LET ({len(mod.lets)} LayerNorms, "
              f"{qk} q-k) exact to {err:.1e}")


def test_trained_run_is_exact_and_no_worse_than_rtn(bundle, tmp):
    calib = os.path.join(tmp, "calib-" + os.path.basename(bundle))
    out = os.path.join(tmp, "out-" + os.path.basename(bundle))
    os.makedirs(calib)
    write_calib(bundle, calib, 8, 1)
    r = subprocess.run([sys.executable, os.path.join(HERE, "omniquant.py"), "--model", bundle,
                        "--calib", calib, "--out", out, "--encoder", "w4", "--predictor", "w3-g16",
                        "--epochs", "2", "--batch", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "omniquant.json")) as f:
        res = json.load(f)
    rng = np.random.default_rng(5)
    for module in ("encoder", "predictor"):
        m = res["modules"][module]
        assert m["equivalence_error"] < 1e-9
        for blk in m["blocks"]:
            assert blk["loss_final"] <= blk["loss_rtn"], blk
        for node, l in m["layers"].items():
            c = np.array(l["clip"])
            assert c.size == l["groups"] * l["n"] and (c > 0).all() and (c <= 1).all(), node
        file, feeds = graph_inputs(bundle, module, 2, rng)
        err = worst_rel(ort_outputs(os.path.join(bundle, file), feeds),
                        ort_outputs(os.path.join(out, file), feeds))
        assert err < TOL, f"{module}: trained transform moves outputs by {err:.2e}"
        print(f"ok {os.path.basename(bundle)} {module}: trained, exact to {err:.1e}, "
              f"{sum(b['kept'] == 'omniquant' for b in m['blocks'])}/{len(m['blocks'])} blocks beat RTN")
    # Bad input is named.
    r = subprocess.run([sys.executable, os.path.join(HERE, "omniquant.py"), "--model", bundle,
                        "--calib", os.path.join(tmp, "nowhere"), "--out", out + "-2",
                        "--encoder", "w4"], capture_output=True, text=True)
    assert r.returncode == 2 and "nowhere" in r.stderr, r.stderr


def test_fake_quant_matches_a_float64_reference():
    rng = np.random.default_rng(3)
    for bits, group in [(4, None), (3, 8), (8, 16), (4, 7)]:
        k, n = 20, 5
        w = rng.standard_normal((k, n))
        rows = group or k
        groups = -(-k // rows)
        clip = rng.uniform(0.3, 1.0, (groups, n))
        got = oq.fake_quant_weight(torch.from_numpy(w), bits, group, torch.from_numpy(clip)).numpy()
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax - 1
        ref = np.zeros_like(w)
        for g in range(groups):
            blk = w[g * rows:(g + 1) * rows]
            scale = clip[g] * np.abs(blk).max(axis=0) / ((qmax - qmin) / 2)
            ref[g * rows:(g + 1) * rows] = np.clip(np.round(blk / scale), qmin, qmax) * scale
        assert np.abs(got - ref).max() < 1e-12, (bits, group)
    c = torch.full((1, 3), 2.0, requires_grad=True)
    w = torch.from_numpy(rng.standard_normal((16, 3)))
    oq.fake_quant_weight(w, 3, None, torch.sigmoid(c).double()).pow(2).sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    print("ok fake quantizer = float64 reference; gradients reach the clipping")


def main():
    torch.manual_seed(0)
    test_fake_quant_matches_a_float64_reference()
    with tempfile.TemporaryDirectory() as tmp:
        for b in BUNDLES:
            test_random_transforms_are_exact(b, tmp)
            test_trained_run_is_exact_and_no_worse_than_rtn(b, tmp)
    print("all OmniQuant tests passed")


if __name__ == "__main__":
    main()
