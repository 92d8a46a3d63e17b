#!/usr/bin/env bash
# The kernel test suite (every instruction-set variant against the portable kernel and a float64
# reference: src/kernels/*/tests.rs) built for aarch64 and run under qemu on two CPUs:
# cortex-a76 (NEON with sdot: Raspberry Pi 5, RK3588; Orin's A78 has the same extensions) and
# cortex-a53 (NEON without dotprod: the smull/sadalp path, as on A53/A72 boards such as Pi 4).
# Run scripts/cross-aarch64.sh first (it installs the Debian toolchain this uses).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/xc-env.sh
BIN=$(/usr/bin/cargo test --release --target $TRIPLE --lib --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -n "$BIN" ] || { echo "aarch64 kernel tests: no test binary built" >&2; exit 1; }
for cpu in cortex-a76 cortex-a53; do
    echo "== kernels on qemu -cpu $cpu"
    QEMU_CPU=$cpu qemu-aarch64 "$BIN" kernels
done
