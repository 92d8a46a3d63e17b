"""qemu-aarch64 options that describe the emulated CPU to the guest as a board's Linux does.

qemu-user passes /proc/cpuinfo and /sys/devices/system/cpu through from the x86 host. ONNX
Runtime's CPU detection faults on that, and tract-linalg finds no "Features" line and no ARM core
("CPU part"), so it picks its generic kernels where an A53 board would get the ones it schedules
for that in-order core. cpu_shim.c (preloaded into the guest only, `-E LD_PRELOAD=...`) serves
those paths from fake_cpu.py's description of the emulated CPU. Used by scripts/arm-insn.py and
scripts/arm-profile.py; scripts/qemu-ort.sh does the same in shell.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def qemu_options(cpu, work):
    """`-E` options for `qemu-aarch64 -cpu CPU`; builds the shim and the tree under `work` once."""
    work = os.path.abspath(work)
    os.makedirs(work, exist_ok=True)
    so = os.path.join(work, "cpu_shim.so")
    src = os.path.join(HERE, "cpu_shim.c")
    if not os.path.exists(so) or os.path.getmtime(so) < os.path.getmtime(src):
        subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-shared", "-fPIC", src, "-o", so, "-ldl"], check=True)
    tree = os.path.join(work, cpu)
    if not os.path.exists(os.path.join(tree, "proc", "cpuinfo")):
        subprocess.run([sys.executable, os.path.join(HERE, "fake_cpu.py"), "--cpu", cpu, "--cpus", "1",
                        "--out", tree], check=True, stdout=subprocess.DEVNULL)
    return ["-E", f"LD_PRELOAD={so}", "-E", f"QWM_FAKE_CPU_ROOT={tree}"]
