//! The `drctl` binary: all logic lives in the library.

fn main() -> std::process::ExitCode {
    drctl::main()
}
