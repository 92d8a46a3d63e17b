#!/bin/bash
# Issue 8 measurements, session 8: one engine at a time, one thread, quiet machine.
set -u
cd /work/main
export ORT_DYLIB_PATH=/work/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0
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
echo done > /tmp/bench_s8.done
