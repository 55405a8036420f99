//! Signed commits made the way an operator makes them: keys from `ssh-keygen -t ed25519`,
//! commits from `git commit -S` with `gpg.format=ssh`. Keys are generated at test time into
//! the caller's temp dir; no private key is ever part of the project.
//!
//! git runs with no system or global configuration (`GIT_CONFIG_NOSYSTEM`,
//! `GIT_CONFIG_GLOBAL=/dev/null`), fixed author/committer dates and the fixture identity, so a
//! developer's own git settings never leak into a test.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{FIXTURE_EMAIL, FIXTURE_NAME, FIXTURE_START};

/// An ed25519 key pair made by `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct SshKey {
    /// The private key file (what `user.signingkey` names).
    pub private: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA... comment`.
    pub public: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

impl SshKey {
    /// A new key `dir/<name>` (no passphrase).
    pub fn generate(dir: &Path, name: &str) -> SshKey {
        let private = dir.join(name);
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&private));
        let public = std::fs::read_to_string(private.with_extension("pub"))
            .expect("read the public key")
            .trim()
            .to_string();
        let listed = run(Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(private.with_extension("pub")));
        let fingerprint = listed
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .expect("ssh-keygen -l prints a SHA256 fingerprint")
            .to_string();
        SshKey {
            private,
            public,
            fingerprint,
        }
    }

    /// An allowed-signers line for this key.
    pub fn allowed_line(&self, principal: &str) -> String {
        format!("{principal} {}\n", self.public)
    }
}

/// A work tree driven by the git CLI.
#[derive(Debug)]
pub struct GitWork {
    /// The work tree.
    pub path: PathBuf,
    commits: i64,
}

impl GitWork {
    /// `git init -b main` at `path`.
    pub fn init(path: &Path) -> GitWork {
        std::fs::create_dir_all(path).expect("create the work tree");
        let w = GitWork {
            path: path.to_path_buf(),
            commits: 0,
        };
        w.git(&["init", "-q", "-b", "main"]);
        w
    }

    /// Run git in the work tree; its stdout, trimmed. Panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let date = format!("@{} +0000", FIXTURE_START + 60 * self.commits);
        run(Command::new("git")
            .current_dir(&self.path)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", FIXTURE_NAME)
            .env("GIT_AUTHOR_EMAIL", FIXTURE_EMAIL)
            .env("GIT_COMMITTER_NAME", FIXTURE_NAME)
            .env("GIT_COMMITTER_EMAIL", FIXTURE_EMAIL)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .args(args))
    }

    /// Replace the whole tree with `files` and commit it on the current branch, signed with
    /// `key` (`git commit -S`, `gpg.format=ssh`) or unsigned. Returns the commit id.
    pub fn commit(
        &mut self,
        files: &[(&str, &[u8])],
        key: Option<&SshKey>,
        message: &str,
    ) -> String {
        self.git(&["rm", "-rq", "--ignore-unmatch", "."]);
        for (rel, data) in files {
            let p = self.path.join(rel);
            std::fs::create_dir_all(p.parent().expect("a file has a parent")).expect("mkdir");
            std::fs::write(&p, data).expect("write a file of the commit");
        }
        self.git(&["add", "-A"]);
        match key {
            Some(k) => {
                let signing = format!("user.signingkey={}", k.private.display());
                self.git(&[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &signing,
                    "commit",
                    "-q",
                    "--allow-empty",
                    "-S",
                    "-m",
                    message,
                ])
            }
            None => self.git(&[
                "commit",
                "-q",
                "--allow-empty",
                "--no-gpg-sign",
                "-m",
                message,
            ]),
        };
        self.commits += 1;
        self.git(&["rev-parse", "HEAD"])
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
