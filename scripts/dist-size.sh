#!/usr/bin/env bash
# The board binary: the aarch64 qwm built with the `dist` profile (Cargo.toml: fat LTO, one codegen
# unit, stripped, tract's graph code built for size and the kernels for speed), its size recorded
# in results/aarch64_build.json (README's "Cross-compiling" block renders it).
#   scripts/dist-size.sh [--record]
# Run scripts/cross-aarch64.sh once first (it installs the Debian toolchain this uses). Without
# --record it only builds and prints the size.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/xc-env.sh
t0=$(date +%s)
/usr/bin/cargo build --profile dist --target $TRIPLE --bin qwm
t1=$(date +%s)
BIN=$CARGO_TARGET_DIR/$TRIPLE/dist/qwm
BYTES=$(stat -c %s "$BIN")
echo "built $BIN: $BYTES bytes ($((t1 - t0)) s)"
if [ "${1:-}" = --record ]; then
    python3 - "$BYTES" "$(/usr/bin/rustc --version)" "$(git rev-parse --short HEAD)" <<'PY'
import json, sys
bytes_, rustc, commit = int(sys.argv[1]), sys.argv[2], sys.argv[3]
p = "results/aarch64_build.json"
r = json.load(open(p))
r["qwm_dist_bytes"] = bytes_
r["dist_what"] = (f"scripts/dist-size.sh: cargo build --profile dist (fat LTO, 1 codegen unit, stripped, "
                  f"panics unwind; tract's graph crates at opt-level z, other dependencies at s, "
                  f"tract-linalg, matrixmultiply, ndarray and qwm at 3), {rustc}, tree at {commit}")
json.dump(r, open(p, "w"), indent=1)
open(p, "a").write("\n")
print(f"recorded {bytes_} bytes in {p}")
PY
fi
