//! The Debian package (scripts/build-deb.sh): its contents and maintainer scripts, lintian
//! without errors, and a real install in the systemd test bed: `dpkg -i` leaves the timer
//! disabled, the shipped example drop-in pointed at a fixture repository served over https://
//! (the loopback lighttpd + git http-backend of scripts/git-servers.sh, basic auth from a
//! root-only credentials entry, the test's own CA) plus `systemctl enable --now
//! core-ops.timer` converge the host, `dpkg -r` keeps the managed units running and the state
//! in place, `dpkg --purge` removes the state.
//!
//! The package: `CORE_OPS_DEB` (scripts/test.sh builds it once and exports it); otherwise this
//! binary runs scripts/build-deb.sh itself (as root; a release build, minutes).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use common::bed::{bed, prefix};
use core_ops_testkit::RepoBuilder;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The .deb under test, or `None` (loudly) when it cannot be had without root.
fn deb() -> Option<&'static Path> {
    static DEB: OnceLock<Option<PathBuf>> = OnceLock::new();
    DEB.get_or_init(|| {
        if let Some(p) = std::env::var_os("CORE_OPS_DEB").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "CORE_OPS_DEB={} is not a file", p.display());
            return Some(p);
        }
        if !nix::unistd::Uid::effective().is_root() {
            return common::bed::skip_or_fail(
                "the Debian package tests need CORE_OPS_DEB or root (scripts/build-deb.sh)",
            );
        }
        let out = Command::new(root().join("scripts/build-deb.sh"))
            .output()
            .expect("run scripts/build-deb.sh");
        assert!(
            out.status.success(),
            "scripts/build-deb.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        Some(PathBuf::from(stdout.lines().last().expect("a .deb path")))
    })
    .as_deref()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `core-ops.1` and `core-ops-<sub>.1` for every visible subcommand.
fn man_pages(cmd: &clap::Command, name: &str, out: &mut BTreeSet<String>) {
    out.insert(format!("./usr/share/man/man1/{name}.1.gz"));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() != "help" {
            man_pages(sub, &format!("{name}-{}", sub.get_name()), out);
        }
    }
}

#[test]
fn package_contents_scripts_and_lintian() {
    let Some(deb) = deb() else { return };
    let size = std::fs::metadata(deb).unwrap().len();
    eprintln!("package: {} ({size} bytes)", deb.display());

    // contents: path -> mode
    let listing = run("dpkg-deb", &["--contents", deb.to_str().unwrap()]);
    let files: Vec<(String, String)> = listing
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[5].to_string(), cols[0].to_string())
        })
        .collect();
    let mode = |p: &str| {
        files
            .iter()
            .find(|(f, _)| f == p)
            .map(|(_, m)| m.as_str())
            .unwrap_or_else(|| panic!("{p} is not in the package:\n{listing}"))
    };
    assert_eq!(mode("./usr/bin/core-ops"), "-rwxr-xr-x");
    for p in [
        "./usr/lib/systemd/system/core-ops.service",
        "./usr/lib/systemd/system/core-ops.timer",
        "./usr/share/doc/core-ops/examples/core-ops.service.d/50-desired-state.conf",
        "./usr/share/doc/core-ops/copyright",
        "./usr/share/doc/core-ops/changelog.gz",
        "./usr/share/doc/core-ops/changelog.Debian.gz",
        "./usr/share/bash-completion/completions/core-ops",
        "./usr/share/zsh/vendor-completions/_core-ops",
        "./usr/share/fish/vendor_completions.d/core-ops.fish",
    ] {
        assert_eq!(mode(p), "-rw-r--r--", "{p}");
    }
    let mut pages = BTreeSet::new();
    man_pages(&core_ops::cli::args::Cli::command(), "core-ops", &mut pages);
    let shipped: BTreeSet<String> = files
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f.starts_with("./usr/share/man/") && !f.ends_with('/'))
        .collect();
    assert_eq!(shipped, pages, "a man page per subcommand");
    // only core-ops: the maintainer tool is not shipped
    assert!(!listing.contains("core-ops-release"), "{listing}");

    // the units are the repository's, byte for byte
    let x = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &["-x", deb.to_str().unwrap(), x.path().to_str().unwrap()],
    );
    for u in ["core-ops.service", "core-ops.timer"] {
        assert_eq!(
            std::fs::read(x.path().join("usr/lib/systemd/system").join(u)).unwrap(),
            std::fs::read(root().join("units").join(u)).unwrap(),
            "{u}"
        );
    }
    // the shipped binary is the agent alone: no harness, release tool, test support or
    // failpoints compiled in (their crate and module names would survive stripping in panic
    // locations and type names)
    let bin = std::fs::read(x.path().join("usr/bin/core-ops")).unwrap();
    for needle in [
        "core_ops_verify",
        "core_ops_release",
        "core_ops_testkit",
        "tools/verify/src",
        "tools/release/src",
        "FakeSystemd",
        "failpoint: paused",
    ] {
        assert!(
            !bin.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the shipped core-ops binary contains {needle}"
        );
    }
    // (and the check can see what is there)
    let plan_header = b"core-ops plan for host";
    assert!(
        bin.windows(plan_header.len()).any(|w| w == plan_header),
        "the shipped binary does not look like core-ops"
    );

    // control: depends on systemd; maintainer scripts never enable or start anything, and
    // remove state only on purge
    let depends = run("dpkg-deb", &["-f", deb.to_str().unwrap(), "Depends"]);
    assert!(depends.contains("systemd"), "{depends}");
    let c = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &["-e", deb.to_str().unwrap(), c.path().to_str().unwrap()],
    );
    let script = |n: &str| std::fs::read_to_string(c.path().join(n)).unwrap_or_default();
    let postinst = script("postinst");
    assert!(postinst.contains("install -d -m 0700"), "{postinst}");
    // (that a fresh install enables nothing is checked for real in the bed below)
    for s in ["preinst", "postinst", "prerm", "postrm"] {
        let t = script(s);
        for start in [
            "deb-systemd-invoke start",
            "deb-systemd-invoke restart",
            "systemctl start",
        ] {
            assert!(!t.contains(start), "{s} starts a unit:\n{t}");
        }
    }
    let postrm = script("postrm");
    let lines: Vec<&str> = postrm.lines().collect();
    let rm_line = lines
        .iter()
        .position(|l| l.contains("rm -rf /var/lib/core-ops"))
        .expect("postrm removes the state on purge");
    let purge_guard = lines[..rm_line].iter().rev().find(|l| l.contains("\"$1\""));
    assert_eq!(
        purge_guard.map(|l| l.trim()),
        Some("if [ \"$1\" = \"purge\" ]; then"),
        "{postrm}"
    );

    // lintian: no errors (E:); warnings are listed for the record
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .expect("lintian (Debian package lintian, installed by scripts/prereqs.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(out.status.success(), "lintian failed: {text}");
}

#[test]
fn install_enable_converge_then_remove_keeps_units_and_state() {
    let Some(bed) = bed() else { return };
    let Some(deb) = deb() else { return };
    let Some(srv) = common::remote::servers(&["https"]) else {
        return;
    };
    let p = prefix("deb");
    let work = tempfile::Builder::new()
        .prefix("deb-")
        .tempdir_in(&bed.dir)
        .unwrap();
    let pkg = work.path().join("core-ops.deb");
    std::fs::copy(deb, &pkg).unwrap();
    let repo_path = work.path().join("repo");
    let mut repo = RepoBuilder::init(&repo_path).unwrap();
    let unit = format!("{p}-svc.service");
    let sha = repo
        .commit_files(
            &[
                ("hosts/t/host.yaml", b"services: [svc]\n".as_slice()),
                (
                    &format!("services/svc/{unit}"),
                    b"[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n",
                ),
            ],
            "v1",
        )
        .unwrap();
    // published on the https server; the agent in the bed fetches it from there
    let bare = PathBuf::from(srv.get("CORE_OPS_GITSRV_REPOS")).join(format!("{p}.git"));
    let git = |args: &[&str]| {
        let o = Command::new("git").args(args).output().unwrap();
        assert!(o.status.success(), "git {args:?}: {o:?}");
    };
    git(&["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
    git(&[
        "-C",
        repo_path.to_str().unwrap(),
        "push",
        "-q",
        bare.to_str().unwrap(),
        "HEAD:refs/heads/main",
    ]);
    let https_base = srv.get("CORE_OPS_GITSRV_HTTPS_URL");
    let repo_url = format!("{https_base}/{p}.git");
    let show = |prop: &str, u: &str| {
        bed.exec_ok(["systemctl", "show", "--value", "-p", prop, u])
            .trim()
            .to_string()
    };
    let in_bed = |cmd: &str| bed.exec(["sh", "-c", cmd]).status.success();
    // The bed's root is an overlay of this machine's; a container image's
    // /usr/sbin/policy-rc.d (exit 101: "start no services") would make the package's
    // maintainer scripts skip their systemctl calls, unlike on a real host. Set it aside for
    // this test and put it back afterwards, even when the test fails.
    let _policy = PolicyRcAside::new(bed);

    // a fresh host has no state dir: one the machine under the bed's overlay happens to have
    // (another run of core-ops on it) is hidden inside the bed only; the host keeps its own
    bed.exec_ok(["rm", "-rf", "/var/lib/core-ops"]);

    // install: the units are there, nothing is enabled or running, the state dir is private
    let t0 = Instant::now();
    let out = bed.exec(["dpkg", "-i", pkg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dpkg -i: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = t0.elapsed();
    let fragment = show("FragmentPath", "core-ops.timer");
    assert!(
        fragment.ends_with("/lib/systemd/system/core-ops.timer"),
        "core-ops.timer must come from the package, not {fragment} (a leftover in /etc?)"
    );
    assert_eq!(show("UnitFileState", "core-ops.timer"), "disabled");
    assert_eq!(show("ActiveState", "core-ops.timer"), "inactive");
    assert_eq!(show("ActiveState", "core-ops.service"), "inactive");
    assert_eq!(
        bed.exec_ok(["stat", "-c", "%a %U %G", "/var/lib/core-ops"])
            .trim(),
        "700 root root"
    );
    assert!(in_bed("test -s /usr/share/man/man1/core-ops-apply.1.gz"));
    assert!(in_bed(
        "bash --noprofile --norc -c '. /usr/share/bash-completion/completions/core-ops && complete -p core-ops'"
    ));

    // the shipped example drop-in, pointed at the fixture repository
    let example = bed.exec_ok([
        "cat",
        "/usr/share/doc/core-ops/examples/core-ops.service.d/50-desired-state.conf",
    ]);
    assert!(
        example.contains("\nEnvironment=CORE_OPS_REV=main\n"),
        "{example}"
    );
    let dropin: String = example
        .lines()
        .map(|l| {
            if l.starts_with("Environment=CORE_OPS_REPO=") {
                format!("Environment=CORE_OPS_REPO={repo_url}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(dropin, example, "the example has no CORE_OPS_REPO line");
    bed.write_unit("core-ops.service.d/50-desired-state.conf", &dropin);
    // the credentials entry, root-only, where the packaged service looks for it
    let stage = work.path().join("cred");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::copy(
        srv.get("CORE_OPS_GITSRV_HTTPS_PASSWORD_FILE"),
        stage.join("password"),
    )
    .unwrap();
    std::fs::copy(srv.get("CORE_OPS_GITSRV_HTTPS_CA"), stage.join("ca.pem")).unwrap();
    std::fs::write(
        stage.join("fleet.yaml"),
        format!(
            "url: {https_base}/\nusername: deploy\npassword_file: /etc/core-ops/secrets/password\nca_file: /etc/core-ops/secrets/ca.pem\n"
        ),
    )
    .unwrap();
    let s = stage.display();
    bed.exec_ok([
        "sh",
        "-c",
        &format!(
            "install -d -m 0700 /etc/core-ops/credentials.d /etc/core-ops/secrets && \
             install -m 0600 {s}/fleet.yaml /etc/core-ops/credentials.d/ && \
             install -m 0600 {s}/password {s}/ca.pem /etc/core-ops/secrets/"
        ),
    ]);
    // test only: this host's name in the fixture, a short settle window
    bed.write_unit(
        "core-ops.service.d/60-test.conf",
        "[Service]\nEnvironment=CORE_OPS_HOST=t\nEnvironment=CORE_OPS_SETTLE_MS=200\n",
    );
    // fire one second after the timer starts instead of two minutes after boot
    bed.write_unit(
        "core-ops.timer.d/60-test.conf",
        "[Timer]\nOnActiveSec=1s\nRandomizedDelaySec=0\nAccuracySec=1ms\n",
    );
    bed.exec_ok(["systemctl", "daemon-reload"]);
    let enabled = t0.elapsed();
    bed.exec_ok(["systemctl", "enable", "--now", "core-ops.timer"]);

    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let st = bed.exec(["cat", "/var/lib/core-ops/status.json"]);
        if st.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
            if v["last_applied"]["revision"] == sha.as_str() {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the timer did not converge the host within 90 s; journal:\n{}",
            String::from_utf8_lossy(
                &bed.exec(["journalctl", "--no-pager", "-u", "core-ops.service"])
                    .stdout
            )
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let converged = t0.elapsed();
    eprintln!(
        "dpkg -i: {} ms; enable to first converged run: {} ms; install to first converged run: \
         {} ms (the test's timer drop-in fires 1 s after enable)",
        installed.as_millis(),
        (converged - enabled).as_millis(),
        converged.as_millis()
    );
    assert_eq!(status["last_run"]["outcome"], "converged");
    assert_eq!(status["source"]["repo"], repo_url.as_str(), "{status:#}");
    let fetch: serde_json::Value =
        serde_json::from_str(&bed.exec_ok(["cat", "/var/lib/core-ops/fetch.json"])).unwrap();
    assert_eq!(fetch["consecutive_failures"], 0, "{fetch:#}");
    assert!(fetch["last_success_at"].is_string(), "{fetch:#}");
    // the secret is in no journal field of the runs and in no record
    let password = std::fs::read_to_string(stage.join("password")).unwrap();
    let password = password.trim();
    let journal = bed.exec(["journalctl", "--no-pager", "-o", "verbose"]);
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(
        journal.contains("core-ops"),
        "the bed's journal has no core-ops lines to search"
    );
    assert!(
        !journal.contains(password),
        "the password is in the journal"
    );
    let records = bed.exec([
        "sh",
        "-c",
        "cat /var/lib/core-ops/*.json /var/lib/core-ops/receipts/*",
    ]);
    assert!(!records.stdout.is_empty());
    assert!(
        !String::from_utf8_lossy(&records.stdout).contains(password),
        "the password is in a record"
    );
    assert_eq!(show("ActiveState", &unit), "active");
    // the installed binary, with a clean environment (as an operator's shell would have)
    let ops = |args: &[&str]| {
        let mut v = vec![
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "core-ops",
        ];
        v.extend(args);
        bed.exec_ok(v)
    };
    let st: serde_json::Value = serde_json::from_str(&ops(&["--json", "status"])).unwrap();
    assert_eq!(
        st["snapshot"]["last_applied"]["revision"],
        sha.as_str(),
        "{st:#}"
    );
    let text = ops(&["status"]);
    assert!(text.contains(&sha[..8]), "{text}");

    // remove: the agent stops, what it applied keeps running, the state stays
    bed.exec_ok(["dpkg", "-r", "core-ops"]);
    assert!(!in_bed("test -e /usr/bin/core-ops"));
    assert_eq!(show("ActiveState", "core-ops.timer"), "inactive");
    assert_eq!(show("ActiveState", &unit), "active");
    assert!(in_bed("test -s /var/lib/core-ops/status.json"));
    assert!(in_bed("ls /var/lib/core-ops/receipts/ | grep -q ."));

    // purge: now the state goes; still nothing applied is touched
    bed.exec_ok(["dpkg", "--purge", "core-ops"]);
    assert!(!in_bed("test -e /var/lib/core-ops"));
    assert_eq!(show("ActiveState", &unit), "active");

    // leave the shared bed as found
    let _ = bed.exec([
        "rm",
        "-rf",
        "/etc/core-ops/credentials.d",
        "/etc/core-ops/secrets",
    ]);
    let _ = bed.exec(["systemctl", "disable", "--now", &unit]);
    bed.remove_units(&[
        unit,
        "core-ops.service".to_string(),
        "core-ops.timer".to_string(),
        "timers.target.wants/core-ops.timer".to_string(),
    ]);
    bed.exec_ok(["systemctl", "daemon-reload"]);
}

/// Moves the bed's `/usr/sbin/policy-rc.d` aside while alive (see its use).
struct PolicyRcAside(&'static common::bed::Bed);

const POLICY_RC: &str = "/usr/sbin/policy-rc.d";
const POLICY_RC_ASIDE: &str = "/usr/sbin/policy-rc.d.core-ops-test";

impl PolicyRcAside {
    fn new(bed: &'static common::bed::Bed) -> PolicyRcAside {
        let _ = bed.exec([
            "sh",
            "-c",
            &format!("test ! -e {POLICY_RC} || mv {POLICY_RC} {POLICY_RC_ASIDE}"),
        ]);
        PolicyRcAside(bed)
    }
}

impl Drop for PolicyRcAside {
    fn drop(&mut self) {
        let _ = self.0.exec([
            "sh",
            "-c",
            &format!("test ! -e {POLICY_RC_ASIDE} || mv {POLICY_RC_ASIDE} {POLICY_RC}"),
        ]);
    }
}
