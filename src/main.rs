//! The `toolgate` binary: everything lives in the library; this only hands over the process.

/// mimalloc instead of the system allocator: a gateway allocates and frees small buffers for
/// every message (lines, ids, events, audit records), and glibc's malloc and free were the
/// largest single share of its instructions per call (issue 15; `scripts/instructions-per-call`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    toolgate::cli::main()
}
