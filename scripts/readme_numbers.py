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


def short_fn(name):
    """A function's symbol without generic arguments, in its last path segments
    (`<T as Trait>::f` as `T::f`)."""
    m = re.match(r"^<([^<>]*?) as .*>::([A-Za-z0-9_{}:]+)$", name)
    if m:
        name = m.group(1) + "::" + m.group(2)
    depth, out = 0, []
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    parts = [x for x in "".join(out).split("::") if x]
    return "::".join(parts[-3:]) if parts else name


def arm_profile():
    """Executed aarch64 instructions per function (scripts/arm-profile.py)."""
    r = load("results/arm_profile.json")
    profs = r["profiles"]
    label = ["float" if p["model"].rstrip("/") == "models/wall" else os.path.basename(p["model"].rstrip("/")) + " deploy"
             for p in profs]
    totals = [p["insns_per_call"] for p in profs]
    names = []
    for p in profs:
        for f in p["functions"][:12]:
            if f["name"] not in names:
                names.append(f["name"])
    per = [{f["name"]: f["insns"] for f in p["functions"]} for p in profs]
    names.sort(key=lambda n: -max(d.get(n, 0) for d in per))
    head = [f"{lab} ({p['graph']}, batch {p['batch']}, {p['cpu']})" for lab, p in zip(label, profs)]
    out = [
        "Where one call's executed instructions go (millions, share of the call), from "
        "`results/arm_profile.json` (" + r["method"] + "); the rest of each call is spread over "
        "smaller functions:",
        "",
        "| function | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(profs),
        "| whole call | " + " | ".join(f"{t / 1e6:.1f}" for t in totals) + " |",
    ]
    for n in names:
        vals = []
        for d, t in zip(per, totals):
            v = d.get(n)
            vals.append("-" if v is None or v < 0.005 * t else f"{v / 1e6:.1f} ({100 * v / t:.0f}%)")
        out.append(f"| `{short_fn(n)}` | " + " | ".join(vals) + " |")
    return "\n".join(out)


def dist_size():
    """The aarch64 board binary's size (scripts/dist-size.sh)."""
    r = load("results/aarch64_build.json")
    return (f"The board binary ({r['dist_what']}) is "
            f"{r['qwm_dist_bytes'] / 1e6:.1f} MB; the release build's stripped binary "
            f"{r['qwm_stripped_bytes'] / 1e6:.1f} MB and the C example linked against `libqwmc.a` "
            f"{r['c_example_episode_bytes'] / 1e6:.1f} MB unstripped (`results/aarch64_build.json`)."
            + dist_cost(r))


def dist_cost(r):
    """What building the dependencies for size costs in executed instructions."""
    c = r.get("dist_vs_release_insns")
    if not c:
        return ""
    parts = [f"{k} {v['dist'] / v['release']:.2f}x" for k, v in c.items() if k != "method"]
    return (" Building dependencies for size costs the board binary executed instructions, against the "
            "release build (" + c["method"] + "): " + ", ".join(parts) + ".")


RENDER = {"fit_methods": fit_methods, "arm_insn": arm_insn, "bench_isa": bench_isa,
          "arm_profile": arm_profile, "dist_size": dist_size}


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
