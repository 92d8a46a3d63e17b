#!/usr/bin/env bash
# Evaluate one bundle on the standard Wall protocol and keep the result under results/.
#   scripts/eval.sh NAME MODEL [EPISODES=50] [THREADS=2] [extra qwm plan flags...]
# Writes results/NAME_EPISODES.json (rewritten after every episode; rerunning resumes) and .txt.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=$1; MODEL=$2; EPISODES=${3:-50}; THREADS=${4:-2}
shift $(( $# < 4 ? $# : 4 ))
QWM=${QWM:-target/release/qwm}
out="results/${NAME}_${EPISODES}"
"$QWM" plan --model "$MODEL" --episodes "$EPISODES" --threads "$THREADS" --json "$out.json" --resume "$@" \
    | tee "$out.txt"
