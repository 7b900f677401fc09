//! The `moltgate` binary; see `moltgate --help`.

fn main() -> std::process::ExitCode {
    moltgate::cli::main()
}
