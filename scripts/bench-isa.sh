#!/usr/bin/env bash
# The int8 deploy forms on each instruction-set variant qwm's kernels have on this CPU, against
# float, in one `qwm bench` run per variant (ratios to float are within one run):
#   scripts/bench-isa.sh [QWM_BINARY] [OUT_DIR=results]
# Bundles: the full-size DINO-WM-shaped bundle (`qwm synth --preset vits14-wall`, random weights),
# its w8a8 deploy form and its w4-g128 deploy form at accuracy level 4 (the int8-activation 4-bit
# path that runs on qwm's int8 kernel). Predictor batch 16, encoder batch 1, 1 thread.
# Writes OUT_DIR/bench_isa_<variant>.json for each variant (QWM_ISA=portable, then the native one).
set -euo pipefail
QWM=${1:-target/release/qwm}
OUT=${2:-results}
WORK=${WORK:-data/bench_isa}
mkdir -p "$WORK" "$OUT"
[ -f "$WORK/float/manifest.json" ] || "$QWM" synth --preset vits14-wall --out "$WORK/float"
# Calibration is short: the weights are random, the ranges only have to be the float model's.
CAL=(--calib-episodes 1 --calib-iters 1 --calib-samples 16 --threads 1)
[ -f "$WORK/w8a8/manifest.json" ] || "$QWM" quantize --model "$WORK/float" --out "$WORK/w8a8" \
    --encoder w8a8 --predictor w8a8 --form deploy "${CAL[@]}"
[ -f "$WORK/w4g128/manifest.json" ] || "$QWM" quantize --model "$WORK/float" --out "$WORK/w4g128" \
    --encoder w4-g128 --predictor w4-g128 --form deploy --accuracy-level 4 "${CAL[@]}"
NATIVE=$(QWM_ISA=native "$QWM" inspect "$WORK/float" >/dev/null 2>&1; \
    for v in avx512 avx2; do if QWM_ISA=$v "$QWM" inspect "$WORK/float" >/dev/null 2>&1; then echo $v; break; fi; done)
for isa in portable ${NATIVE:-}; do
    echo "== QWM_ISA=$isa"
    QWM_ISA=$isa "$QWM" bench --model "$WORK/float" --model "$WORK/w8a8" --model "$WORK/w4g128" \
        --batch 16 --encoder-batch 1 --threads 1 --iters 3 --warmup 1 --json "$OUT/bench_isa_$isa.json"
done
