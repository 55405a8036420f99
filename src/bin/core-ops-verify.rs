//! `core-ops-verify`: the VM-backed end-to-end verification harness and release gate.
//! All logic lives in `core_ops::verification`; this shim only turns its result into an exit
//! code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(core_ops::verification::cli::main())
}
