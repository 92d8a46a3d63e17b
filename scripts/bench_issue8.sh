#!/bin/bash
# Issue 8's measurements: float, w8a8 deploy and 4-bit deploy forms of the full-size bundle side by
# side, one engine at a time, one thread, predictor batch 16 (+ encoder batch 1) and the CEM batch
# 300. Run it on a quiet machine (nothing else running); writes results/bench_s8_*.{txt,json}.
#   ORT_DYLIB_PATH=.../libonnxruntime.so.1.32.0 scripts/bench_issue8.sh
# Needs the full-size bundle (models/README.md: make_dinowm_ckpt.py --preset full, exported with
# num_hist 1) as data/dinowm_full_h1_bundle, and its deploy forms from
#   qwm quantize --model data/dinowm_full_h1_bundle --method rtn --form deploy \
#     --encoder S --predictor S [--accuracy-level 4] --out data/deploy/full_..._deploy
# with S = w8a8, w4-g128 (level 4) and w4-g32 (level 4).
set -u
cd "$(dirname "$0")/.."
Q=./target/release/qwm
F=data/dinowm_full_h1_bundle
D=data/deploy
for be in tract ort; do
  $Q bench --backend $be --threads 1 --batch 16 --iters 10 \
    --model $F --model $D/full_w8a8_deploy --model $D/full_w4g128_deploy_acc4 --model $D/full_w4g32_deploy_acc4 \
    --json results/bench_s8_${be}_b16.json > results/bench_s8_${be}_b16.txt 2>&1
  $Q bench --backend $be --threads 1 --batch 300 --iters 3 --warmup 1 --graph predictor \
    --model $F --model $D/full_w8a8_deploy --model $D/full_w4g128_deploy_acc4 \
    --json results/bench_s8_${be}_b300.json > results/bench_s8_${be}_b300.txt 2>&1
done
