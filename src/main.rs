//! The `qwm` binary: installs the counting allocator (memory limits and heap peaks) and hands the
//! command line to [`qwm::cli`].

#[global_allocator]
static ALLOC: qwm::util::mem::CountingAlloc = qwm::util::mem::CountingAlloc;

fn main() {
    std::process::exit(qwm::cli::main());
}
