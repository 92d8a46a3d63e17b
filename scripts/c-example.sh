#!/usr/bin/env bash
# The C API end to end: build libqwmc, compile examples/c/episode.c against include/qwm.h with cc,
# run Wall episodes through it and require qwm plan's episodes for the same seed (same successes,
# same MPC steps, final states within 1e-6 as float32).
#   scripts/c-example.sh [QWM_EPISODE_BINARY]   (default: build and use the host one)
# With a binary given (the aarch64 build of the example), it runs that one and `qwm plan` of
# $QWM_PLAN (the aarch64 qwm: kernels differ between architectures, so results are compared on
# one architecture), both through $QWM_RUNNER (e.g. "qemu-aarch64 -cpu cortex-a76"), with a
# smaller budget (EPISODES, MAX_ITER from the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
FLAGS=(--samples 60 --topk 6 --opt-steps 3 --threads 1)
SEED=4; EPISODES=${EPISODES:-3}; MAX_ITER=${MAX_ITER:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -ge 1 ]; then
    episode=$1
    plan=${QWM_PLAN:?QWM_PLAN: the qwm binary of the same architecture}
else
    cargo build --release --quiet --bin qwm
    plan=target/release/qwm
    cargo build --release --quiet -p qwm-capi
    cc -O2 -Wall -Wextra -Werror -std=c11 examples/c/episode.c -Iinclude \
        target/release/libqwmc.a -lm -lpthread -ldl -Wl,-z,noexecstack -o "$work/episode"
    episode="$work/episode"
fi
${QWM_RUNNER:-} "$episode" models/wall $SEED $EPISODES $MAX_ITER "${FLAGS[@]}" > "$work/c.txt"
${QWM_RUNNER:-} "$plan" plan --episodes $EPISODES --seed $SEED --max-iter $MAX_ITER "${FLAGS[@]}" \
    --json "$work/plan.json" > /dev/null
python3 - "$work/c.txt" "$work/plan.json" <<'PY'
import json, struct, sys
f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]
lines = [l.split() for l in open(sys.argv[1]) if l.startswith("episode")]
eps = json.load(open(sys.argv[2]))["episodes"]
assert len(lines) == len(eps), (len(lines), len(eps))
for l, e in zip(lines, eps):
    i, success, steps = int(l[1]), l[3] == "1", int(l[5])
    state = [f32(float(v)) for v in l[7:]]
    assert success == e["success"], (i, success, e["success"])
    assert steps == e["mpc_steps"], (i, steps, e["mpc_steps"])
    err = max(abs(a - f32(b)) for a, b in zip(state, e["final_state"]))
    assert len(state) == len(e["final_state"]) and err <= 1e-6, (i, state, e["final_state"])
    print(f"C episode {i}: success {success}, {steps} MPC steps, final state equal to qwm plan's (max diff {err:.1e})")
PY
