//! `core-ops-verify`: the VM-backed end-to-end verification harness and release gate.
//! All logic lives in the `core_ops_verify` library; this shim only turns its result into an exit
//! code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(core_ops_verify::cli::main())
}
