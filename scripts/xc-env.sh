# Sourced by the aarch64 scripts (cross-aarch64.sh, aarch64-kernel-tests.sh, dist-size.sh,
# qemu-ort.sh): Debian's Rust 1.96 with its arm64 std (installed by cross-aarch64.sh), its own
# target folder, the aarch64 gcc as linker.
TRIPLE=aarch64-unknown-linux-gnu
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/xc}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
