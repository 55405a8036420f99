//! An https:// repository behind a real TLS web server on loopback (lighttpd + git
//! http-backend, basic auth, a CA made by scripts/git-servers.sh), applied by `core-ops agent`
//! in the systemd test bed: first apply, a pushed change, a no-change tick, a wrong password,
//! a CA the host does not trust, a client certificate the server demands, a proxy (from the
//! credential entry and from `https_proxy`), the server stopped (exit 5, host unchanged,
//! status, metric) and started again (the next tick retries); no secret in any record or
//! output.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::remote::{Remote, base64, servers};

/// A minimal HTTP CONNECT proxy on loopback; counts the tunnels it opened.
fn connect_proxy() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let target = line
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split(' ').next())
                    .unwrap_or_default()
                    .to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let Ok(upstream) = TcpStream::connect(&target) else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut c = client;
                c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut c2, mut u2) = (c.try_clone().unwrap(), upstream.try_clone().unwrap());
                let mut u = upstream;
                std::thread::spawn(move || std::io::copy(&mut u2, &mut c2));
                let _ = std::io::copy(&mut reader, &mut u);
            });
        }
    });
    (port, seen)
}

#[test]
fn https_remote_with_basic_auth_applies_fails_safely_and_never_leaks() {
    let Some(srv) = servers(&["https"]) else {
        return;
    };
    let base = srv.get("CORE_OPS_GITSRV_HTTPS_URL");
    let Some(mut r) = Remote::new("https", srv, |name| format!("{base}/{name}")) else {
        return;
    };
    let password_file = srv.get("CORE_OPS_GITSRV_HTTPS_PASSWORD_FILE");
    let password = std::fs::read_to_string(&password_file)
        .unwrap()
        .trim()
        .to_string();
    r.secrets.push(password.clone());
    r.secrets
        .push(base64(format!("deploy:{password}").as_bytes()));
    let ca = srv.get("CORE_OPS_GITSRV_HTTPS_CA");
    let good =
        format!("url: {base}/\nusername: deploy\npassword_file: {password_file}\nca_file: {ca}\n");
    r.credential(&good);

    // 1. first apply
    r.apply_first();
    assert_eq!(r.w.show(&r.w.unit("web"), "ActiveState"), "active");
    let mirror = r.w.s.path("state/mirrors");
    assert_eq!(std::fs::read_dir(&mirror).unwrap().count(), 1, "one mirror");

    // 2. a pushed change is applied
    let v2 = r.apply_pushed_change("2", "pushed change");
    assert!(
        r.w.show(&r.w.unit("web"), "Environment")
            .contains("LEVEL=2")
    );

    // 3. a no-change tick: one fetch round trip, nothing else
    r.no_change_tick("https");

    // 4. a wrong password: exit 5, named as an authentication failure, host unchanged
    let wrong = r.private_file("wrong-password", "not-the-password\n");
    r.credential(&format!(
        "url: {base}/\nusername: deploy\npassword_file: {}\nca_file: {ca}\n",
        wrong.display()
    ));
    let (code, _, err) = r.agent();
    assert_eq!(code, 5, "wrong password: {err}");
    assert!(err.contains("authentication"), "{err}");
    assert!(
        err.contains("remote.yaml"),
        "names the credential entry: {err}"
    );
    assert_eq!(r.last_applied(), v2);
    assert_eq!(r.metric("core_ops_fetch_failures_total"), Some(1.0));
    // no credentials at all: the server asks for them, git must not prompt
    r.credential(&format!("url: {base}/\nca_file: {ca}\n"));
    let (code, _, err) = r.agent();
    assert_eq!(code, 5, "no credentials: {err}");
    assert!(err.contains("authentication"), "{err}");

    // 5. a CA the host does not trust: TLS failure
    r.credential(&format!(
        "url: {base}/\nusername: deploy\npassword_file: {password_file}\nca_file: {}\n",
        srv.get("CORE_OPS_GITSRV_HTTPS_OTHER_CA")
    ));
    let (code, _, err) = r.agent();
    assert_eq!(code, 5, "untrusted CA: {err}");
    assert!(err.contains("(tls)"), "{err}");

    // 5b. a port that demands a client certificate, and a proxy: `plan` against that URL
    let mtls = srv.get("CORE_OPS_GITSRV_HTTPS_MTLS_URL");
    let mtls_repo = format!("{mtls}/{}", r.bare.file_name().unwrap().to_str().unwrap());
    let plan = |env: &[(&str, &str)]| {
        let o = r.w.s.run_env(
            &["plan", "--repo", &mtls_repo, "--rev", "main", "--host", "h"],
            env,
        );
        let err = common::cli::stderr(&o);
        r.outputs.borrow_mut().push(err.clone());
        (o.status.code().unwrap_or(-1), err)
    };
    let mtls_entry =
        format!("url: {mtls}/\nusername: deploy\npassword_file: {password_file}\nca_file: {ca}\n");
    r.credential(&mtls_entry);
    let (code, err) = plan(&[]);
    assert_eq!(code, 5, "no client certificate: {err}");
    assert!(err.contains("(tls)"), "{err}");
    let with_cert = format!(
        "{mtls_entry}client_cert: {}\nclient_key: {}\n",
        srv.get("CORE_OPS_GITSRV_HTTPS_CLIENT_CERT"),
        srv.get("CORE_OPS_GITSRV_HTTPS_CLIENT_KEY")
    );
    r.credential(&with_cert);
    let (code, err) = plan(&[]);
    assert_eq!(code, 0, "client certificate: {err}");
    let (proxy_port, tunnels) = connect_proxy();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    r.credential(&format!("{with_cert}proxy: {proxy}\n"));
    let (code, err) = plan(&[]);
    assert_eq!(code, 0, "through the entry's proxy: {err}");
    assert_eq!(
        tunnels.load(Ordering::SeqCst),
        1,
        "the fetch went through the proxy"
    );
    r.credential(&with_cert);
    let (code, err) = plan(&[("https_proxy", proxy.as_str())]);
    assert_eq!(code, 0, "through https_proxy: {err}");
    assert_eq!(tunnels.load(Ordering::SeqCst), 2, "https_proxy is honoured");

    // 6. the server stopped: exit 5, host stays, status and metrics say so
    r.credential(&good);
    srv.stop("https");
    let (code, _, err) = r.agent();
    srv.start("https");
    assert_eq!(code, 5, "server stopped: {err}");
    assert!(err.contains("(unreachable)"), "{err}");
    assert_eq!(r.last_applied(), v2);
    assert_eq!(r.w.show(&r.w.unit("web"), "ActiveState"), "active");
    let st = r.status_json();
    assert_eq!(
        st["snapshot"]["last_run"]["outcome"], "fetch_failed",
        "{st:#}"
    );
    assert_eq!(st["fetch"]["last_failure_kind"], "unreachable", "{st:#}");
    // 3 failures above, 1 at the client-certificate port, 1 now; the successes in between
    // ended the earlier streak
    assert_eq!(st["fetch"]["consecutive_failures"], 1, "{st:#}");
    assert_eq!(st["fetch"]["failures_total"], 5, "{st:#}");
    assert!(
        r.status_text()
            .contains("FAILING: 1 failed fetch(es) in a row since then (5 in all)")
    );
    assert_eq!(r.metric("core_ops_fetch_failures_total"), Some(5.0));
    assert_eq!(r.metric("core_ops_fetch_consecutive_failures"), Some(1.0));
    assert!(
        r.metrics()
            .contains("core_ops_last_run_outcome{outcome=\"fetch_failed\"} 1")
    );

    // 7. the next tick retries and succeeds
    let (code, _, err) = r.agent();
    assert_eq!(code, 0, "retry after the outage: {err}");
    assert_eq!(r.status_json()["fetch"]["consecutive_failures"], 0);
    assert_eq!(r.metric("core_ops_fetch_failures_total"), Some(5.0));
    assert!(
        r.metric("core_ops_last_successful_fetch_timestamp_seconds")
            .is_some()
    );

    r.assert_no_leak();
    r.w.teardown();
}
