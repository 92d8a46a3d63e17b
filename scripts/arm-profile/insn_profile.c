/* insn_profile: a QEMU user-mode TCG plugin (plugin API version 1, Debian 12's qemu-user 7.2) that
 * counts the guest instructions each translated block executes and, at exit, prints one line per
 * block: `insn_profile BLOCK_VADDR INSNS_PER_EXEC EXECS`. scripts/arm-profile.py folds the lines into
 * functions with the binary's symbol table: where an aarch64 qwm's executed instructions go, the
 * profile qemu can give without a board (../shared/tools/arm-insn counts the totals).
 * Build: cc -shared -fPIC -O2 -o insn_profile.so insn_profile.c
 * Use:   qemu-aarch64 -cpu cortex-a76 -plugin ./insn_profile.so -d plugin -D prof.txt BINARY ARGS
 * Execution counts use atomic adds, so they are exact with any number of guest threads. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The declarations this plugin needs from QEMU's plugin interface (qemu-plugin.h). */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*udata_cb)(qemu_plugin_id_t id, void *userdata);
typedef void (*vcpu_udata_cb)(unsigned int vcpu_index, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, vcpu_udata_cb cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* One translation of a block (a block retranslated gets a second record; the script adds them). */
struct block {
    uint64_t vaddr, insns, execs;
    struct block *next;
};
static struct block *blocks;

static void on_exec(unsigned int vcpu, void *udata) {
    (void)vcpu;
    __atomic_fetch_add(&((struct block *)udata)->execs, 1, __ATOMIC_RELAXED);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    struct block *b = calloc(1, sizeof *b);
    if (b == NULL) abort();
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->insns = qemu_plugin_tb_n_insns(tb);
    /* Translation is serialized by QEMU; the list only grows. */
    b->next = __atomic_load_n(&blocks, __ATOMIC_ACQUIRE);
    __atomic_store_n(&blocks, b, __ATOMIC_RELEASE);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void report_at_exit(qemu_plugin_id_t id, void *p) {
    (void)id;
    (void)p;
    char line[96];
    for (struct block *b = blocks; b != NULL; b = b->next) {
        if (b->execs == 0) continue;
        snprintf(line, sizeof line, "insn_profile %" PRIx64 " %" PRIu64 " %" PRIu64 "\n", b->vaddr,
                 b->insns, b->execs);
        qemu_plugin_outs(line);
    }
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    (void)info;
    (void)argc;
    (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, report_at_exit, NULL);
    return 0;
}
