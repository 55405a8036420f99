//! Man pages and shell completions generated from the clap definitions: every visible
//! subcommand has a page that renders cleanly, and the bash completion loads in bash and
//! completes subcommands and flags.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use core_ops::cli::args::Cli;

const BIN: &str = env!("CARGO_BIN_EXE_core-ops");

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "core-ops {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `core-ops`, `core-ops-plan`, ... for every visible (sub)command, recursively.
fn expected_pages(cmd: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
    out.insert(format!("{prefix}.1"));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        expected_pages(sub, &format!("{prefix}-{}", sub.get_name()), out);
    }
}

#[test]
fn every_subcommand_has_a_man_page_that_renders() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    run(&["manpages", out_dir.to_str().unwrap()]);
    let mut expected = BTreeSet::new();
    expected_pages(&Cli::command(), "core-ops", &mut expected);
    // the CLI has more than the top-level page, and the packaging command stays hidden
    assert!(expected.contains("core-ops-apply.1") && expected.contains("core-ops-completions.1"));
    assert!(!expected.contains("core-ops-manpages.1"));
    let written: BTreeSet<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, expected);
    for page in &written {
        let path = out_dir.join(page);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains("\n.TH "),
            "{page}: no .TH"
        );
        // groff in warning mode: any complaint about the roff is a failure
        let g = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("groff (Debian package groff-base, installed by scripts/prereqs.sh)");
        assert!(
            g.status.success() && g.stderr.is_empty(),
            "{page}: groff: {}",
            String::from_utf8_lossy(&g.stderr)
        );
    }
    let apply = std::fs::read_to_string(out_dir.join("core-ops-apply.1")).unwrap();
    assert!(apply.contains("rollback\\-to"), "{apply}");
    let top = std::fs::read_to_string(out_dir.join("core-ops.1")).unwrap();
    assert!(top.contains("core\\-ops\\-plan(1)"), "{top}");
}

fn bash(script: &str) -> Output {
    Command::new("bash")
        .args(["--noprofile", "--norc", "-c", script])
        .output()
        .unwrap()
}

/// Complete `words` (the last one being completed) with the generated function.
fn complete(file: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source '{}' || exit 9\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT={}\n_core__ops core-ops '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        quoted.join(" "),
        words.len() - 1,
        line.len(),
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = bash(&script);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "completion of {words:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_loads_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("core-ops");
    std::fs::write(&file, run(&["completions", "bash"]).stdout).unwrap();
    let out = bash(&format!(
        "set -e\nsource '{}'\ncomplete -p core-ops",
        file.display()
    ));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "bash could not load the completion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("-F _core__ops"));

    let subs = complete(&file, &["core-ops", "pl"]);
    assert_eq!(subs, ["plan"]);
    let all = complete(&file, &["core-ops", ""]);
    for s in [
        "init",
        "plan",
        "apply",
        "agent",
        "status",
        "explain",
        "completions",
    ] {
        assert!(all.iter().any(|c| c == s), "{s} not offered: {all:?}");
    }
    assert!(
        !all.iter().any(|c| c == "manpages"),
        "hidden command offered"
    );
    let flags = complete(&file, &["core-ops", "apply", "--roll"]);
    assert_eq!(flags, ["--rollback-to", "--rollback-plan-only"]);
    let shells = complete(&file, &["core-ops", "completions", ""]);
    assert!(shells.contains(&"bash".to_string()) && shells.contains(&"fish".to_string()));
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() {
    let zsh = String::from_utf8(run(&["completions", "zsh"]).stdout).unwrap();
    assert!(zsh.starts_with("#compdef core-ops"));
    let fish = String::from_utf8(run(&["completions", "fish"]).stdout).unwrap();
    assert!(fish.contains("complete -c core-ops"));
    for script in [&zsh, &fish] {
        assert!(script.contains("rollback-to") && !script.contains("manpages"));
    }
    // syntax-check with the shells themselves where they are installed
    for (shell, text) in [("zsh", &zsh), ("fish", &fish)] {
        if let Ok(o) = Command::new(shell)
            .arg("-n")
            .arg("/dev/stdin")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(text.as_bytes())?;
                c.wait_with_output()
            })
        {
            assert!(o.status.success(), "{shell} -n rejects the completion");
        }
    }
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
