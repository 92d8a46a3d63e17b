/*
 * cpu_shim.c: an LD_PRELOAD library for aarch64 programs under qemu-user that shows them the
 * emulated CPU the way a board's Linux describes it (scripts/qemu-ort.sh and
 * scripts/qemu-cpu/board.py build it and the tree it points at).
 *
 * Why: qemu-user passes /proc/cpuinfo and /sys/devices/system/cpu through to the x86 host.
 * - ONNX Runtime's CPU detection (pytorch's cpuinfo) reads them while its library loads, parses an
 *   x86 /proc/cpuinfo (no "CPU part" lines) and the host's cache topology, and dereferences NULL
 *   before `dlopen` returns (qemu-aarch64 -strace: the fault follows the last read of
 *   .../cache/index2/shared_cpu_list).
 * - tract-linalg chooses its arm64 kernels by the "CPU part" of /proc/cpuinfo; without one it runs
 *   its generic kernels, where an A53 board gets the ones scheduled for that core.
 * With this library preloaded into the guest (qemu-aarch64 -E LD_PRELOAD=...), those paths are
 * served from the directory QWM_FAKE_CPU_ROOT (scripts/qemu-cpu/fake_cpu.py writes it for the
 * QEMU_CPU being emulated: MIDR, features, topology, caches).
 *
 * Only absolute paths equal to /proc/cpuinfo or under /sys/devices/system/cpu are redirected, and
 * only while QWM_FAKE_CPU_ROOT is set; every other open is passed through unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static const char CPUINFO[] = "/proc/cpuinfo";
static const char SYSCPU[] = "/sys/devices/system/cpu";

/* The path to open instead of `path`: `path` itself unless it is one of the redirected ones. */
static const char *redirect(const char *path, char *buf, size_t len) {
    const char *root = getenv("QWM_FAKE_CPU_ROOT");
    if (root == NULL || path == NULL || path[0] != '/') return path;
    size_t n = strlen(SYSCPU);
    int ours = strcmp(path, CPUINFO) == 0 ||
               (strncmp(path, SYSCPU, n) == 0 && (path[n] == '\0' || path[n] == '/'));
    if (!ours) return path;
    int w = snprintf(buf, len, "%s%s", root, path);
    return (w > 0 && (size_t)w < len) ? buf : path;
}

/* The next definition of `name` after this library (the C library's). */
static void *next(const char *name) {
    void *f = dlsym(RTLD_NEXT, name);
    if (f == NULL) {
        fprintf(stderr, "cpu_shim: %s not found in the C library\n", name);
        abort();
    }
    return f;
}

/* open(2)'s mode argument is read only when the flags can create a file. */
#define MODE_ARG(flags, mode)                                 \
    do {                                                      \
        if ((flags) & (O_CREAT | __O_TMPFILE)) {              \
            va_list ap;                                       \
            va_start(ap, flags);                              \
            mode = (mode_t)va_arg(ap, int);                   \
            va_end(ap);                                       \
        }                                                     \
    } while (0)

/* open(path, flags[, mode]) and its 64-bit alias, forwarded to the C library's with `path`
 * redirected. */
#define OPEN(name)                                                       \
    int name(const char *path, int flags, ...) {                         \
        static int (*real)(const char *, int, ...);                      \
        mode_t mode = 0;                                                 \
        char buf[4096];                                                  \
        MODE_ARG(flags, mode);                                           \
        if (real == NULL) real = next(#name);                            \
        return real(redirect(path, buf, sizeof buf), flags, mode);       \
    }

/* openat(dirfd, path, flags[, mode]) and its alias: an absolute path ignores `dirfd`. */
#define OPENAT(name)                                                     \
    int name(int dirfd, const char *path, int flags, ...) {              \
        static int (*real)(int, const char *, int, ...);                 \
        mode_t mode = 0;                                                 \
        char buf[4096];                                                  \
        MODE_ARG(flags, mode);                                           \
        if (real == NULL) real = next(#name);                            \
        return real(dirfd, redirect(path, buf, sizeof buf), flags, mode); \
    }

/* fopen(path, how) and its alias. */
#define FOPEN(name)                                                      \
    FILE *name(const char *path, const char *how) {                      \
        static FILE *(*real)(const char *, const char *);                \
        char buf[4096];                                                  \
        if (real == NULL) real = next(#name);                            \
        return real(redirect(path, buf, sizeof buf), how);               \
    }

OPEN(open)
OPEN(open64)
OPENAT(openat)
OPENAT(openat64)
FOPEN(fopen)
FOPEN(fopen64)
