"""Print a markdown table of every `qwm plan --json` report under results/ (the README's table)."""
import glob, json, os, sys

rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1] if len(sys.argv) > 1 else "results", "*.json"))):
    r = json.load(open(path))
    if "summary" not in r:
        continue
    a, s, eps = r["config"]["args"], r["summary"], r["episodes"]
    ok = sum(e["success"] for e in eps)
    rows.append((os.path.basename(path), a.get("model"), a.get("backend") or "tract", r["config"].get("threads"),
                 f"{ok}/{len(eps)}" + ("" if r.get("complete", True) else f" (running, of {a['episodes']})"),
                 f"{ok / max(1, len(eps)):.2f}", f"{s['mean_final_distance']:.2f}", f"{s['mean_final_objective']:.4f}",
                 f"{s['mean_mpc_steps']:.2f}", f"{s['plan_time_p50_s']:.2f}"))
print("| file | model | backend | threads | success | rate | mean final distance (px) | mean final objective | mean MPC steps | plan s/MPC step p50 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")
