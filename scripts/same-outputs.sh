#!/usr/bin/env bash
# Same seeds, same results: run two qwm builds (e.g. before and after moving code) on the same
# deterministic jobs and compare what they write, timings and paths left out.
#   scripts/same-outputs.sh OLD_QWM NEW_QWM
# Jobs: CEM and MPPI plans on models/wall (--json), a w4-g32/w8a8 simulate bundle and a w8a8
# deploy bundle (every file's sha256: manifests and graphs byte-identical), a plan on the deploy
# bundle, `qwm inspect` of a bundle, and a study's cell list. Exits 1 on any difference.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_QWM NEW_QWM" >&2; exit 2; }
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
    local bin=$1 out=$2
    mkdir -p "$out"
    "$bin" plan --episodes 2 --seed 3 --max-iter 2 --threads 1 --json "$out/plan_cem.json" > /dev/null
    "$bin" plan --episodes 1 --seed 1 --planner mppi --max-iter 2 --threads 2 --json "$out/plan_mppi.json" > /dev/null
    "$bin" quantize --model models/wall --out "$out/q1" --encoder w4-g32 --predictor w8a8 \
        --calib-episodes 1 --calib-iters 1 --calib-samples 30 > /dev/null
    "$bin" quantize --model models/wall --out "$out/q2" --predictor w8a8 --form deploy \
        --calib-episodes 1 --calib-iters 1 --calib-samples 30 > /dev/null
    "$bin" plan --model "$out/q2" --episodes 1 --seed 2 --max-iter 1 --threads 1 --json "$out/plan_q2.json" > /dev/null
    "$bin" inspect "$out/q1" | tail -n +2 > "$out/inspect.txt"
    "$bin" study --config docs/study/wall.toml --list > "$out/study_list.txt"
    (cd "$out" && sha256sum q1/* q2/* | sed "s#  .*/#  #" > hashes.txt)
    for f in "$out"/plan_*.json; do
        python3 - "$f" <<'PY'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
timing = ("time", "_s", "rss", "peak", "heap", "load", "share")
def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if not any(s in k for s in timing)}
    if isinstance(o, list):
        return [strip(x) for x in o]
    return o
d["config"]["args"].pop("json", None)
d["config"]["args"]["model"] = "(model)" if "q2" in str(d["config"]["args"]["model"]) else d["config"]["args"]["model"]
json.dump(strip(d), open(p + ".det", "w"), indent=1, sort_keys=True)
PY
    done
}
run "$1" "$work/old"
run "$2" "$work/new"
status=0
for f in plan_cem.json.det plan_mppi.json.det plan_q2.json.det inspect.txt study_list.txt hashes.txt; do
    if cmp -s "$work/old/$f" "$work/new/$f"; then
        echo "same: $f"
    else
        echo "DIFFERENT: $f"
        diff "$work/old/$f" "$work/new/$f" | head -20 || true
        status=1
    fi
done
exit $status
