//! Fetch a remote repository (`https://`, `ssh://`, scp-like, `git://`) into the bare mirror
//! with the `git` program, while git2 keeps reading the mirror in process.
//!
//! Why the git program and not libgit2's transports: libgit2 built with its https transport
//! initialises OpenSSL (loading the system CA bundle) on the first repository open, ~50 ms on
//! *every* run, local ones included; it has no TLS client certificates, and its ssh transport
//! (libssh2) reads no known_hosts file. `git` + OpenSSH + libcurl cost nothing until a run
//! talks to a remote, and bring proxies (`http.proxy`, `https_proxy`), CA bundles, client
//! certificates, ssh-agent and strict known_hosts checking as every operator knows them.
//!
//! What the child sees: no system or global git configuration (`GIT_CONFIG_NOSYSTEM`,
//! `GIT_CONFIG_GLOBAL=/dev/null`), no prompts, only the URL's own protocol
//! (`GIT_ALLOW_PROTOCOL`), and configuration passed through `GIT_CONFIG_COUNT`/`_KEY_n`/
//! `_VALUE_n` environment variables, never on the command line: the authorization header
//! and paths stay out of `ps`. Secrets are never logged; every message built from the child's
//! output has them scrubbed.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::credentials::{self, Credential};

pub use crate::config::{DEFAULT_FETCH_TIMEOUT, RemoteOptions};

/// Why a fetch failed, as far as the child's messages tell.
///
/// Why classes: the operator's next step differs (network, DNS, credentials, host key, CA),
/// and `status` and the error message name it in words a pager understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The host name did not resolve.
    Dns,
    /// No connection (refused, no route, reset).
    Unreachable,
    /// The fetch took longer than the timeout and was killed.
    Timeout,
    /// The server refused the credentials (or none were configured).
    Auth,
    /// The ssh host key is not pinned or differs from the pinned one.
    HostKey,
    /// The TLS certificate of the server did not verify.
    Tls,
    /// The repository does not exist on the server.
    NotFound,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Stable lower-case name (status.json, metrics label, messages).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Timeout => "timeout",
            FailureKind::Auth => "authentication",
            FailureKind::HostKey => "host_key",
            FailureKind::Tls => "tls",
            FailureKind::NotFound => "not_found",
            FailureKind::Other => "other",
        }
    }
}

/// Secrets of one fetch, scrubbed from every message built from the child's output.
#[derive(Default)]
struct Secrets(Vec<String>);

impl Secrets {
    fn add(&mut self, s: &str) {
        if s.len() >= 4 {
            self.0.push(s.to_string());
        }
    }
    fn scrub(&self, text: &str) -> String {
        let mut t = super::redact(text);
        for s in &self.0 {
            t = t.replace(s.as_str(), "(secret)");
        }
        t
    }
}

/// Everything the child process gets: environment and `git -c`-equivalent configuration.
struct Invocation {
    env: Vec<(String, OsString)>,
    config: Vec<(String, String)>,
    secrets: Secrets,
    timeout: Duration,
    /// The credential file used (named in authentication and host-key failures).
    credential_file: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
}

fn scheme(url: &str) -> &'static str {
    match url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()) {
        Some(s) if s == "https" => "https",
        Some(s) if s == "git" => "git",
        _ => "ssh",
    }
}

/// Single-quote `p` for the shell git runs `GIT_SSH_COMMAND` with.
fn shell_quote(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::Config(format!("path {} is not UTF-8", p.display())))?;
    if s.contains('\'') {
        return Err(Error::Config(format!(
            "path {s} contains a single quote, which core-ops does not pass to ssh"
        )));
    }
    Ok(format!("'{s}'"))
}

fn prepare(url: &str, location: &str, opts: &RemoteOptions) -> Result<Invocation> {
    let entries = credentials::load_dir(&opts.credentials_dir)?;
    let cred = credentials::for_url(&entries, url);
    if let Some(c) = cred {
        credentials::check_files(c)?;
    }
    let proto = scheme(url);
    let mut inv = Invocation {
        env: Vec::new(),
        config: vec![
            ("gc.auto".into(), "0".into()),
            ("maintenance.auto".into(), "false".into()),
            ("credential.helper".into(), String::new()),
            ("core.askPass".into(), String::new()),
        ],
        secrets: Secrets::default(),
        timeout: cred
            .and_then(|c| c.timeout)
            .map(Duration::from_secs)
            .unwrap_or(opts.timeout),
        credential_file: cred.map(|c| c.source_file.clone()),
        known_hosts: cred.and_then(|c| c.known_hosts.clone()),
    };
    inv.env.push(("GIT_ALLOW_PROTOCOL".into(), proto.into()));
    match proto {
        "https" => {
            let secs = inv.timeout.as_secs().max(1).to_string();
            // a stalled transfer (below 1 kB/s for the whole timeout) fails even before the kill
            inv.config
                .push(("http.lowSpeedLimit".into(), "1000".into()));
            inv.config.push(("http.lowSpeedTime".into(), secs));
            if let Some(c) = cred {
                https_config(c, &mut inv)?;
            }
        }
        "ssh" => ssh_config(location, cred, &mut inv)?,
        _ => {}
    }
    Ok(inv)
}

fn https_config(c: &Credential, inv: &mut Invocation) -> Result<()> {
    let header = match (&c.username, &c.password_file, &c.bearer_token_file) {
        (Some(user), Some(pw), _) => {
            let pw = credentials::read_secret(pw)?;
            inv.secrets.add(&pw);
            let basic = base64(format!("{user}:{pw}").as_bytes());
            inv.secrets.add(&basic);
            Some(format!("Authorization: Basic {basic}"))
        }
        (_, _, Some(tok)) => {
            let tok = credentials::read_secret(tok)?;
            inv.secrets.add(&tok);
            Some(format!("Authorization: Bearer {tok}"))
        }
        _ => None,
    };
    if let Some(h) = header {
        inv.config.push(("http.extraHeader".into(), h));
        // the header must never follow a redirect to another server
        inv.config
            .push(("http.followRedirects".into(), "false".into()));
    }
    let path = |p: &Path| p.display().to_string();
    if let Some(ca) = &c.ca_file {
        inv.config.push(("http.sslCAInfo".into(), path(ca)));
    }
    if let Some(cert) = &c.client_cert {
        inv.config.push(("http.sslCert".into(), path(cert)));
        let key = c.client_key.as_deref().unwrap_or(cert);
        inv.config.push(("http.sslKey".into(), path(key)));
    }
    if let Some(proxy) = &c.proxy {
        inv.config.push(("http.proxy".into(), proxy.clone()));
    }
    Ok(())
}

fn ssh_config(location: &str, cred: Option<&Credential>, inv: &mut Invocation) -> Result<()> {
    let Some((c, kh)) = cred.and_then(|c| c.known_hosts.as_deref().map(|kh| (c, kh))) else {
        return Err(Error::Fetch(format!(
            "{location}: no pinned host key: an ssh remote needs an entry with `url:` matching \
             it and `known_hosts:` (a known_hosts file with the server's key) in the \
             credentials directory; core-ops never trusts a host key on first use"
        )));
    };
    let mut cmd = vec![
        "ssh".to_string(),
        "-F /dev/null".into(),
        format!("-o UserKnownHostsFile={}", shell_quote(kh)?),
        "-o GlobalKnownHostsFile=/dev/null".into(),
        "-o StrictHostKeyChecking=yes".into(),
        "-o UpdateHostKeys=no".into(),
        "-o HashKnownHosts=no".into(),
        "-o CheckHostIP=no".into(),
        "-o PasswordAuthentication=no".into(),
        "-o KbdInteractiveAuthentication=no".into(),
        format!("-o ConnectTimeout={}", inv.timeout.as_secs().max(1)),
        "-o ServerAliveInterval=15".into(),
        "-o ServerAliveCountMax=3".into(),
        // the server's key fingerprint is printed at this level: a refusal names it
        "-o LogLevel=DEBUG1".into(),
    ];
    if let Some(key) = &c.ssh_key {
        cmd.push(format!("-i {}", shell_quote(key)?));
        if !c.ssh_agent {
            cmd.push("-o IdentitiesOnly=yes".into());
        }
    }
    if !c.ssh_agent {
        cmd.push("-o IdentityAgent=none".into());
    }
    match &c.ssh_passphrase_file {
        Some(pass) => {
            // ssh asks core-ops itself for the passphrase (main.rs answers the prompt from
            // this file); the passphrase is never in an environment variable or argument
            let exe = std::env::current_exe()
                .map_err(|e| Error::io("find the core-ops executable for SSH_ASKPASS", e))?;
            inv.env.push(("SSH_ASKPASS".into(), exe.into_os_string()));
            inv.env.push(("SSH_ASKPASS_REQUIRE".into(), "force".into()));
            inv.env
                .push((ASKPASS_ENV.into(), pass.clone().into_os_string()));
            inv.secrets.add(&credentials::read_secret(pass)?);
            cmd.push("-o BatchMode=no".into());
            cmd.push("-o NumberOfPasswordPrompts=1".into());
        }
        None => cmd.push("-o BatchMode=yes".into()),
    }
    inv.env
        .push(("GIT_SSH_COMMAND".into(), cmd.join(" ").into()));
    inv.env.push(("GIT_SSH_VARIANT".into(), "ssh".into()));
    Ok(())
}

/// Environment variable naming the passphrase file `core-ops` prints when ssh runs it as
/// `SSH_ASKPASS` (see `main.rs`).
pub const ASKPASS_ENV: &str = "CORE_OPS_ASKPASS_FILE";

/// When ssh started this process as `SSH_ASKPASS` (the fetch set [`ASKPASS_ENV`] and
/// `SSH_ASKPASS_REQUIRE`, ssh passes one argument, the prompt): print the passphrase from the
/// root-only file and return the exit code; `None` for every ordinary invocation.
///
/// Why core-ops itself: the passphrase then never sits in an environment variable, an
/// argument or a helper script, and no second program has to be installed.
pub fn askpass() -> Option<std::process::ExitCode> {
    let file = std::env::var_os(ASKPASS_ENV)?;
    std::env::var_os("SSH_ASKPASS_REQUIRE")?;
    if std::env::args_os().len() > 2 {
        return None;
    }
    match credentials::read_secret(Path::new(&file)) {
        Ok(p) => {
            println!("{p}");
            Some(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("core-ops (askpass): {e}");
            Some(std::process::ExitCode::from(1))
        }
    }
}

/// Standard base64 (RFC 4648, with padding), for the basic-auth header.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What one child run produced.
struct Finished {
    ok: bool,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

/// Run git with the invocation's environment, killing its whole process group (git, ssh,
/// remote helpers) at the timeout.
fn run_git(git: &Path, args: &[&str], inv: &Invocation) -> Result<Finished> {
    let mut cmd = Command::new(git);
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("GIT_") || k.starts_with("SSH_ASKPASS") || k == ASKPASS_ENV)
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_COUNT", inv.config.len().to_string());
    for (i, (k, v)) in inv.config.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
            .env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    for (k, v) in &inv.env {
        cmd.env(k, v);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        Error::Fetch(format!(
            "cannot run {} (the git program fetches remote repositories; install the `git` \
             package, or set CORE_OPS_GIT): {e}",
            git.display()
        ))
    })?;
    let pid = child.id();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // stdout on this thread, stderr on a helper: neither pipe can fill up and block git
        let e = std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(e) = err.as_mut() {
                let _ = e.take(1 << 20).read_to_end(&mut s);
            }
            s
        });
        let mut o = Vec::new();
        if let Some(out) = out.as_mut() {
            let _ = out.take(1 << 20).read_to_end(&mut o);
        }
        let e = e.join().unwrap_or_default();
        let status = child.wait();
        let _ = tx.send((status, o, e));
    });
    let (timed_out, (status, o, e)) = match rx.recv_timeout(inv.timeout) {
        Ok(r) => (false, r),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            match rx.recv() {
                Ok(r) => (true, r),
                Err(_) => return Err(Error::Fetch("git child vanished".into())),
            }
        }
    };
    let status = status.map_err(|e| Error::Fetch(format!("wait for {}: {e}", git.display())))?;
    Ok(Finished {
        ok: status.success() && !timed_out,
        stdout: String::from_utf8_lossy(&o).into_owned(),
        stderr: String::from_utf8_lossy(&e).into_owned(),
        timed_out,
    })
}

/// The kind of failure the child's messages describe.
pub fn classify(stderr: &str, timed_out: bool) -> FailureKind {
    let s = stderr.to_ascii_lowercase();
    let has = |p: &str| s.contains(p);
    if timed_out || has("timed out") || has("timeout was reached") {
        FailureKind::Timeout
    } else if has("host key verification failed")
        || has("remote host identification has changed")
        || has("no host key is known")
    {
        FailureKind::HostKey
    } else if has("could not resolve host")
        || has("could not resolve hostname")
        || has("name or service not known")
        || has("temporary failure in name resolution")
    {
        FailureKind::Dns
    } else if has("permission denied (publickey")
        || has("authentication failed")
        || has("http 401")
        || has("http 403")
        || has("the requested url returned error: 401")
        || has("the requested url returned error: 403")
        || has("incorrect passphrase")
        || has("could not read username")
    {
        FailureKind::Auth
    } else if has("ssl certificate problem")
        || has("server certificate verification failed")
        || has("certificate verify failed")
        || has("ssl_connect")
        || has("tls connect error")
        || has("tls fatal alert")
        || has("alert certificate required")
    {
        FailureKind::Tls
    } else if has("connection refused")
        || has("failed to connect")
        || has("no route to host")
        || has("network is unreachable")
        || has("connection reset")
        || has("connection closed by")
        || has("unable to connect")
        || has("couldn't connect")
    {
        FailureKind::Unreachable
    } else if has("not found")
        || has("does not appear to be a git repository")
        || has("repository not exported")
        || has("returned error: 404")
    {
        FailureKind::NotFound
    } else {
        FailureKind::Other
    }
}

/// The lines of the child's stderr worth showing: ssh's debug chatter dropped except the
/// server key it saw; at most 8 lines.
fn summary(stderr: &str) -> (String, Option<String>) {
    let mut key = None;
    let mut lines = Vec::new();
    for l in stderr.lines() {
        let l = l.trim();
        if let Some(k) = l.strip_prefix("debug1: Server host key: ") {
            key = Some(k.to_string());
            continue;
        }
        if l.is_empty()
            || l.starts_with("debug1:")
            || l.starts_with('@')
            || l.starts_with("Pseudo")
            || l.starts_with("fatal: Could not read from remote repository")
            || l.starts_with("Please make sure you have the correct access rights")
            || l.starts_with("and the repository exists")
        {
            continue;
        }
        if lines.len() < 8 {
            lines.push(l.to_string());
        }
    }
    (lines.join("; "), key)
}

/// The error of a failed child run: kind, what to check, and the child's own words (secrets
/// scrubbed).
fn failure(location: &str, what: &str, f: &Finished, inv: &Invocation) -> Error {
    let kind = classify(&f.stderr, f.timed_out);
    let (said, key) = summary(&f.stderr);
    // a host-key refusal is fully described by the key seen and the file; ssh's banner
    // around it (the MITM warning, "remove with ...") would only bury them
    let said = if kind == FailureKind::HostKey {
        String::new()
    } else {
        inv.secrets.scrub(&said)
    };
    let hint = match kind {
        FailureKind::Timeout => format!(
            "no answer within {} s (--fetch-timeout, CORE_OPS_FETCH_TIMEOUT, or `timeout:` in \
             the credential entry)",
            inv.timeout.as_secs()
        ),
        FailureKind::HostKey => format!(
            "the server presented {}, which is not pinned in {}; if the server's key really \
             changed, put the new key there",
            key.as_deref().unwrap_or("a host key"),
            inv.known_hosts
                .as_ref()
                .map_or("the known_hosts file".to_string(), |p| p
                    .display()
                    .to_string())
        ),
        FailureKind::Auth => match &inv.credential_file {
            Some(f) => format!("the server refused the credentials of {}", f.display()),
            None => "the server wants credentials and no entry of the credentials \
                     directory matches this URL"
                .to_string(),
        },
        FailureKind::Tls => {
            "the server's TLS certificate did not verify (ca_file in the credential entry \
             names a private CA bundle)"
                .to_string()
        }
        FailureKind::Dns => "the server's name does not resolve".to_string(),
        FailureKind::Unreachable => "the server cannot be reached".to_string(),
        FailureKind::NotFound => "the server has no such repository".to_string(),
        FailureKind::Other => "git failed".to_string(),
    };
    Error::Fetch(format!(
        "{what} {location} failed ({}): {hint}{}",
        kind.as_str(),
        if said.is_empty() {
            String::new()
        } else {
            format!(" [git: {said}]")
        }
    ))
}

/// The failure class of an error returned by [`fetch`] (from its message).
pub fn kind_of(message: &str) -> FailureKind {
    for k in [
        FailureKind::Dns,
        FailureKind::Unreachable,
        FailureKind::Timeout,
        FailureKind::Auth,
        FailureKind::HostKey,
        FailureKind::Tls,
        FailureKind::NotFound,
    ] {
        if message.contains(&format!("failed ({})", k.as_str())) {
            return k;
        }
    }
    if message.contains("no pinned host key") {
        return FailureKind::HostKey;
    }
    FailureKind::Other
}

/// Fetch branches and tags of `url` into the bare mirror at `mirror` (pruned); with
/// `follow_head`, also point the mirror's `HEAD` at the remote's default branch (one more
/// round trip, done when the mirror is created).
pub fn fetch(
    mirror: &Path,
    url: &str,
    location: &str,
    opts: &RemoteOptions,
    follow_head: bool,
) -> Result<()> {
    let started = Instant::now();
    let inv = prepare(url, location, opts)?;
    let git_dir = format!("--git-dir={}", mirror.display());
    let mut args = vec![
        git_dir.as_str(),
        "fetch",
        "--prune",
        "--no-tags",
        "--no-write-fetch-head",
        "--no-recurse-submodules",
        "--quiet",
        url,
    ];
    args.extend(super::MIRROR_REFSPECS);
    let f = run_git(&opts.git, &args, &inv)?;
    if !f.ok {
        return Err(failure(location, "fetch", &f, &inv));
    }
    if follow_head {
        let f = run_git(
            &opts.git,
            &[&git_dir, "ls-remote", "--symref", url, "HEAD"],
            &inv,
        )?;
        if !f.ok {
            return Err(failure(location, "ls-remote", &f, &inv));
        }
        if let Some(target) = f
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("ref: ")?.strip_suffix("\tHEAD"))
        {
            let repo = git2::Repository::open_bare(mirror).map_err(|e| {
                Error::Source(format!("open mirror {}: {}", mirror.display(), e.message()))
            })?;
            if repo.find_reference(target).is_ok() {
                repo.set_head(target)
                    .map_err(|e| Error::Source(format!("set HEAD of mirror: {}", e.message())))?;
            }
        }
    }
    tracing::debug!(
        repo = location,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "fetched with git"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn classifies_what_git_ssh_and_curl_say() {
        let c = |s: &str| classify(s, false);
        assert_eq!(
            c(
                "ssh: connect to host 127.0.0.1 port 2299: Connection refused\nfatal: Could not read from remote repository."
            ),
            FailureKind::Unreachable
        );
        assert_eq!(
            c(
                "No ED25519 host key is known for [127.0.0.1]:2299 and you have requested strict checking.\nHost key verification failed."
            ),
            FailureKind::HostKey
        );
        assert_eq!(
            c(
                "root@127.0.0.1: Permission denied (publickey).\nfatal: Could not read from remote repository."
            ),
            FailureKind::Auth
        );
        assert_eq!(
            c("fatal: Authentication failed for 'https://127.0.0.1:8443/r.git/'"),
            FailureKind::Auth
        );
        assert_eq!(
            c(
                "fatal: unable to access 'https://nx.invalid/r.git/': Could not resolve host: nx.invalid"
            ),
            FailureKind::Dns
        );
        assert_eq!(
            c(
                "fatal: unable to access 'https://127.0.0.1:1/r/': Failed to connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server"
            ),
            FailureKind::Unreachable
        );
        assert_eq!(
            c(
                "fatal: unable to access 'https://127.0.0.1:8443/r/': SSL certificate problem: unable to get local issuer certificate"
            ),
            FailureKind::Tls
        );
        assert_eq!(
            c(
                "fatal: unable to access 'https://127.0.0.1:46797/git/r.git/': GnuTLS recv error (-12): A TLS fatal alert has been received."
            ),
            FailureKind::Tls
        );
        assert_eq!(classify("", true), FailureKind::Timeout);
        let e = Error::Fetch("fetch x failed (host_key): y".into()).to_string();
        assert_eq!(kind_of(&e), FailureKind::HostKey);
    }

    #[test]
    fn summary_keeps_the_server_key_and_drops_debug_chatter() {
        let (said, key) = summary(
            "debug1: Connecting to 127.0.0.1\ndebug1: Server host key: ssh-ed25519 SHA256:abc\n@@@@\nHost key verification failed.\nfatal: Could not read from remote repository.\n",
        );
        assert_eq!(key.as_deref(), Some("ssh-ed25519 SHA256:abc"));
        assert_eq!(said, "Host key verification failed.");
        let mut s = Secrets::default();
        s.add("hunter22");
        assert_eq!(
            s.scrub("bad hunter22 at https://u:p@h/x"),
            "bad (secret) at https://h/x"
        );
    }
}
