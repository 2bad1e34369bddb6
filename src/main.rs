//! The `herald` binary: parses the command line and runs one command.

fn main() -> std::process::ExitCode {
    herald::cli::main()
}
