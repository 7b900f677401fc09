//! The `moltgate` binary; see `moltgate --help`.

/// mimalloc instead of glibc malloc: under load, allocation was the largest
/// single cost of the gateway's plumbing (benches/README.md, issue 11).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    moltgate::cli::main()
}
