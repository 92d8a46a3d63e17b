#!/usr/bin/env bash
# ONNX Runtime on aarch64 under qemu-user (issue 25): the aarch64 qwm built with --features ort
# loads the aarch64 onnxruntime wheel's library, runs the ONNX Runtime parity tests and plans the
# same seeds as the x86 qwm on ONNX Runtime.
#   scripts/qemu-ort.sh [EPISODES=1]
# Why a shim: ONNX Runtime's CPU detection reads /proc/cpuinfo and /sys/devices/system/cpu while
# its library loads; under qemu-user those are the x86 host's, and it faults before dlopen
# returns. scripts/qemu-cpu/cpu_shim.c (LD_PRELOAD, built here for aarch64) serves those paths
# from a tree describing the emulated CPU (scripts/qemu-cpu/fake_cpu.py), and nothing else.
# Needs scripts/cross-aarch64.sh's toolchain (it installs it), the x86 .venv with onnxruntime
# (.ci/run makes it), and PyPI for the aarch64 wheel (downloaded once into target/xc/ort-aarch64).
set -euo pipefail
cd "$(dirname "$0")/.."
EPISODES=${1:-1}
CPU=${QEMU_CPU:-cortex-a76}
. scripts/xc-env.sh
PY=${PYTHON:-.venv/bin/python}
ORT_VERSION=$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)')
WORK=$CARGO_TARGET_DIR/ort-aarch64
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# The aarch64 wheel of the same ONNX Runtime version as the x86 one.
ARM_LIB=$WORK/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION
if [ ! -f "$ARM_LIB" ]; then
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
        "onnxruntime==$ORT_VERSION" -d "$WORK/wheel"
    "$PY" - "$WORK" "$ORT_VERSION" <<'PY'
import glob, os, sys, zipfile
work, version = sys.argv[1:3]
wheel = sorted(glob.glob(os.path.join(work, "wheel", f"onnxruntime-{version}-*aarch64*.whl")))[-1]
name = f"onnxruntime/capi/libonnxruntime.so.{version}"
out = os.path.join(work, f"onnxruntime-{version}")
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z, open(os.path.join(out, os.path.basename(name)), "wb") as f:
    f.write(z.read(name))
print(f"extracted {name} from {os.path.basename(wheel)}")
PY
fi
X86_LIB=$("$PY" -c 'import onnxruntime, os, glob; d = os.path.join(os.path.dirname(onnxruntime.__file__), "capi"); print(sorted(glob.glob(os.path.join(d, "libonnxruntime.so*")))[-1])')

# The shim and the CPU it describes (as many cores as this machine has).
mapfile -t BOARD < <(python3 scripts/qemu-cpu/board.py "$CPU" "$WORK" "$(nproc)")
RUN=(qemu-aarch64 -cpu "$CPU" "${BOARD[@]}" -E "ORT_DYLIB_PATH=$ARM_LIB")

# The ONNX Runtime parity tests (tests/ort_backend.rs) on aarch64: the ones that run in-process
# (qemu-user cannot start the aarch64 qwm binary from inside an emulated test, and the bench test
# needs a Python).
/usr/bin/cargo build --release --target $TRIPLE --features ort --bin qwm
TEST_BIN=$(/usr/bin/cargo test --release --target $TRIPLE --features ort --test ort_backend --no-run \
    --message-format=json 2>/dev/null | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -n "$TEST_BIN" ] || { echo "qemu-ort: no ort_backend test binary built" >&2; exit 1; }
echo "== ONNX Runtime $ORT_VERSION parity tests on qemu -cpu $CPU"
"${RUN[@]}" "$TEST_BIN" --test-threads 1 --exact \
    ort_matches_pytorch_and_tract \
    quantized_forms_agree_across_backends \
    planner_picks_the_same_best_candidate_on_both_backends \
    matmulnbits_accuracy_level_4_is_applied_and_close \
    weights_read_from_the_graph_file_give_the_same_numbers

# A plan on ONNX Runtime: the same seeds on x86 and on aarch64, compared as for tract.
echo "== qwm plan --backend ort on qemu -cpu $CPU against x86"
ARM_RUNNER="${RUN[*]}" X86_EXTRA="--backend ort --ort-lib $X86_LIB" ARM_EXTRA="--backend ort --ort-lib $ARM_LIB" \
    scripts/compare-aarch64.sh "$EPISODES"
