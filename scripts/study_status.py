#!/usr/bin/env python3
"""Status of a study folder: finished cells (results*.jsonl) and unfinished ones (cells/*.json),
as a markdown table. Usage: scripts/study_status.py docs/study/wall"""
import glob, json, os, sys

d = sys.argv[1] if len(sys.argv) > 1 else "docs/study/wall"
done = {}
for f in sorted(glob.glob(os.path.join(d, "results*.jsonl"))):
    for line in open(f):
        if line.strip():
            r = json.loads(line)
            done[r["id"]] = r
print("| cell | episodes | success | mean final distance | mean objective | Spearman(objective, distance) | state |")
print("|---|---|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(d, "cells", "*.json"))):
    cid = os.path.basename(f)[:-5]
    if cid in done:
        r = done[cid]
        sp = r["spearman_objective_distance"]
        print(f"| {cid} | {r['episodes']} | {r['successes']}/{r['episodes']} ({r['success_rate']:.2f}) | "
              f"{r['mean_final_distance']:.2f} | {r['mean_final_objective']:.4f} | "
              f"{'-' if sp is None else f'{sp:+.2f}'} | done |")
    else:
        try:
            rep = json.load(open(f))
        except Exception:
            continue
        eps = rep["episodes"]
        want = rep["config"]["args"]["episodes"]
        if not eps:
            continue
        s = sum(e["success"] for e in eps)
        n = len(eps)
        dist = sum(e["final_distance"] for e in eps) / n
        obj = sum(e["final_objective"] for e in eps) / n
        print(f"| {cid} | {n} of {want} | {s}/{n} ({s / n:.2f}) | {dist:.2f} | {obj:.4f} | - | running |")

# Success against the MPC-step budget, from the same runs: an episode stops at its first successful
# MPC step, so one that succeeded after k steps counts for every budget >= k. Wilson 95% intervals
# on the rates. (Printed only for studies whose cells ran more than 10 MPC steps.)
import math


def wilson(s, n, z=1.96):
    if n == 0:
        return (float("nan"), float("nan"))
    p = s / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


rows = []
for f in sorted(glob.glob(os.path.join(d, "cells", "*.json"))):
    try:
        rep = json.load(open(f))
    except Exception:
        continue
    max_iter = rep["config"]["args"]["max_iter"]
    eps = rep["episodes"]
    if max_iter <= 10 or not eps:
        continue
    steps = [e["mpc_steps"] if e["success"] else None for e in eps]
    rows.append((os.path.basename(f)[:-5], max_iter, steps))
if rows:
    budgets = [1, 2, 3, 5, 10, 20, 30, 50]
    print()
    print("Success by MPC-step budget (episodes so far; Wilson 95% interval of the last column):")
    print()
    print("| cell | episodes | " + " | ".join(f"<= {b}" for b in budgets) + " | 95% interval |")
    print("|---|---|" + "---|" * len(budgets) + "---|")
    for cid, max_iter, steps in rows:
        n = len(steps)
        cols = []
        for b in budgets:
            if b > max_iter:
                cols.append("-")
                continue
            cols.append(str(sum(1 for k in steps if k is not None and k <= b)))
        s = sum(1 for k in steps if k is not None)
        lo, hi = wilson(s, n)
        print(f"| {cid} | {n} | " + " | ".join(cols) + f" | {lo:.2f}-{hi:.2f} |")
