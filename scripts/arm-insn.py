#!/usr/bin/env python3
"""Executed aarch64 instructions per predictor and encoder call, under qemu, per kernel variant.

    scripts/arm-insn.py [--qwm target/release/qwm]
                        [--arm target/xc/aarch64-unknown-linux-gnu/release/qwm]
                        [--cpus cortex-a76,cortex-a53] [--out results/arm_insn.json]

Emulated time says nothing about a board; executed instructions do, as a ratio between two
kernels doing similar (SIMD) work (../shared/tools/arm-insn/README.md). For each CPU and each
(bundle, variant) this runs the aarch64 `qwm bench` under `qemu-aarch64 -cpu CPU` with the
insn_count plugin twice, with 2 and 1 timed calls (encoder: 11 and 1, divided by 10) and no
warm-up, and takes the difference: one call, loading removed. Bundles: models/wall (float) and its w8a8 and w4-g128 (accuracy level
4, int8 activations: the 4-bit path on qwm's int8 kernel) deploy forms, written with the host qwm.
Variants: qwm's kernels as the CPU selects them (`QWM_ISA=native`: sdot on cortex-a76,
smull/sadalp on cortex-a53), each lower one (`neon`, `portable`), and tract's own int8 lowering
(`QWM_TRACT_INT8=tract`). Predictor batch 30 (CEM candidates per call), encoder batch 1, 1 thread.
Every run sees the emulated CPU described as a board's Linux describes it (`board_cpu` below), so
tract picks the float kernels it would pick on that board; on cortex-a53 the float row is also
counted without the description ("float, generic kernels"), as earlier measurements were.
"""

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "qemu-cpu"))
import board  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
COUNT = os.path.join(ROOT, "..", "shared", "tools", "arm-insn", "count.sh")

ap = argparse.ArgumentParser()
ap.add_argument("--qwm", default="target/release/qwm")
ap.add_argument("--arm", default="target/xc/aarch64-unknown-linux-gnu/release/qwm")
ap.add_argument("--cpus", default="cortex-a76,cortex-a53")
ap.add_argument("--work", default="data/arm_insn")
ap.add_argument("--full", action="store_true",
                help="also the full-size bundles of scripts/bench-isa.sh (data/bench_isa), predictor batch 4")
ap.add_argument("--out", default="results/arm_insn.json")
a = ap.parse_args()
os.chdir(ROOT)

bundles = {"float": "models/wall"}
for name, scheme, extra in [("w8a8 deploy", "w8a8", []),
                            ("w4-g128 deploy (acc 4)", "w4-g128", ["--accuracy-level", "4"])]:
    out = os.path.join(a.work, scheme)
    if not os.path.exists(os.path.join(out, "manifest.json")):
        subprocess.run([a.qwm, "quantize", "--model", "models/wall", "--out", out, "--encoder", scheme,
                        "--predictor", scheme, "--form", "deploy", "--calib-episodes", "4"] + extra,
                       check=True, stdout=subprocess.DEVNULL)
    bundles[name] = out


def board_cpu(cpu):
    """qemu -E options describing `cpu` to the guest (scripts/qemu-cpu/board.py says why)."""
    return board.qemu_options(cpu, os.path.join(a.work, "cpu"))


def count(cpu, env, bundle, graph, iters, batch=None, describe=True):
    batch = batch or ("30" if graph == "predictor" else "1")
    cmd = [COUNT] + (board_cpu(cpu) if describe else []) + [a.arm, "bench", "--model", bundle, "--graph", graph, "--batch", batch, "--iters", str(iters), "--warmup", "0", "--threads", "1"]
    e = dict(os.environ, QEMU_CPU=cpu, **env)
    r = subprocess.run(cmd, capture_output=True, text=True, env=e)
    text = r.stdout + r.stderr
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} ({env}, {cpu}) failed:\n{text[-2000:]}")
    got = {}
    for key, pat in [("insns", r"insn_count instructions: (\d+)"),
                     ("dot", r"insn_count int8 dot products[^:]*: (\d+)"),
                     ("simd", r"insn_count other FP/SIMD: (\d+)")]:
        m = re.search(pat, text)
        if not m:
            sys.exit(f"no '{key}' count in the output of {' '.join(cmd)}:\n{text[-2000:]}")
        got[key] = int(m.group(1))
    return got


rows = []
for cpu in a.cpus.split(","):
    variants = [("qwm native", {"QWM_ISA": "native"}), ("qwm neon", {"QWM_ISA": "neon"}),
                ("qwm portable", {"QWM_ISA": "portable"}), ("tract lowering", {"QWM_TRACT_INT8": "tract"})]
    for bname, bundle in bundles.items():
        fl = [("float", {})]
        if cpu == "cortex-a53":
            # What the counts were before the CPU was described to the guest: tract's generic
            # float kernels, which an A53 board would not run.
            fl.append(("float, generic kernels", {}))
        for vname, env in (variants if bname != "float" else fl):
            if cpu == "cortex-a53" and vname == "qwm neon":
                continue  # native is neon there
            if bname.startswith("w4") and vname == "tract lowering":
                continue  # QWM_TRACT_INT8 switches only the w8a8 chains; 4-bit always runs on qwm
            for graph in ["predictor", "encoder"]:
                # Encoder calls (one frame) are small: average 10 of them.
                hi = 2 if graph == "predictor" else 11
                describe = vname != "float, generic kernels"
                two = count(cpu, env, bundle, graph, hi, describe=describe)
                one = count(cpu, env, bundle, graph, 1, describe=describe)
                per = {k: (two[k] - one[k]) // (hi - 1) for k in two}
                row = {"cpu": cpu, "bundle": bname, "variant": vname, "graph": graph, **per}
                rows.append(row)
                print(f"{cpu} {bname:>22} {vname:>14} {graph:>9}: {per['insns'] / 1e6:8.1f} M insns, "
                      f"{per['dot'] / 1e6:6.2f} M dot", flush=True)

if a.full:
    # The full-size DINO-WM-shaped bundles (random weights) at predictor batch 4: float, w8a8 and
    # w4-g128 (accuracy level 4) deploy forms.
    full = {"full float": "data/bench_isa/float", "full w8a8 deploy": "data/bench_isa/w8a8",
            "full w4-g128 deploy (acc 4)": "data/bench_isa/w4g128"}
    for p in full.values():
        if not os.path.exists(os.path.join(p, "manifest.json")):
            sys.exit(f"{p} is missing: run scripts/bench-isa.sh first")
    for cpu in a.cpus.split(","):
        for bname, bundle in full.items():
            vs = [("float", {})] if "float" in bname else [("qwm native", {"QWM_ISA": "native"})]
            if "w8a8" in bname:
                vs.append(("tract lowering", {"QWM_TRACT_INT8": "tract"}))
            for vname, env in vs:
                two = count(cpu, env, bundle, "predictor", 2, "4")
                one = count(cpu, env, bundle, "predictor", 1, "4")
                per = {k: two[k] - one[k] for k in two}
                rows.append({"cpu": cpu, "bundle": bname, "variant": vname, "graph": "predictor", **per})
                print(f"{cpu} {bname:>28} {vname:>14} predictor (batch 4): {per['insns'] / 1e6:9.1f} M insns, "
                      f"{per['dot'] / 1e6:7.2f} M dot", flush=True)

os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
with open(a.out, "w") as f:
    json.dump({"method": "insn_count plugin, qwm bench --iters 2 minus --iters 1 (encoder: 11 minus 1, over 10), predictor batch 30, encoder batch 1, 1 thread, the emulated CPU described to the guest (scripts/qemu-cpu/cpu_shim.c)",
               "rows": rows}, f, indent=2)
    f.write("\n")
print(f"wrote {a.out}")
