#!/usr/bin/env bash
# Plan the same seeds with the x86 qwm and with the aarch64 qwm under qemu (-cpu cortex-a76, a
# Raspberry Pi 5 core; qemu's default "max" CPU has SVE2, which boards lack, so tract would pick
# other kernels), and compare: same successes, final objectives within 1e-3 relative, final
# distances within 0.5 px (kernels differ between architectures, so values differ in the last bits
# and CEM may rank near-ties differently).
#   scripts/compare-aarch64.sh [EPISODES=2]
# X86_EXTRA and ARM_EXTRA add arguments to each side's plan (scripts/qemu-ort.sh: --backend ort
# with each architecture's library); ARM_RUNNER replaces the qemu command line.
# The budget is small on purpose: under qemu the aarch64 build plans about 100x slower than native
# (measured: 121 s per MPC step at 100 samples x 4 opt steps, against 1.1 s native).
set -euo pipefail
cd "$(dirname "$0")/.."
EPISODES=${1:-2}
X86=${X86_QWM:-target/release/qwm}
ARM=${ARM_QWM:-target/xc/aarch64-unknown-linux-gnu/release/qwm}
[ -x "$X86" ] || cargo build --release --bin qwm
ARGS=(plan --episodes "$EPISODES" --samples 60 --topk 6 --opt-steps 2 --max-iter 1 --threads 2)
out=$(mktemp -d)
read -r -a X86_MORE <<< "${X86_EXTRA:-}"
read -r -a ARM_MORE <<< "${ARM_EXTRA:-}"
read -r -a RUNNER <<< "${ARM_RUNNER:-qemu-aarch64 -cpu ${QEMU_CPU:-cortex-a76}}"
"$X86" "${ARGS[@]}" "${X86_MORE[@]}" --json "$out/x86.json" > "$out/x86.txt"
t0=$(date +%s.%N)
"${RUNNER[@]}" "$ARM" "${ARGS[@]}" "${ARM_MORE[@]}" --json "$out/arm.json" > "$out/arm.txt"
t1=$(date +%s.%N)
cat "$out/arm.txt"
echo "aarch64 run under qemu: $(awk "BEGIN{print $t1 - $t0}") s"
python3 - "$out/x86.json" "$out/arm.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
bad = []
for x, y in zip(a["episodes"], b["episodes"]):
    i = x["index"]
    if x["success"] != y["success"]:
        bad.append(f"episode {i}: success x86 {x['success']} vs aarch64 {y['success']}")
    ro = abs(x["final_objective"] - y["final_objective"]) / max(abs(x["final_objective"]), 1e-9)
    dd = abs(x["final_distance"] - y["final_distance"])
    print(f"episode {i}: success {x['success']}/{y['success']}, objective rel diff {ro:.2e}, final distance diff {dd:.3f} px")
    if ro > 1e-3:
        bad.append(f"episode {i}: final objective differs by {ro:.2e} relative (> 1e-3)")
    if dd > 0.5:
        bad.append(f"episode {i}: final distance differs by {dd:.3f} px (> 0.5)")
if len(a["episodes"]) != len(b["episodes"]) or not a["episodes"]:
    bad.append("episode counts differ or are zero")
if bad:
    print("aarch64 vs x86 MISMATCH:\n" + "\n".join(bad)); sys.exit(1)
print(f"aarch64 (qemu cortex-a76) matches x86 on {len(a['episodes'])} episodes")
PY
