#!/usr/bin/env python3
"""Render README.md's generated blocks from results files, or check that they are current.

    python3 scripts/readme_numbers.py          # rewrite the blocks in README.md
    python3 scripts/readme_numbers.py --check  # exit 1 when a block differs from its results file

A block is the text between `<!-- qwm:NAME -->` and `<!-- /qwm:NAME -->`; NAME selects the
renderer below and the results file it reads. CI runs --check, so a number in such a block is never
typed by hand and never drifts from its results file.
"""

import json
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return json.load(f)


def fit_methods():
    """Objective distortion per weight quantizer (scripts/fit-methods.py)."""
    r = load("results/fit_methods.json")
    schemes = []
    for row in r["rows"]:
        if row["scheme"] not in schemes:
            schemes.append(row["scheme"])
    methods = []
    for row in r["rows"]:
        if row["method"] not in methods:
            methods.append(row["method"])
    cell = {(x["method"], x["scheme"]): x for x in r["rows"]}
    p = r["probe"]
    out = [
        f"Objective distortion on `qwm fit`'s probe ({r['model']}, {p['tasks']} situations x "
        f"{p['candidates']} candidates, horizon {p['horizon']}; lower is better; in brackets the "
        "mean rank correlation of the candidates' objectives with float's), from "
        "`results/fit_methods.json` (`scripts/fit-methods.py`):",
        "",
        "| method | " + " | ".join(schemes) + " |",
        "|---|" + "---|" * len(schemes),
    ]
    for m in methods:
        vals = []
        for s in schemes:
            x = cell.get((m, s))
            vals.append("-" if x is None else f"{x['distortion']:.2e} ({x['rank_correlation']:.3f})")
        out.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def arm_insn():
    """Executed aarch64 instructions per call under qemu (scripts/arm-insn.py)."""
    r = load("results/arm_insn.json")
    rows = r["rows"]
    cpus = []
    for x in rows:
        if x["cpu"] not in cpus:
            cpus.append(x["cpu"])
    keys = []
    # QWM_TRACT_INT8 switches only the w8a8 chains: a 4-bit "tract lowering" row (older runs
    # measured it) is qwm's kernel again.
    rows = [x for x in rows if not (x["bundle"].startswith("w4") and x["variant"] == "tract lowering")]
    for x in rows:
        k = (x["bundle"], x["variant"])
        if k not in keys:
            keys.append(k)
    cell = {(x["cpu"], x["bundle"], x["variant"], x["graph"]): x for x in rows}
    head = []
    for c in cpus:
        head += [f"{c} predictor", f"{c} encoder"]
    out = [
        "Executed instructions per call (millions; x = ratio to float on the same CPU and bundle; "
        "in brackets the `sdot` among them; `full` rows: the full-size DINO-WM-shaped bundle at "
        "predictor batch 4), from `results/arm_insn.json` (`scripts/arm-insn.py`: "
        + r["method"] + "):",
        "",
        "| bundle | kernels | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(head),
    ]
    for b, v in keys:
        vals = []
        for c in cpus:
            for g in ["predictor", "encoder"]:
                x = cell.get((c, b, v, g))
                fb = "full float" if b.startswith("full") else "float"
                f = cell.get((c, fb, "float", g))
                if x is None:
                    vals.append("-")
                    continue
                t = f"{x['insns'] / 1e6:.1f}"
                if f and not b.endswith("float"):
                    t += f" {x['insns'] / f['insns']:.2f}x"
                if x["dot"]:
                    t += f" ({x['dot'] / 1e6:.1f})"
                vals.append(t)
        out.append(f"| {b} | {v} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def bench_isa():
    """The full-size bundle's forms per x86 kernel variant (scripts/bench-isa.sh)."""
    runs = []
    for isa in ["portable", "avx2", "avx512"]:
        path = os.path.join(ROOT, "results", f"bench_isa_{isa}.json")
        if os.path.exists(path):
            runs.append((isa, load(f"results/bench_isa_{isa}.json")))
    cfg = runs[0][1][0]["predictor"]["config"]
    out = [
        "Full-size DINO-WM-shaped bundle on tract, 1 thread, predictor batch "
        f"{cfg['batch']} (candidates/s) and encoder batch 1 (frames/s); x = ratio to float within the "
        "same run; from `results/bench_isa_*.json` (`scripts/bench-isa.sh`, `QWM_ISA` per run):",
        "",
        "| form | " + " | ".join(f"{i} predictor | {i} encoder" for i, _ in runs) + " |",
        "|---|" + "---|---|" * len(runs),
    ]
    forms = [x["form"] for x in runs[0][1]]
    for i, form in enumerate(forms):
        vals = []
        for _, r in runs:
            x, f = r[i], r[0]
            for g in ["predictor", "encoder"]:
                v, fv = x[g]["items_per_s"], f[g]["items_per_s"]
                vals.append(f"{v:.2f} ({v / fv:.2f}x)")
        out.append(f"| {form} | " + " | ".join(vals) + " |")
    return "\n".join(out)


RENDER = {"fit_methods": fit_methods, "arm_insn": arm_insn, "bench_isa": bench_isa}


def main():
    check = "--check" in sys.argv[1:]
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    pat = re.compile(r"(<!-- qwm:(\w+) -->\n)(.*?)(<!-- /qwm:\2 -->)", re.S)
    stale = []

    def sub(m):
        name = m.group(2)
        if name not in RENDER:
            sys.exit(f"README.md: unknown generated block '{name}'")
        body = RENDER[name]() + "\n"
        if body != m.group(3):
            stale.append(name)
        return m.group(1) + body + m.group(4)

    new = pat.sub(sub, text)
    if check:
        if stale:
            sys.exit("README.md: generated blocks differ from their results files: "
                     + ", ".join(stale) + " (run python3 scripts/readme_numbers.py)")
        print("README.md: generated blocks are current")
        return
    with open(path, "w") as f:
        f.write(new)
    print("README.md: rendered " + (", ".join(stale) if stale else "nothing new"))


if __name__ == "__main__":
    main()
