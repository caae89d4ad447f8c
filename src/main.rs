//! The `toolgate` binary: everything lives in the library; this only hands over the process
//! and chooses the allocator.

mod alloc;

/// Blocks below this many bytes come from mimalloc, the rest from glibc (`src/alloc.rs` says
/// why). A gateway's per-message buffers are well below it (glibc's `malloc` does not appear
/// in a callgrind profile of `serve` under the `gateway_http` bench, so a higher threshold
/// would save nothing); an oversized message is above it and its memory goes back to the
/// system when it is freed.
const SMALL_BELOW: usize = 64 * 1024;

#[global_allocator]
static ALLOCATOR: alloc::Split<alloc::Mimalloc, SMALL_BELOW> = alloc::Split::new(alloc::Mimalloc);

fn main() -> std::process::ExitCode {
    toolgate::cli::main()
}
