//! `core-ops-release`: the maintainer's release helper (`validate`, `check-environment`).
//! All logic lives in the `core_ops_release` library; this shim only turns its result into an exit code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(core_ops_release::cli::main())
}
