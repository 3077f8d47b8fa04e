//! The `bake` command line. Everything lives in the library; this only hands over.

fn main() -> std::process::ExitCode {
    bake::cli::main()
}
