#!/usr/bin/env python3
"""The paper's findings against qwm's study results, one table: reproduced / contradicted /
inconclusive, each with the numbers and the test that decided it.

    python3 scripts/study_findings.py           # write docs/study/FINDINGS.md
    python3 scripts/study_findings.py --check   # exit 1 when FINDINGS.md is stale

Reads every `docs/study/*/results.jsonl` (the last line of a cell with the most episodes wins, as
`qwm report` reads them). Cells are compared on the same episodes (the study plans the same task
seeds in the same order in every cell): paired exact McNemar tests at the 5% level, Wilson 95%
intervals on rates, percentile bootstrap 95% intervals (2000 resamples, seed 0) on Spearman and
AUROC. The rules are written next to each finding below; a rule that is not met either way is
"inconclusive", and a finding whose cells are missing is "not run".
"""

import glob
import json
import math
import os
import random
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "docs", "study", "FINDINGS.md")
ALPHA = 0.05


def load(folder):
    cells = {}
    for path in sorted(glob.glob(os.path.join(folder, "results*.jsonl"))):
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                old = cells.get(r["id"])
                if old is None or r["episodes"] >= old["episodes"]:
                    cells[r["id"]] = r
    # MPC steps per episode: results written before they were recorded lack them; the cell's
    # plan report (cells/ID.json) has them.
    for cid, r in cells.items():
        if all("mpc_steps" in e for e in r["per_episode"]):
            continue
        path = os.path.join(folder, "cells", cid + ".json")
        if os.path.exists(path):
            with open(path) as f:
                eps = json.load(f)["episodes"]
            if len(eps) >= len(r["per_episode"]):
                for e, c in zip(r["per_episode"], eps):
                    e["mpc_steps"] = c["mpc_steps"]
    return cells


def wilson(k, n, z=1.96):
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def mcnemar(b, c):
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(a, b):
    """(only a succeeded, only b succeeded, episodes compared) over their common first episodes."""
    ea, eb = a["per_episode"], b["per_episode"]
    n = min(len(ea), len(eb))
    only_a = sum(1 for i in range(n) if ea[i]["success"] and not eb[i]["success"])
    only_b = sum(1 for i in range(n) if eb[i]["success"] and not ea[i]["success"])
    return only_a, only_b, n


def ranks(v):
    idx = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and v[idx[j + 1]] == v[idx[i]]:
            j += 1
        for k in idx[i:j + 1]:
            r[k] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x, y):
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def boot(eps, stat, reps=2000):
    rng = random.Random(0)
    n = len(eps)
    vals = []
    for _ in range(reps):
        v = stat([eps[rng.randrange(n)] for _ in range(n)])
        if v is not None:
            vals.append(v)
    if len(vals) * 2 < reps:
        return None
    vals.sort()

    def q(p):
        pos = p * (len(vals) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)
    return (q(0.025), q(0.975))


def rho(eps):
    return spearman([e["final_objective"] for e in eps], [e["final_distance"] for e in eps])


def rate(r):
    lo, hi = wilson(r["successes"], r["episodes"])
    return f"{r['successes']}/{r['episodes']} [{lo:.2f}, {hi:.2f}]"


def vs(a, b, an, bn):
    oa, ob, n = paired(a, b)
    p = mcnemar(oa, ob)
    return p, f"{an} {rate(a)} vs {bn} {rate(b)}; on {n} shared episodes {oa} only {an}, {ob} only {bn}, McNemar p = {p:.3g}"


def find(cells, prefix):
    """The cell whose id starts with prefix (the study's ids: method-module-scheme-oO-iI-sS)."""
    hits = [c for i, c in cells.items() if i.startswith(prefix)]
    return hits[0] if hits else None


def findings(studies):
    rows = []

    def add(finding, env, evidence, verdict):
        rows.append((finding, env, evidence, verdict))

    for env, (cells, tag) in studies.items():
        f = find(cells, f"float-{tag}")
        if f is None:
            continue
        # 1. 8-bit weights are close to float.
        w8 = find(cells, f"rtn-both-w8-{tag}")
        if w8:
            p, ev = vs(f, w8, "float", "W8")
            lost = f["successes"] - w8["successes"]
            v = "contradicted" if p < ALPHA and lost > 0 else (
                "reproduced" if lost <= 0.1 * f["episodes"] else "inconclusive")
            add("8-bit weights are close to float", env, ev, v)
        # 2. 4-bit per channel is shaky; group-wise (128, else 32) recovers.
        w4 = find(cells, f"rtn-both-w4-{tag}")
        g = find(cells, f"rtn-both-w4-g128-{tag}") or find(cells, f"rtn-both-w4-g32-{tag}")
        if w4 and g:
            p1, ev1 = vs(f, w4, "float", "W4")
            gname = "W4-g" + str(g["group"])
            p2, ev2 = vs(g, w4, gname, "W4")
            drop = p1 < ALPHA and f["successes"] > w4["successes"]
            rec = p2 < ALPHA and g["successes"] > w4["successes"]
            worse = p2 < ALPHA and g["successes"] < w4["successes"]
            v = "reproduced" if drop and rec else ("contradicted" if worse or (p1 >= ALPHA and f["successes"] - w4["successes"] <= 0.1 * f["episodes"]) else "inconclusive")
            add("4-bit is shaky per channel, group-wise weights recover", env, ev1 + ". " + ev2, v)
        # 3. 3-bit breaks planning: at most half of float's successes, significantly.
        w3 = find(cells, f"rtn-both-w3-{tag}")
        if w3:
            p, ev = vs(f, w3, "float", "W3")
            half = w3["success_rate"] <= 0.5 * f["success_rate"]
            v = "reproduced" if p < ALPHA and half else ("contradicted" if p >= ALPHA else "inconclusive")
            add("3-bit breaks planning (at most half of float's success)", env, ev, v)
        # 4. The encoder is far more sensitive than the predictor.
        for bits in ["w3", "w4"]:
            e = find(cells, f"rtn-encoder-{bits}-{tag}")
            pr = find(cells, f"rtn-predictor-{bits}-{tag}")
            if e and pr:
                p, ev = vs(e, pr, f"encoder-only {bits.upper()}", f"predictor-only {bits.upper()}")
                enc_worse = e["successes"] < pr["successes"]
                v = ("reproduced" if enc_worse else "contradicted") if p < ALPHA else "inconclusive"
                add(f"the encoder is more sensitive than the predictor ({bits.upper()})", env, ev, v)
        # 5. Activation granularity (per token vs per tensor) helps inconsistently.
        pairs = []
        for s in ["w8a8", "w6a6", "w4a8-g32", "w4a8-g128"]:
            a = find(cells, f"rtn-both-{s}-{tag}")
            t = find(cells, f"rtn-both-{s}-token-{tag}")
            if a and t:
                pairs.append((s, a, t))
        if pairs:
            evs, sig = [], []
            for s, a, t in pairs:
                p, ev = vs(t, a, f"{s}-token", s)
                evs.append(ev)
                if p < ALPHA:
                    sig.append(t["successes"] > a["successes"])
            consistent = len(sig) == len(pairs) and (all(sig) or not any(sig))
            v = "contradicted" if consistent and len(pairs) > 1 else "reproduced"
            add("per-token activations help inconsistently (no consistent significant gain)", env, ". ".join(evs), v)
        # 6. At low bits the planning objective stops meaning success.
        if w3:
            rf, rq = rho(f["per_episode"]), rho(w3["per_episode"])
            cf, cq = boot(f["per_episode"], rho), boot(w3["per_episode"], rho)
            if None not in (rf, rq, cf, cq):
                ev = (f"Spearman(final objective, final distance): float {rf:+.2f} [{cf[0]:+.2f}, {cf[1]:+.2f}], "
                      f"W3 {rq:+.2f} [{cq[0]:+.2f}, {cq[1]:+.2f}] (bootstrap 95%)")
                v = "reproduced" if cf[0] > cq[1] else ("contradicted" if cq[0] > cf[1] else "inconclusive")
                add("at low bits the objective stops tracking success (Spearman falls)", env, ev, v)
        # 7. More optimization does not repair low bits: the largest MPC budget's low-bit cell is
        # still significantly below float.
        for s in ["w3", "w3-g128", "w4", "w4-g128"]:
            q = find(cells, f"rtn-both-{s}-{tag}")
            if q is None or q["max_iter"] < 50:
                continue
            eps = q["per_episode"]
            if not all("mpc_steps" in e for e in eps):
                continue
            at10 = sum(1 for e in eps if e["success"] and e["mpc_steps"] <= 10)
            p, ev = vs(f, q, "float", s.upper())
            ev = f"{s.upper()} at max_iter 50: {at10} successes within 10 MPC steps, {q['successes']} within 50; " + ev
            v = "reproduced" if p < ALPHA and f["successes"] > q["successes"] else "contradicted"
            add(f"more MPC steps (up to 50) do not repair {s.upper()}", env, ev, v)
        for s in ["w3", "w4"]:
            hi = find(cells, f"rtn-both-{s}-o20-")
            if hi and tag.endswith("i10"):
                fh = find(cells, "float-o20-")
                if fh:
                    p, ev = vs(fh, hi, "float (20 CEM steps)", f"{s.upper()} (20 CEM steps)")
                    v = "reproduced" if p < ALPHA and fh["successes"] > hi["successes"] else "contradicted"
                    add(f"more CEM steps (20) do not repair {s.upper()}", env, ev, v)
    return rows


def render():
    studies = {}
    for env, folder, tag in [("Wall, max_iter 10", "wall", "o10-i10"), ("Wall, max_iter 50", "wall50", "o10-i50"),
                             ("PushT", "pusht", "o30-i5"), ("PointMaze", "pointmaze", "o10-i10")]:
        path = os.path.join(ROOT, "docs", "study", folder)
        if os.path.isdir(path):
            studies[env] = (load(path), tag)
    rows = findings(studies)
    out = ["# The paper's findings, tested on qwm's study", "",
           "Generated by `python3 scripts/study_findings.py` from `docs/study/*/results.jsonl` (do not edit; "
           "CI checks it is current). Tests: paired exact McNemar on the shared episodes (5% level), Wilson 95% "
           "intervals on success, percentile bootstrap 95% intervals on Spearman; each finding's rule is in the "
           "script. Only finished cells count (running ones are in each study's STATUS.md).", "",
           "| finding (the paper) | environment | evidence | verdict |", "|---|---|---|---|"]
    for finding, env, ev, v in rows:
        out.append(f"| {finding} | {env} | {ev} | **{v}** |")
    return "\n".join(out) + "\n"


def main():
    text = render()
    if "--check" in sys.argv[1:]:
        old = open(OUT).read() if os.path.exists(OUT) else ""
        if old != text:
            sys.exit("docs/study/FINDINGS.md is stale: run python3 scripts/study_findings.py")
        print("docs/study/FINDINGS.md is current")
        return
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {OUT} ({text.count(chr(10)) - 6} findings)")


if __name__ == "__main__":
    main()
