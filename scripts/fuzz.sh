#!/usr/bin/env bash
# Run qwm's fuzz targets (fuzz/fuzz_targets: manifest, scheme, graph) with cargo-fuzz / libFuzzer.
#   scripts/fuzz.sh [SECONDS_PER_TARGET=600] [TARGETS...]
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. No
# sanitizer (-s none): qwm and tract are safe Rust, and the build is ~4x faster. Seeds come from the
# shipped bundles; crashes land in fuzz/artifacts/TARGET/ (add them to tests/corpus.rs as cases).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(manifest scheme graph)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
mkdir -p fuzz/corpus/manifest fuzz/corpus/scheme fuzz/corpus/graph
cp models/wall/manifest.json fuzz/corpus/manifest/wall.json
cp tests/data/tiny_h3/manifest.json fuzz/corpus/manifest/tiny.json
for s in float w8a8 w4-g32 w3 w8a8-token w4a8-g32-token w6a6; do printf '%s' "$s" > "fuzz/corpus/scheme/$s"; done
cp tests/data/tiny_h3/encoder.onnx fuzz/corpus/graph/tiny_encoder.onnx
cp tests/data/tiny_h3/predictor.onnx fuzz/corpus/graph/tiny_predictor.onnx
cd fuzz
for t in "${TARGETS[@]}"; do
    echo "== fuzzing $t for $SECS s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -O "$t" "corpus/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=4096 -max_len=100000
done
