//! Secret host files (`files/**/*.age`) against a real systemd in the test bed, through the
//! real binary: the identity made by `core-ops secret keygen`, one secret encrypted by
//! `core-ops secret encrypt` and one by Debian's own `age` program; apply writes the
//! plaintext 0600 and restarts the service; every record, plan, explanation and log line is
//! searched for the plaintext and its plain sha256; drift of a secret is found and repaired;
//! re-encrypting the same plaintext changes nothing on the host; a changed secret restarts the
//! service; a host without a usable identity blocks the secret and changes nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{stderr, stdout};
use common::world::{World, action, world};
use core_ops::model::normalize::{FileMeta, Kind, normalize};
use serde_json::Value;

const DB_PASSWORD: &str = "pw=Zq8-not-in-any-record-41\n";
const DB_PASSWORD_2: &str = "pw=Second-secret-value-77\n";
const API_TOKEN: &str = "token=from-debian-age-9f3c\n";

struct Secrets {
    w: World,
    etc: PathBuf,
    identity: PathBuf,
}

impl Secrets {
    fn new(test: &str) -> Option<Secrets> {
        let mut w = world(test)?;
        let identity = w.s.path("keys/age.key");
        w.s.env.push((
            "CORE_OPS_AGE_IDENTITY".into(),
            identity.display().to_string(),
        ));
        let etc = w.s.path("etc");
        Some(Secrets { w, etc, identity })
    }

    fn unit(&self) -> String {
        format!("{}-app.service", self.w.p)
    }

    fn db_env(&self) -> PathBuf {
        self.etc.join(format!("{}/db.env", self.w.p))
    }

    fn token(&self) -> PathBuf {
        self.etc.join(format!("{}/token", self.w.p))
    }

    /// `core-ops secret keygen`; returns the recipients file it printed.
    fn keygen(&self) -> String {
        let o = self.w.s.run(&["secret", "keygen"]);
        assert!(o.status.success(), "keygen: {}", stderr(&o));
        stdout(&o)
    }

    /// `core-ops secret encrypt -R <recipients>` of `plain`.
    fn encrypt(&self, recipients: &str, plain: &str) -> Vec<u8> {
        let r = self.w.s.path("recipients.txt");
        std::fs::write(&r, recipients).unwrap();
        let input = self.w.s.path("plain.tmp");
        std::fs::write(&input, plain).unwrap();
        let o = self.w.s.run(&[
            "secret",
            "encrypt",
            "-R",
            &r.display().to_string(),
            &input.display().to_string(),
        ]);
        std::fs::remove_file(&input).unwrap();
        assert!(o.status.success(), "encrypt: {}", stderr(&o));
        o.stdout
    }

    /// The same with Debian's `age` (binary, not armored).
    fn encrypt_with_age(&self, recipient: &str, plain: &str) -> Vec<u8> {
        let input = self.w.s.path("plain.tmp");
        std::fs::write(&input, plain).unwrap();
        let o = Command::new("age")
            .args(["-r", recipient])
            .arg(&input)
            .output()
            .unwrap_or_else(|e| {
                panic!("Debian's age program is needed (scripts/prereqs.sh installs it): {e}")
            });
        std::fs::remove_file(&input).unwrap();
        assert!(o.status.success(), "age: {}", stderr(&o));
        o.stdout
    }

    /// One revision: a service whose unit reads both secrets, the recipients file beside the
    /// host, and the two encrypted files.
    fn commit(&mut self, recipients: &str, db: &[u8], token: &[u8]) -> String {
        let p = self.w.p.clone();
        let etc = self.etc.display().to_string();
        let files: Vec<(String, Vec<u8>)> =
            vec![
            (
                format!("services/app/{p}-app.service"),
                format!(
                    "[Service]\nEnvironmentFile={etc}/{p}/db.env\nExecStart=/bin/sleep infinity\n\n\
                     [Install]\nWantedBy=multi-user.target\n"
                )
                .into_bytes(),
            ),
            (format!("services/app/files{etc}/{p}/db.env.age"), db.to_vec()),
            (format!("services/app/files{etc}/{p}/token.age"), token.to_vec()),
            (
                "services/app/service.yaml".into(),
                format!("files:\n  {etc}/{p}/token:\n    mode: \"0640\"\n").into_bytes(),
            ),
            ("hosts/h/age.recipients".into(), recipients.as_bytes().to_vec()),
            ("hosts/h/host.yaml".into(), b"services: [app]\n".to_vec()),
        ];
        self.w.repo.commit_owned(&files, "rev").expect("commit")
    }

    /// Every byte core-ops printed or recorded: the outputs given, and every file under the
    /// state dir (status, ledger, results, receipts, plans, evidence, metrics).
    fn assert_nothing_leaks(&self, outputs: &[Vec<u8>]) {
        let mut haystack: Vec<(String, Vec<u8>)> = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("output {i}"), o.clone()))
            .collect();
        for f in files_under(&self.w.s.path("state")) {
            haystack.push((f.display().to_string(), std::fs::read(&f).unwrap()));
        }
        for f in files_under(&self.w.s.path("metrics")) {
            haystack.push((f.display().to_string(), std::fs::read(&f).unwrap()));
        }
        // the outputs given and at least the status snapshot
        assert!(
            haystack.len() > outputs.len(),
            "no record to search under {}",
            self.w.s.path("state").display()
        );
        for secret in [DB_PASSWORD, DB_PASSWORD_2, API_TOKEN] {
            let mut needles = vec![
                secret.trim().to_string(),
                sha256_hex(secret.as_bytes()),
                sha256_hex(secret.trim().as_bytes()),
            ];
            // and the unkeyed material digest a plain host file of that content would have
            for mode in [0o600, 0o640, 0o644] {
                let meta = FileMeta {
                    mode,
                    owner: "root".into(),
                    group: "root".into(),
                };
                let n = normalize(Kind::File, secret.as_bytes(), &meta);
                needles.push(n.digest.trim_start_matches("sha256:").to_string());
            }
            for (name, bytes) in &haystack {
                let text = String::from_utf8_lossy(bytes);
                for n in &needles {
                    assert!(!text.contains(n.as_str()), "{name} contains {n:?}");
                }
            }
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    let o = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn secrets_are_applied_compared_repaired_and_never_shown() {
    let Some(mut t) = Secrets::new("secrets") else {
        return;
    };
    let recipients = t.keygen();
    assert_eq!(mode(&t.identity), 0o600);
    let public = recipients
        .lines()
        .find(|l| l.starts_with("age1"))
        .expect("a public key")
        .to_string();
    // a second keygen never replaces the identity
    let again = t.w.s.run(&["secret", "keygen"]);
    assert_eq!(again.status.code(), Some(1), "{}", stdout(&again));
    assert!(
        stderr(&again).contains("never replaces"),
        "{}",
        stderr(&again)
    );

    let db = t.encrypt(&recipients, DB_PASSWORD);
    let token = t.encrypt_with_age(&public, API_TOKEN);
    let v1 = t.commit(&recipients, &db, &token);

    // plan: the secret shows as (secret) with its ciphertext digest
    let plan_text = t.w.run(&["plan", "--rev", &v1]);
    assert!(plan_text.status.success(), "{}", stderr(&plan_text));
    let db_id = format!("file:{}", t.db_env().display());
    let plan = t.w.plan(&v1);
    let a = action(&plan, &db_id);
    assert_eq!(a["action"], "create");
    assert_eq!(
        a["secret"]["ciphertext_digest"],
        format!("sha256:{}", sha256_hex(&db))
    );
    assert!(
        a["digests"]["desired"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    assert!(stdout(&plan_text).contains(&format!("(secret) sha256:{}", sha256_hex(&db))));

    // apply: plaintext on the host, 0600 by default, 0640 where service.yaml says so
    let (code, r) = t.w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["outcome"], "converged", "{r:#}");
    assert_eq!(std::fs::read_to_string(t.db_env()).unwrap(), DB_PASSWORD);
    assert_eq!(std::fs::read_to_string(t.token()).unwrap(), API_TOKEN);
    assert_eq!(mode(&t.db_env()), 0o600);
    assert_eq!(mode(&t.token()), 0o640);
    let unit = t.unit();
    assert_eq!(t.w.show(&unit, "ActiveState"), "active");
    let explain =
        t.w.run(&["explain", &t.db_env().display().to_string(), "--rev", &v1]);
    assert!(explain.status.success(), "{}", stderr(&explain));
    assert!(
        stdout(&explain).contains("(secret) sha256:"),
        "{}",
        stdout(&explain)
    );
    let explain_json = t.w.run(&["--json", "explain", &db_id, "--rev", &v1]);

    // converged: a no-op that needs no parse of anything
    let noop = t.w.plan(&v1);
    assert_eq!(action(&noop, &db_id)["action"], "no_op", "{noop:#}");

    // drift: a hand edit of the secret is found (compared in memory) and repaired
    std::fs::write(t.db_env(), "pw=edited-by-hand\n").unwrap();
    let drift = t.w.plan(&v1);
    let a = action(&drift, &db_id);
    assert_eq!(a["action"], "update", "{drift:#}");
    assert_eq!(a["cause"], "drift");
    let (code, r) = t.w.apply(&v1, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(std::fs::read_to_string(t.db_env()).unwrap(), DB_PASSWORD);

    // the same plaintext encrypted again (new ciphertext, e.g. a recipient added): nothing to do
    let db_again = t.encrypt(&recipients, DB_PASSWORD);
    assert_ne!(db_again, db);
    let v2 = t.commit(&recipients, &db_again, &token);
    let p2 = t.w.plan(&v2);
    let a = action(&p2, &db_id);
    assert_eq!(a["action"], "no_op", "{p2:#}");
    assert_eq!(
        a["secret"]["ciphertext_digest"],
        format!("sha256:{}", sha256_hex(&db_again))
    );
    let (code, r) = t.w.apply(&v2, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["calls"]["jobs"], 0, "{r:#}");

    // a new secret value: written, and the service restarted
    let inv = t.w.show(&unit, "InvocationID");
    let db2 = t.encrypt(&recipients, DB_PASSWORD_2);
    let v3 = t.commit(&recipients, &db2, &token);
    let verbose = t.w.s.run_env(
        &[
            "-vv",
            "--json",
            "apply",
            "--rev",
            &v3,
            "--repo",
            &t.w.repo_arg(),
            "--host",
            "h",
        ],
        &[("RUST_LOG", "core_ops=trace")],
    );
    assert_eq!(verbose.status.code(), Some(0), "{}", stderr(&verbose));
    assert_eq!(std::fs::read_to_string(t.db_env()).unwrap(), DB_PASSWORD_2);
    assert_ne!(t.w.show(&unit, "InvocationID"), inv);

    let status = t.w.run(&["status"]);
    t.assert_nothing_leaks(&[
        plan_text.stdout,
        serde_json::to_vec(&plan).unwrap(),
        serde_json::to_vec(&drift).unwrap(),
        explain.stdout,
        explain_json.stdout,
        verbose.stdout,
        verbose.stderr,
        status.stdout,
    ]);
    t.w.teardown();
    assert!(!t.db_env().exists());
}

#[test]
fn a_host_that_cannot_decrypt_blocks_the_secret_and_changes_nothing() {
    let Some(mut t) = Secrets::new("nosecret") else {
        return;
    };
    let recipients = t.keygen();
    let db = t.encrypt(&recipients, DB_PASSWORD);
    let token = t.encrypt(&recipients, API_TOKEN);
    let v1 = t.commit(&recipients, &db, &token);
    let db_id = format!("file:{}", t.db_env().display());

    // no identity at all
    let missing = t.w.s.path("keys/none.key").display().to_string();
    let repo = t.w.repo_arg();
    let without_identity = |command: &str| {
        t.w.s.run_env(
            &[
                "--json", command, "--rev", &v1, "--repo", &repo, "--host", "h",
            ],
            &[("CORE_OPS_AGE_IDENTITY", missing.as_str())],
        )
    };
    let o = without_identity("plan");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = action(&plan, &db_id);
    assert_eq!(a["action"], "blocked", "{plan:#}");
    assert_eq!(a["cause"], "missing_prerequisite");
    let reason = a["reason"].as_str().unwrap();
    assert!(
        reason.contains("no age identity") && reason.contains(&missing),
        "{reason}"
    );
    let o = without_identity("apply");
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(!t.db_env().exists());
    assert_eq!(t.w.show(&t.unit(), "LoadState"), "not-found");

    // an identity others can read is refused, naming the file
    std::fs::set_permissions(&t.identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    let plan = t.w.plan(&v1);
    let reason = action(&plan, &db_id)["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("readable by group or others"), "{reason}");
    std::fs::set_permissions(&t.identity, std::fs::Permissions::from_mode(0o600)).unwrap();

    // a secret encrypted to someone else's key names this host's key
    let other = t.w.s.path("other.key");
    let o = Command::new("age-keygen")
        .arg("-o")
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let other_pub = String::from_utf8_lossy(
        &Command::new("age-keygen")
            .arg("-y")
            .arg(&other)
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let foreign = t.encrypt_with_age(&other_pub, DB_PASSWORD);
    let v2 = t.commit(&recipients, &foreign, &token);
    let plan = t.w.plan(&v2);
    let reason = action(&plan, &db_id)["reason"]
        .as_str()
        .unwrap()
        .to_string();
    let mine = recipients.lines().find(|l| l.starts_with("age1")).unwrap();
    assert!(
        reason.contains("not encrypted to this host's key") && reason.contains(mine),
        "{reason}"
    );
    // the other secret of the same host is not blocked by it
    let token_id = format!("file:{}", t.token().display());
    assert_eq!(action(&plan, &token_id)["action"], "create", "{plan:#}");
    t.assert_nothing_leaks(&[serde_json::to_vec(&plan).unwrap()]);
}
