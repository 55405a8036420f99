//! Operator surface generated from the clap definitions: shell completions
//! (`core-ops completions bash|zsh|fish`) and man pages (`core-ops manpages DIR`, hidden, used
//! by the package build).
//!
//! Why generated from the binary itself: the pages and completions can never drift from the
//! flags the shipped binary accepts, and nothing has to compile the CLI a second time in a
//! build script.

use std::io::Write;
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

/// Write the completion script for `shell` to `out`.
///
/// Why a writer: the command prints to stdout; tests and packaging capture it.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out),
    }
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
