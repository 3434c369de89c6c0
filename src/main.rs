//! The `auditrelay` binary: everything happens in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    auditrelay::cli::main()
}
