//! A git:// repository served by a real `git daemon` on loopback (scripts/git-servers.sh),
//! applied by `core-ops agent` in the systemd test bed: first apply, a pushed change applied
//! through a mirror a killed fetch left locks and a partial pack in, a no-change tick, the
//! server stopped (exit 5, host unchanged, status, metric) and the retry; and a server that
//! accepts the connection but never answers, killed at the fetch timeout.

mod common;

use std::time::{Duration, Instant};

use common::remote::{Remote, servers};

#[test]
fn git_daemon_remote_applies_recovers_a_killed_fetch_and_survives_an_outage() {
    let Some(srv) = servers(&["git"]) else {
        return;
    };
    let base = srv.get("CORE_OPS_GITSRV_GIT_URL");
    let Some(mut r) = Remote::new("gitd", srv, |name| format!("{base}/{name}")) else {
        return;
    };

    r.apply_first();

    // what a fetch killed half-way leaves in the mirror: ref locks and a partial pack
    let mirrors = r.w.s.path("state/mirrors");
    let mirror = std::fs::read_dir(&mirrors)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "git"))
        .expect("mirror");
    std::fs::write(mirror.join("refs/heads/main.lock"), "").unwrap();
    std::fs::write(mirror.join("objects/pack/tmp_pack_killed"), "PACK partial").unwrap();

    let v2 = r.apply_pushed_change("2", "pushed change through a recovered mirror");
    assert!(!mirror.join("refs/heads/main.lock").exists());
    assert!(!mirror.join("objects/pack/tmp_pack_killed").exists());

    r.no_change_tick("git://");

    srv.stop("git");
    let (code, _, err) = r.agent();
    srv.start("git");
    assert_eq!(code, 5, "server stopped: {err}");
    assert!(err.contains("(unreachable)"), "{err}");
    assert!(
        err.contains("the host stays on its last applied revision"),
        "{err}"
    );
    assert_eq!(r.last_applied(), v2);
    assert_eq!(r.w.show(&r.w.unit("web"), "ActiveState"), "active");
    let st = r.status_json();
    assert_eq!(st["snapshot"]["last_run"]["outcome"], "fetch_failed");
    assert_eq!(st["fetch"]["failures_total"], 1);
    assert_eq!(r.metric("core_ops_fetch_failures_total"), Some(1.0));
    // the fetch metrics (a counter among gauges) are valid exposition text
    let promtool = std::env::var("CORE_OPS_PROMTOOL")
        .unwrap_or_else(|_| "/var/cache/core-ops-test/prometheus/usr/bin/promtool".into());
    let out = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(r.w.s.path("metrics/core-ops.prom")).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("{promtool} (installed by scripts/prereqs.sh): {e}"));
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, _, err) = r.agent();
    assert_eq!(code, 0, "retry: {err}");
    assert_eq!(r.status_json()["fetch"]["consecutive_failures"], 0);
    r.w.teardown();
}

#[test]
fn a_server_that_never_answers_is_killed_at_the_fetch_timeout() {
    let Some(srv) = servers(&["git"]) else {
        return;
    };
    // accepts connections (the kernel's backlog does) and never says a word
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let Some(r) = Remote::new("silent", srv, |name| {
        format!("git://127.0.0.1:{port}/{name}")
    }) else {
        return;
    };
    let t0 = Instant::now();
    let o = r.w.s.run(&[
        "agent",
        "--repo",
        &r.url,
        "--rev",
        "main",
        "--host",
        "h",
        "--fetch-timeout",
        "2",
    ]);
    let took = t0.elapsed();
    let err = common::cli::stderr(&o);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(
        err.contains("(timeout)") && err.contains("within 2 s"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "killed at the timeout, not later: {took:?}"
    );
    let st = r.status_json();
    assert_eq!(st["fetch"]["last_failure_kind"], "timeout", "{st:#}");
    // nothing was created for the failed first fetch but the record of it
    let mirrors = r.w.s.path("state/mirrors");
    assert!(
        std::fs::read_dir(&mirrors)
            .map(|d| d
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().ends_with(".git")))
            .unwrap_or(true),
        "no mirror after a failed first fetch"
    );
    drop(silent);
}
