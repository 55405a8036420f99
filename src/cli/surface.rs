//! Operator surface generated from the clap definitions: shell completions
//! (`core-ops completions bash|zsh|fish`) and man pages (`core-ops manpages DIR`, hidden, used
//! by the package build).
//!
//! Why generated from the binary itself: the pages and completions can never drift from the
//! flags the shipped binary accepts, and nothing has to compile the CLI a second time in a
//! build script.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, ValueEnum};

use super::args::Cli;
use crate::error::Error;

/// Shells `core-ops completions` writes a script for.
///
/// Why these three: they are the shells Debian ships completion directories for
/// (`bash-completion`, zsh's `vendor-completions`, fish's `vendor_completions.d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// GNU bash (`/usr/share/bash-completion/completions/core-ops`).
    Bash,
    /// zsh (`/usr/share/zsh/vendor-completions/_core-ops`).
    Zsh,
    /// fish (`/usr/share/fish/vendor_completions.d/core-ops.fish`).
    Fish,
}

/// The completion script for `shell`.
///
/// Why a buffer: clap_complete panics when its writer fails (a closed pipe); the caller writes
/// the bytes and handles the error.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut cmd = visible(&Cli::command());
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    if shell == clap_complete::Shell::Bash {
        // clap_complete (<= 4.6.11) spells the case labels of a hyphenated binary's
        // subcommands `core__subcmd__ops__subcmd__apply` while its dispatch loop computes
        // `core__ops__subcmd__apply`, so no subcommand flag ever completes
        // (clap-rs/clap#6421). Use the loop's spelling; a no-op once that is fixed.
        let text = String::from_utf8_lossy(&out).replace("core__subcmd__ops", "core__ops");
        return text.into_bytes();
    }
    out
}

/// A copy of `cmd` without hidden arguments and subcommands.
///
/// Why: clap_complete offers hidden subcommands too, and `manpages` is for packaging only.
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        out = out.version(version.to_string());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(visible(sub));
    }
    out
}

/// Write `core-ops.1` and one `core-ops-<subcommand>[-<subcommand>].1` per visible
/// subcommand (recursively) into `dir`; returns the files written, sorted.
///
/// Why one page per subcommand: `man core-ops-apply` is how operators look up one command,
/// and it is what Debian packages of multi-command tools ship.
pub fn manpages(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    fn walk(cmd: clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, out)?;
        }
        let man = clap_mangen::Man::new(cmd).manual("core-ops manual");
        out.push(man.generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, dir, &mut out)
        .map_err(|e| Error::io(format!("write man pages to {}", dir.display()), e))?;
    out.sort();
    Ok(out)
}
