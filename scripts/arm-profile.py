#!/usr/bin/env python3
"""Where an aarch64 qwm's executed instructions go, per function, under qemu (no board needed).

    scripts/arm-profile.py --model BUNDLE [--graph predictor|encoder] [--batch 30] [--cpu cortex-a76]
                           [--arm target/xc/aarch64-unknown-linux-gnu/release/qwm] [--top 30]
                           [--env NAME=VALUE ...] [--json OUT]

Runs `qwm bench` (1 thread, no warm-up) under `qemu-aarch64 -cpu CPU` with the insn_profile plugin
(scripts/arm-profile/insn_profile.c: executed instructions per translated block) twice, with 3 and
2 timed calls (the emulated CPU described to the guest as a board's Linux does:
scripts/qemu-cpu/board.py), and folds the difference into the binary's functions with its symbol table
(aarch64-linux-gnu-nm): one call's instructions per function, loading and the first call's one-off work removed. Functions are
grouped by the crate their symbol names (qwm, tract_linalg, tract_core, matrixmultiply, libc, ...),
so a table shows which layer a call's cost sits in. The binary must keep its symbols (the release
build does; the dist build is stripped). Counts are instructions, not time: see
../shared/tools/arm-insn/README.md for what they do and do not say.
"""

import argparse
import bisect
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "qemu-cpu"))
import board  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
# qemu-user maps a position-independent aarch64 executable at this address (ELF_ET_DYN_BASE of
# qemu's linux-user for 64-bit guests); checked below against the blocks' addresses.
PIE_BASE = 0x5500000000


def plugin():
    src = os.path.join(HERE, "arm-profile", "insn_profile.c")
    so = os.path.join(tempfile.gettempdir(), "qwm-insn-profile.so")
    if not os.path.exists(so) or os.path.getmtime(so) < os.path.getmtime(src):
        subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O2", "-o", so, src], check=True)
    return so


def symbols(binary):
    out = subprocess.run(["aarch64-linux-gnu-nm", "-n", "--defined-only", "-C", binary],
                         capture_output=True, text=True, check=True).stdout
    addrs, names = [], []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    if not addrs:
        sys.exit(f"{binary}: no function symbols (a stripped binary? use the release build)")
    return addrs, names


def run(a, so, iters):
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as log:
        cmd = ["qemu-aarch64", "-cpu", a.cpu, "-plugin", so, "-d", "plugin", "-D", log.name]
        cmd += board.qemu_options(a.cpu, os.path.join("data", "arm_insn", "cpu"))
        for e in a.env:
            cmd += ["-E", e]
        cmd += [a.arm, "bench", "--model", a.model, "--graph", a.graph, "--batch", str(a.batch),
                "--iters", str(iters), "--warmup", "0", "--threads", "1"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-2000:]}")
        blocks = collections.Counter()
        for line in log.read().splitlines():
            if line.startswith("insn_profile "):
                _, vaddr, insns, execs = line.split()
                blocks[int(vaddr, 16)] += int(insns) * int(execs)
        return blocks


def crate_of(name):
    m = re.match(r"^(?:<)?(?:&)?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)::", name)
    if m:
        return m.group(1)
    return "libc/other" if not name.startswith("_ZN") else "rust/other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--graph", default="predictor", choices=["predictor", "encoder"])
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--cpu", default="cortex-a76")
    ap.add_argument("--arm", default="target/xc/aarch64-unknown-linux-gnu/release/qwm")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the guest (qemu -E)")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.chdir(ROOT)
    so = plugin()
    addrs, names = symbols(a.arm)
    two, one = run(a, so, 3), run(a, so, 2)
    per_fn = collections.Counter()
    inside = outside = 0
    for vaddr in set(two) | set(one):
        n = two.get(vaddr, 0) - one.get(vaddr, 0)
        off = vaddr - PIE_BASE
        i = bisect.bisect_right(addrs, off) - 1
        if 0 <= off and i >= 0 and off - addrs[i] < 1 << 20:
            per_fn[names[i]] += n
            inside += abs(n)
        else:
            per_fn["(outside the binary: the C library, the loader)"] += n
            outside += abs(n)
    if inside < outside:
        sys.exit(f"most blocks fall outside {a.arm} at base {PIE_BASE:#x}: is it position-independent?")
    total = sum(per_fn.values())
    per_crate = collections.Counter()
    for name, n in per_fn.items():
        per_crate[crate_of(name)] += n
    print(f"{a.arm} bench --model {a.model} --graph {a.graph} --batch {a.batch} on qemu -cpu {a.cpu}"
          f"{' ' + ' '.join(a.env) if a.env else ''}: {total / 1e6:.1f} M instructions per call")
    print("\nby crate:")
    for c, n in per_crate.most_common():
        if abs(n) >= total * 0.001:
            print(f"  {n / 1e6:8.2f} M {100 * n / total:5.1f}%  {c}")
    print(f"\ntop {a.top} functions:")
    for name, n in per_fn.most_common(a.top):
        print(f"  {n / 1e6:8.2f} M {100 * n / total:5.1f}%  {name[:150]}")
    if a.json:
        # One file holds several profiles: this one replaces any of the same model, graph,
        # batch, CPU and environment.
        prof = {"model": a.model, "graph": a.graph, "batch": a.batch, "cpu": a.cpu, "env": a.env,
                "binary": a.arm, "insns_per_call": total, "crates": dict(per_crate.most_common()),
                "functions": [{"name": k, "insns": v} for k, v in per_fn.most_common(200)]}
        key = ("model", "graph", "batch", "cpu", "env")
        doc = {"method": "scripts/arm-profile.py: insn_profile plugin, qwm bench --iters 3 minus --iters 2, "
                         "1 thread, the emulated CPU described to the guest", "profiles": []}
        if os.path.exists(a.json):
            with open(a.json) as f:
                doc = json.load(f)
        doc["profiles"] = [p for p in doc["profiles"] if any(p[k] != prof[k] for k in key)] + [prof]
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
