//! An ssh:// repository on a real OpenSSH sshd on loopback with a pinned host key
//! (scripts/git-servers.sh), applied by `core-ops agent` in the systemd test bed: first apply
//! with a deploy key, a pushed change with a passphrase-protected key, the key held by an
//! ssh-agent only, a key the server does
//! not accept, an unknown and a changed host key (refused with the fingerprint seen), the
//! server stopped (exit 5, host unchanged, status, metric) and the retry; no secret anywhere.

mod common;

use common::remote::{Remote, servers};

#[test]
fn ssh_remote_with_pinned_host_key_applies_refuses_unknown_keys_and_never_leaks() {
    let Some(srv) = servers(&["ssh"]) else {
        return;
    };
    let base = srv.get("CORE_OPS_GITSRV_SSH_URL");
    let repos = srv.get("CORE_OPS_GITSRV_REPOS");
    let Some(mut r) = Remote::new("ssh", srv, |name| format!("{base}{repos}/{name}")) else {
        return;
    };
    let prefix = format!("{}/", base.replace("root@", ""));
    let kh = srv.get("CORE_OPS_GITSRV_SSH_KNOWN_HOSTS");
    let key = srv.get("CORE_OPS_GITSRV_SSH_KEY");
    let entry = |key: &str, kh: &str, extra: &str| {
        format!("url: {prefix}\nssh_key: {key}\nknown_hosts: {kh}\n{extra}")
    };
    let passphrase_file = srv.get("CORE_OPS_GITSRV_SSH_PASSPHRASE_FILE");
    r.secrets.push(
        std::fs::read_to_string(&passphrase_file)
            .unwrap()
            .trim()
            .to_string(),
    );
    // the private key's body must not leak either
    let key_text = std::fs::read_to_string(&key).unwrap();
    r.secrets.push(key_text.lines().nth(2).unwrap().to_string());

    // 1. first apply with the deploy key
    r.credential(&entry(&key, &kh, ""));
    r.apply_first();

    // 2. a pushed change, fetched with the passphrase-protected key (ssh asks core-ops itself)
    r.credential(&entry(
        &srv.get("CORE_OPS_GITSRV_SSH_PASS_KEY"),
        &kh,
        &format!("ssh_passphrase_file: {passphrase_file}\n"),
    ));
    let v2 = r.apply_pushed_change("2", "pushed change, passphrase key");
    assert!(
        r.w.show(&r.w.unit("web"), "Environment")
            .contains("LEVEL=2")
    );

    // 3. a no-change tick
    r.credential(&entry(&key, &kh, ""));
    r.no_change_tick("ssh");

    // 3b. the deploy key held by an ssh-agent only (SSH_AUTH_SOCK), no key file in the entry
    let sock = r.w.s.path("agent.sock");
    let out = std::process::Command::new("ssh-agent")
        .args(["-s", "-a", sock.to_str().unwrap()])
        .output()
        .expect("ssh-agent (openssh-client)");
    let agent_pid = String::from_utf8_lossy(&out.stdout)
        .split(';')
        .find_map(|p| p.trim().strip_prefix("SSH_AGENT_PID=").map(str::to_string))
        .expect("ssh-agent prints its pid");
    let added = std::process::Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(added.status.success(), "ssh-add: {added:?}");
    r.credential(&format!(
        "url: {prefix}\nssh_agent: true\nknown_hosts: {kh}\n"
    ));
    let o = r.w.s.run_env(
        &["agent", "--repo", &r.url, "--rev", "main", "--host", "h"],
        &[("SSH_AUTH_SOCK", sock.to_str().unwrap())],
    );
    let _ = std::process::Command::new("kill").arg(&agent_pid).status();
    let err = common::cli::stderr(&o);
    r.outputs.borrow_mut().push(err.clone());
    assert_eq!(o.status.code(), Some(0), "through ssh-agent: {err}");

    // 4. a key the server does not accept
    r.credential(&entry(
        &srv.get("CORE_OPS_GITSRV_SSH_STRANGER_KEY"),
        &kh,
        "",
    ));
    let (code, _, err) = r.agent();
    assert_eq!(code, 5, "wrong key: {err}");
    assert!(err.contains("(authentication)"), "{err}");
    assert_eq!(r.last_applied(), v2);

    // 5. unknown and changed host keys: refused, naming the fingerprint the server presented
    let fp = srv.get("CORE_OPS_GITSRV_SSH_HOST_FINGERPRINT");
    for (what, file) in [
        ("unknown", "CORE_OPS_GITSRV_SSH_EMPTY_KNOWN_HOSTS"),
        ("changed", "CORE_OPS_GITSRV_SSH_WRONG_KNOWN_HOSTS"),
    ] {
        let f = srv.get(file);
        r.credential(&entry(&key, &f, ""));
        let (code, _, err) = r.agent();
        assert_eq!(code, 5, "{what} host key: {err}");
        assert!(err.contains("(host_key)"), "{what}: {err}");
        assert!(
            err.contains(&fp),
            "{what}: the fingerprint {fp} seen: {err}"
        );
        assert!(
            err.contains(&f),
            "{what}: names the known_hosts file: {err}"
        );
    }
    // no entry at all: no trust on first use
    r.credential("url: https://elsewhere.invalid/\n");
    let (code, _, err) = r.agent();
    assert_eq!(code, 5, "no pinned key: {err}");
    assert!(err.contains("no pinned host key"), "{err}");
    assert_eq!(r.last_applied(), v2);

    // 6. the server stopped
    r.credential(&entry(&key, &kh, ""));
    srv.stop("ssh");
    let (code, _, err) = r.agent();
    srv.start("ssh");
    assert_eq!(code, 5, "server stopped: {err}");
    assert!(err.contains("(unreachable)"), "{err}");
    let st = r.status_json();
    assert_eq!(st["snapshot"]["last_run"]["outcome"], "fetch_failed");
    assert_eq!(st["fetch"]["failures_total"], 5, "{st:#}");
    assert_eq!(r.metric("core_ops_fetch_failures_total"), Some(5.0));
    assert_eq!(r.w.show(&r.w.unit("web"), "ActiveState"), "active");

    // 7. the retry
    let (code, _, err) = r.agent();
    assert_eq!(code, 0, "retry: {err}");
    assert_eq!(r.status_json()["fetch"]["consecutive_failures"], 0);

    r.assert_no_leak();
    r.w.teardown();
}
