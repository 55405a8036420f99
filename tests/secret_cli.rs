//! `core-ops secret ...` through the real binary, without systemd: an identity per host made
//! by `secret keygen`, a secret encrypted `--for-service` for every host that selects the
//! service, each host's plan decrypting it (and only its own identity working for it), the
//! errors that name what is missing (a selecting host without recipients, a bad recipients
//! line with file and line).

mod common;

use std::path::Path;

use common::cli::{Scratch, stderr, stdout};
use core_ops_testkit::RepoBuilder;
use serde_json::Value;

fn scratch() -> Scratch {
    let mut s = Scratch::new();
    let no_systemd = format!("unix:path={}", s.path("no-systemd").display());
    s.env.push(("CORE_OPS_SYSTEMD_ADDRESS".into(), no_systemd));
    s
}

fn keygen(s: &Scratch, identity: &Path) -> String {
    let id = identity.display().to_string();
    let o = s.run(&["--age-identity", &id, "secret", "keygen"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = s.run(&["--age-identity", &id, "secret", "recipient"]);
    assert_eq!(stdout(&again).lines().last(), stdout(&o).lines().last());
    stdout(&o)
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn a_secret_for_a_service_is_readable_by_every_host_that_selects_it_and_only_them() {
    let s = scratch();
    let tree = s.path("tree");
    let etc = s.path("etc").display().to_string();
    write(&tree, "hosts/a/host.yaml", "services: [db]\n");
    write(&tree, "hosts/b/host.yaml", "services: [db, web]\n");
    write(&tree, "hosts/c/host.yaml", "services: [web]\n");
    for h in ["a", "b", "c"] {
        let recipients = keygen(&s, &s.path(&format!("keys/{h}.key")));
        write(&tree, &format!("hosts/{h}/age.recipients"), &recipients);
    }
    write(&tree, &format!("services/web/files{etc}/web.conf"), "x=1\n");
    let plain = s.path("plain");
    std::fs::write(&plain, "pw=for-a-and-b\n").unwrap();
    let out = tree.join(format!("services/db/files{etc}/db.pw.age"));
    let o = s.run(&[
        "--json",
        "secret",
        "encrypt",
        "--for-service",
        "db",
        "--repo-dir",
        &tree.display().to_string(),
        "-o",
        &out.display().to_string(),
        &plain.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sealed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        sealed["recipients"].as_array().unwrap().len(),
        2,
        "{sealed:#}"
    );
    // the output is never replaced
    let again = s.run(&[
        "secret",
        "encrypt",
        "-R",
        &tree.join("hosts/a/age.recipients").display().to_string(),
        "-o",
        &out.display().to_string(),
        &plain.display().to_string(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    let mut repo = RepoBuilder::init(&s.path("repo")).unwrap();
    let sha = repo.commit_dir(&tree, "secrets").unwrap();
    let id = format!("file:{etc}/db.pw");
    let plan = |host: &str, key: &str| -> (i32, Value) {
        let key = s.path(&format!("keys/{key}.key")).display().to_string();
        let o = s.run(&[
            "--json",
            "--age-identity",
            &key,
            "plan",
            "--repo",
            &s.path("repo").display().to_string(),
            "--rev",
            &sha,
            "--host",
            host,
        ]);
        (
            o.status.code().unwrap_or(-1),
            serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o))),
        )
    };
    for host in ["a", "b"] {
        let (code, p) = plan(host, host);
        assert_eq!(code, 0, "{p:#}");
        let a = p["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id.as_str())
            .unwrap();
        assert_eq!(a["action"], "create", "{p:#}");
    }
    // host a's plan with host c's identity: blocked, naming c's key
    let (code, p) = plan("a", "c");
    assert_eq!(code, 1);
    let reason = p["actions"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not encrypted to this host's key"),
        "{reason}"
    );
}

#[test]
fn missing_or_bad_recipients_are_named() {
    let s = scratch();
    let tree = s.path("tree");
    write(&tree, "hosts/a/host.yaml", "services: [db]\n");
    let plain = s.path("plain");
    std::fs::write(&plain, "x").unwrap();
    let o = s.run(&[
        "secret",
        "encrypt",
        "--for-service",
        "db",
        "--repo-dir",
        &tree.display().to_string(),
        &plain.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("host a selects service db but has no hosts/a/age.recipients"),
        "{}",
        stderr(&o)
    );
    write(&tree, "bad.recipients", "# ok\nage1notakey but spaces\n");
    let o = s.run(&[
        "secret",
        "encrypt",
        "-R",
        &tree.join("bad.recipients").display().to_string(),
        &plain.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.recipients:2"), "{}", stderr(&o));
    let o = s.run(&[
        "secret",
        "encrypt",
        "-r",
        "age1bogus",
        &plain.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("'age1bogus' is not an age public key"),
        "{}",
        stderr(&o)
    );
}
