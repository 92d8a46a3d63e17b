#!/usr/bin/env python3
"""Write the CPU description cpu_shim.c serves to an aarch64 program under qemu-user.

    scripts/qemu-cpu/fake_cpu.py --cpu cortex-a76|cortex-a53 --cpus N --out DIR

DIR/proc/cpuinfo and DIR/sys/devices/system/cpu/ as Linux writes them on a board with N cores of
that CPU (one cluster): the identification (MIDR, "CPU part"), the feature list, the topology and
the caches. The numbers are the cores' documented ones (Arm's technical reference manuals); they
steer ONNX Runtime's choice of kernels and block sizes the way a board would.
"""

import argparse
import os

# name -> (MIDR, /proc/cpuinfo Features, caches [(level, type, KiB, ways, shared by all cores)])
CPUS = {
    "cortex-a76": (
        0x414FD0B1,
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs",
        [(1, "Data", 64, 4, False), (1, "Instruction", 64, 4, False), (2, "Unified", 512, 8, False),
         (3, "Unified", 2048, 16, True)],
    ),
    "cortex-a53": (
        0x410FD034,
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid",
        [(1, "Data", 32, 4, False), (1, "Instruction", 32, 2, False), (2, "Unified", 512, 16, True)],
    ),
}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", required=True, choices=sorted(CPUS))
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cpus < 1:
        ap.error("--cpus must be at least 1")
    midr, features, caches = CPUS[a.cpu]
    n = a.cpus
    every = "0" if n == 1 else f"0-{n - 1}"
    blocks = []
    for i in range(n):
        blocks.append(
            f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\n"
            f"CPU implementer\t: 0x{midr >> 24:02x}\nCPU architecture: 8\n"
            f"CPU variant\t: 0x{(midr >> 20) & 0xF:x}\nCPU part\t: 0x{(midr >> 4) & 0xFFF:03x}\n"
            f"CPU revision\t: {midr & 0xF}\n"
        )
    write(os.path.join(a.out, "proc", "cpuinfo"), "\n".join(blocks))
    sys_cpu = os.path.join(a.out, "sys", "devices", "system", "cpu")
    for name in ("possible", "present", "online"):
        write(os.path.join(sys_cpu, name), every)
    write(os.path.join(sys_cpu, "kernel_max"), str(n - 1))
    for i in range(n):
        cpu = os.path.join(sys_cpu, f"cpu{i}")
        write(os.path.join(cpu, "regs", "identification", "midr_el1"), f"0x{midr:016x}")
        write(os.path.join(cpu, "cpufreq", "cpuinfo_max_freq"), "2400000")
        write(os.path.join(cpu, "cpufreq", "cpuinfo_min_freq"), "1000000")
        topo = os.path.join(cpu, "topology")
        for name, value in [("physical_package_id", "0"), ("cluster_id", "0"), ("core_id", str(i)),
                            ("cluster_cpus_list", every), ("core_siblings_list", every),
                            ("package_cpus_list", every), ("thread_siblings_list", str(i)),
                            ("core_cpus_list", str(i))]:
            write(os.path.join(topo, name), value)
        for idx, (level, kind, kib, ways, shared) in enumerate(caches):
            c = os.path.join(cpu, "cache", f"index{idx}")
            for name, value in [("level", str(level)), ("type", kind), ("size", f"{kib}K"),
                                ("ways_of_associativity", str(ways)), ("coherency_line_size", "64"),
                                ("number_of_sets", str(kib * 1024 // 64 // ways)),
                                ("shared_cpu_list", every if shared else str(i))]:
                write(os.path.join(c, name), value)
    print(f"wrote a {n}-core {a.cpu} under {a.out}")


if __name__ == "__main__":
    main()
