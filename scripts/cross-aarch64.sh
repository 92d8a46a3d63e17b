#!/usr/bin/env bash
# One command for an aarch64 qwm on a plain Debian 12 machine, without Docker:
#   scripts/cross-aarch64.sh            # build target/xc/aarch64-unknown-linux-gnu/release/qwm,
#                                       # libqwmc.a (the C API) and the C example `episode` beside it
#   scripts/cross-aarch64.sh run ARGS   # build, then run `qwm ARGS` under qemu-aarch64 (QEMU_CPU, default cortex-a76)
# Installs (once, needs root) Debian's Rust 1.96 (rustc-web, cargo-web) with its arm64 standard
# library, the aarch64 gcc as linker and qemu-user. Debian's compiler is used only for this build
# (RUSTC=/usr/bin/rustc, its own target dir); rustup's toolchain stays the default everywhere else.
# With Docker, cross-rs works too: CROSS_CONFIG=cross.toml cross build --release --target aarch64-unknown-linux-gnu
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for p in rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
. scripts/xc-env.sh
# Plain qemu-aarch64 (no -L): with -L, threaded binaries hang (two glibc builds get mixed).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export QEMU_CPU=${QEMU_CPU:-cortex-a76}
/usr/bin/cargo build --release --target $TRIPLE --bin qwm
BIN=$CARGO_TARGET_DIR/$TRIPLE/release/qwm
aarch64-linux-gnu-strip -o "$BIN.stripped" "$BIN"
echo "built $BIN ($(stat -c %s "$BIN.stripped") bytes stripped: $BIN.stripped)"
# The C API for the board and the C example linked against it (scripts/c-example.sh runs it).
/usr/bin/cargo build --release --target $TRIPLE -p qwm-capi
aarch64-linux-gnu-gcc -O2 -Wall -Wextra -Werror -std=c11 examples/c/episode.c -Iinclude \
    "$CARGO_TARGET_DIR/$TRIPLE/release/libqwmc.a" -lm -lpthread -ldl -Wl,-z,noexecstack \
    -o "$CARGO_TARGET_DIR/$TRIPLE/release/episode"
echo "built $CARGO_TARGET_DIR/$TRIPLE/release/episode (the C example on libqwmc.a)"
if [ "${1:-}" = run ]; then
    shift
    qemu-aarch64 "$BIN" "$@"
fi
