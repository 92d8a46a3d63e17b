"""qemu-aarch64 options that describe the emulated CPU to the guest as a board's Linux does.

qemu-user passes /proc/cpuinfo and /sys/devices/system/cpu through from the x86 host. ONNX
Runtime's CPU detection faults on that, and tract-linalg finds no "Features" line and no ARM core
("CPU part"), so it picks its generic kernels where an A53 board would get the ones it schedules
for that in-order core. cpu_shim.c (preloaded into the guest only, `-E LD_PRELOAD=...`) serves
those paths from fake_cpu.py's description of the emulated CPU. Used by scripts/arm-insn.py and
scripts/arm-profile.py, and from the shell (scripts/qemu-ort.sh) as

    python3 scripts/qemu-cpu/board.py CPU WORK [CPUS]   # prints the options, one a line
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def qemu_options(cpu, work, cpus=1):
    """`-E` options for `qemu-aarch64 -cpu CPU`; builds the shim and the tree of `cpus` cores
    under `work` once."""
    work = os.path.abspath(work)
    os.makedirs(work, exist_ok=True)
    so = os.path.join(work, "cpu_shim.so")
    src = os.path.join(HERE, "cpu_shim.c")
    if not os.path.exists(so) or os.path.getmtime(so) < os.path.getmtime(src):
        subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", src, "-o", so, "-ldl"], check=True)
    tree = os.path.join(work, cpu if cpus == 1 else f"{cpu}-x{cpus}")
    if not os.path.exists(os.path.join(tree, "proc", "cpuinfo")):
        subprocess.run([sys.executable, os.path.join(HERE, "fake_cpu.py"), "--cpu", cpu, "--cpus", str(cpus),
                        "--out", tree], check=True, stdout=subprocess.DEVNULL)
    return ["-E", f"LD_PRELOAD={so}", "-E", f"QWM_FAKE_CPU_ROOT={tree}"]


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: board.py CPU WORK [CPUS]")
    print("\n".join(qemu_options(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 1)))
