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
