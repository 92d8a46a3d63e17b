#!/usr/bin/env python3
"""Objective distortion of whole-model weight quantization per method, on `qwm fit`'s probe.

    scripts/fit-methods.py [QWM_BINARY] [--model models/wall] [--schemes w4,w3]
                           [--methods rtn,omse,gptq,omniquant] [--out results/fit_methods.json]

Runs `qwm fit --method M --options SCHEMES --episodes 0` once per method (the probe: 8 calibration
situations x 64 seeded candidate action sequences, DINO-WM's objective; distortion
`sum (J_q - J)^2 / sum J^2` against the float model, and the mean Spearman rank correlation of the
candidates' objectives) and collects every uniform scheme's line from each fit.json into one
results file. The README's table of methods comes from it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("qwm", nargs="?", default="target/release/qwm")
ap.add_argument("--model", default="models/wall")
ap.add_argument("--schemes", default="w4,w3")
ap.add_argument("--methods", default="rtn,omse,gptq,omniquant")
ap.add_argument("--threads", default="1")
ap.add_argument("--out", default="results/fit_methods.json")
a = ap.parse_args()

rows = []
with tempfile.TemporaryDirectory() as tmp:
    for m in a.methods.split(","):
        out = os.path.join(tmp, m)
        # A budget below the float model's weights, so that fit writes its bundle and fit.json.
        cmd = [a.qwm, "fit", "--model", a.model, "--mem-limit", "500K", "--options", a.schemes,
               "--method", m, "--out", out, "--episodes", "0", "--threads", a.threads]
        print(" ".join(cmd), file=sys.stderr)
        r = subprocess.run(cmd, capture_output=True, text=True)
        fit_json = os.path.join(out, "fit.json")
        if not os.path.exists(fit_json):
            sys.exit(f"qwm fit --method {m} wrote no fit.json:\n{r.stdout}\n{r.stderr}")
        with open(fit_json) as f:
            fit = json.load(f)
        for u in fit["analysis"]["uniform"]:
            rows.append({
                "method": m,
                "scheme": u["name"].removeprefix("uniform "),
                "weight_bytes": u["bytes"],
                "distortion": u["distortion"],
                "rank_correlation": u["rank_correlation"],
            })
result = {"model": a.model, "probe": fit["probe"], "rows": rows}
os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
with open(a.out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
for r in rows:
    print(f"{r['method']:>6} {r['scheme']:>8} distortion {r['distortion']:.3e} rank {r['rank_correlation']:.4f}")
print(f"wrote {a.out}")
