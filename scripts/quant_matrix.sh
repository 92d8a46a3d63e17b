#!/usr/bin/env bash
# Build the quantization matrix of issue 4 for one float bundle and check that every variant plans.
#   scripts/quant_matrix.sh [MODEL=models/wall] [OUT=data/quant_matrix]
# For each variant: `qwm quantize` (both modules, same scheme), `qwm inspect`, and one short
# planning episode (reduced budget: it proves the bundle runs, it measures nothing).
# Resumable: a variant whose bundle exists is skipped. Summary: OUT/matrix.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/wall}
OUT=${2:-data/quant_matrix}
QWM=${QWM:-target/release/qwm}
mkdir -p "$OUT"
variants=()
for m in rtn omse; do
  for b in 8 6 4 3; do
    variants+=("$m w$b" "$m w$b-g32")
  done
done
for a in w8a8 w6a6 w4a8; do
  variants+=("rtn $a" "rtn $a-token")
done
variants+=("smoothquant w8a8" "awq w4" "awq w4-g32")
csv="$OUT/matrix.csv"
[ -f "$csv" ] || echo "method,scheme,quantize_s,plan_ok" > "$csv"
for v in "${variants[@]}"; do
  set -- $v
  method=$1; scheme=$2; name="${method}_${scheme}"; dir="$OUT/$name"
  if [ -f "$dir/manifest.json" ] && grep -q "^$method,$scheme," "$csv"; then continue; fi
  rm -rf "$dir"
  t0=$(date +%s.%N)
  "$QWM" quantize --model "$MODEL" --out "$dir" --method "$method" --encoder "$scheme" --predictor "$scheme" \
      --calib-episodes 4 > "$dir.quantize.txt" 2>&1
  t1=$(date +%s.%N)
  "$QWM" inspect "$dir" > "$dir.inspect.txt"
  if "$QWM" plan --model "$dir" --episodes 1 --samples 30 --topk 5 --opt-steps 2 --max-iter 1 > "$dir.plan.txt" 2>&1; then ok=1; else ok=0; fi
  echo "$method,$scheme,$(awk "BEGIN{print $t1 - $t0}"),$ok" >> "$csv"
  echo "$name: quantized in $(awk "BEGIN{print $t1 - $t0}") s, plan ok=$ok"
done
