//! Assertions: observable contract only (unit states from systemd, file bytes and metadata,
//! status.json, the receipt log and its hash chain, any core-ops step's `--json` output, the
//! kernel's mount table, command output), each evaluated on the machine and recorded with what
//! was expected and what was seen.
//!
//! Why host-side: the guest image has no jq, python3 or git; the guest only prints raw
//! material (systemctl show, stat, /proc/self/mountinfo, file copies onto the share) and the
//! harness parses and compares it here, where it is unit-tested.
//!
//! Why an evaluation never aborts: every check of a step is evaluated and every failure is
//! reported; an assertion that could not be evaluated (the guest did not answer, a document
//! is not JSON) is itself a failed check saying why.

use std::collections::BTreeMap;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::machine::{Output, Shell, quote};
use super::scenario::{Assertion, parse_mode};

/// core-ops' default state directory in the guest.
pub const STATE_DIR: &str = "/var/lib/core-ops";

/// One evaluated check.
#[derive(Debug, Clone, Serialize)]
pub struct AssertionResult {
    /// Index of the step it belongs to.
    pub step: usize,
    /// What it is about (`unit web.service`).
    pub subject: String,
    /// Which property (`active_state`, `sha256`, `exit_code`, ...).
    pub check: String,
    /// Expected value.
    pub expected: Value,
    /// Observed value.
    pub actual: Value,
    /// Whether they matched.
    pub passed: bool,
}

/// What `remember_unit` recorded about a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitMark {
    /// systemd's `InvocationID` then (changes on every start).
    pub invocation_id: String,
    /// `NRestarts` then.
    pub n_restarts: u64,
}

/// What assertions can read besides the machine.
pub struct Inputs<'a> {
    /// Fixture label -> commit id.
    pub revisions: &'a BTreeMap<String, String>,
    /// The most recent `plan` step's JSON.
    pub last_plan: Option<&'a Value>,
    /// The most recent command step's output.
    pub last_output: Option<&'a Output>,
    /// Every core-ops step's `--json` output so far, by step index.
    pub outputs: &'a BTreeMap<usize, Value>,
    /// The index of the latest core-ops step.
    pub last_core_ops: Option<usize>,
    /// `remember_unit` marks by unit name.
    pub remembered: &'a BTreeMap<String, UnitMark>,
    /// core-ops' state directory on the machine ([`STATE_DIR`] in a guest).
    pub state_dir: &'a str,
}

const T: Duration = Duration::from_secs(60);

/// Collects the results of one assertion.
struct Results {
    step: usize,
    subject: String,
    out: Vec<AssertionResult>,
}

impl Results {
    fn push(&mut self, check: &str, expected: Value, actual: Value) {
        let passed = expected == actual;
        self.push_as(check, expected, actual, passed);
    }

    fn push_as(&mut self, check: &str, expected: Value, actual: Value, passed: bool) {
        self.out.push(AssertionResult {
            step: self.step,
            subject: self.subject.clone(),
            check: check.into(),
            expected,
            actual,
            passed,
        });
    }
}

/// Evaluate one assertion into one or more results. Never fails: what could not be evaluated
/// is a failed `evaluated` check carrying the error.
pub fn evaluate(
    sh: &mut Shell<'_>,
    step: usize,
    a: &Assertion,
    cx: &Inputs<'_>,
) -> Vec<AssertionResult> {
    let mut r = Results {
        step,
        subject: a.subject(),
        out: Vec::new(),
    };
    if let Err(e) = evaluate_into(sh, a, cx, &mut r) {
        r.push_as(
            "evaluated",
            Value::Bool(true),
            Value::String(format!("{e:#}")),
            false,
        );
    }
    r.out
}

fn evaluate_into(
    sh: &mut Shell<'_>,
    a: &Assertion,
    cx: &Inputs<'_>,
    r: &mut Results,
) -> Result<()> {
    if let Some(unit) = &a.unit {
        let o = sh.exec(
            "assert-unit",
            &format!(
                "systemctl show {} -p ActiveState -p SubState -p LoadState -p UnitFileState -p InvocationID -p NRestarts",
                quote(unit)
            ),
            T,
        )?;
        let props = parse_properties(&o.stdout_text());
        let get = |k: &str| Value::String(props.get(k).cloned().unwrap_or_default());
        for (check, prop, want) in [
            ("active_state", "ActiveState", &a.active_state),
            ("sub_state", "SubState", &a.sub_state),
            ("load_state", "LoadState", &a.load_state),
            ("enabled", "UnitFileState", &a.enabled),
        ] {
            if let Some(w) = want {
                r.push(check, Value::String(w.clone()), get(prop));
            }
        }
        if let Some(want) = a.restarted {
            let now = props.get("InvocationID").cloned().unwrap_or_default();
            match cx.remembered.get(unit) {
                Some(mark) => r.push(
                    "restarted",
                    Value::Bool(want),
                    Value::Bool(now != mark.invocation_id),
                ),
                None => r.push_as(
                    "restarted",
                    Value::Bool(want),
                    Value::String(format!("no remember_unit: {unit} before this step")),
                    false,
                ),
            }
        }
        if let Some(want) = a.n_restarts {
            let got = props
                .get("NRestarts")
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Value::Null, Value::from);
            r.push("n_restarts", Value::from(want), got);
        }
    } else if let Some(path) = &a.file {
        file_checks(sh, r.step, path, a, r)?;
    } else if let Some(pointer) = &a.status {
        let o = sh.exec(
            "assert-status",
            &format!("cat {}/status.json", cx.state_dir),
            T,
        )?;
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let actual = doc.pointer(pointer).cloned().unwrap_or(Value::Null);
        value_checks(a, cx, actual, r);
    } else if let Some(want) = &a.receipts {
        let got = labels(&receipt_log(sh, cx.state_dir)?);
        r.push("sequence", Value::from(want.clone()), Value::from(got));
    } else if let Some(want) = &a.receipts_tail {
        let got = labels(&receipt_log(sh, cx.state_dir)?);
        let tail = got[got.len().saturating_sub(want.len())..].to_vec();
        r.push("tail", Value::from(want.clone()), Value::from(tail));
    } else if let Some(want) = a.receipts_count {
        let got = receipt_log(sh, cx.state_dir)?.len();
        r.push("count", Value::from(want), Value::from(got));
    } else if let Some(i) = a.receipt {
        let log = receipt_log(sh, cx.state_dir)?;
        let doc = pick(&log, i)?;
        let p = a.pointer.as_deref().unwrap_or("");
        let actual = doc.2.pointer(p).cloned().unwrap_or(Value::Null);
        value_checks(a, cx, actual, r);
    } else if let Some(want) = a.receipt_chain {
        let report = receipt_chain(sh, r.step, cx.state_dir)?;
        let actual = if report.ok == want {
            Value::Bool(report.ok)
        } else {
            serde_json::json!({
                "ok": report.ok,
                "receipts": report.receipts,
                "problem": report.problem,
            })
        };
        r.push("intact", Value::Bool(want), actual);
    } else if let Some(i) = a.receipt_schema {
        let log = receipt_log(sh, cx.state_dir)?;
        let (file, _, doc) = pick(&log, i)?;
        let actual = match core_ops::runtime::schema::validate(
            core_ops::runtime::schema::Schema::RuntimeInstallReceipt,
            doc,
        ) {
            Ok(()) => Value::String("valid".into()),
            Err(errors) => Value::from(
                std::iter::once(format!("{file} is invalid:"))
                    .chain(errors)
                    .collect::<Vec<_>>(),
            ),
        };
        r.push("schema", Value::String("valid".into()), actual);
    } else if let Some(pointer) = &a.output_json {
        let Some(index) = a.step.or(cx.last_core_ops) else {
            bail!("no core-ops step ran before this assertion");
        };
        let Some(doc) = cx.outputs.get(&index) else {
            bail!("steps[{index}] printed no JSON document");
        };
        let actual = doc.pointer(pointer).cloned().unwrap_or(Value::Null);
        value_checks(a, cx, actual, r);
    } else if let Some(object) = &a.plan_action {
        let action = cx.last_plan.and_then(|p| {
            p["actions"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["id"] == object.as_str()))
        });
        let field = |f: &str| action.map(|a| a[f].clone()).unwrap_or(Value::Null);
        if let Some(w) = &a.action {
            r.push("action", Value::String(w.clone()), field("action"));
        }
        if let Some(w) = &a.cause {
            r.push("cause", Value::String(w.clone()), field("cause"));
        }
    } else if let Some(text) = &a.output_contains {
        let (hay, found) = match cx.last_output {
            Some(o) => {
                let hay = format!("{}{}", o.stdout_text(), o.stderr_text());
                let found = hay.contains(text.as_str());
                (hay, found)
            }
            None => (String::new(), false),
        };
        let actual = if found {
            Value::String(text.clone())
        } else {
            Value::String(excerpt(&hay))
        };
        r.push("contains", Value::String(text.clone()), actual);
    } else if let Some(path) = &a.mount {
        let o = sh.exec("assert-mount", "cat /proc/self/mountinfo", T)?;
        if o.code != 0 {
            bail!(
                "cannot read /proc/self/mountinfo: {}",
                o.stderr_text().trim()
            );
        }
        let mounts = mounts_at(&o.stdout_text(), path);
        if let Some(want) = a.mounted {
            r.push(
                "mounted",
                Value::Bool(want),
                Value::Bool(!mounts.is_empty()),
            );
        }
        if let Some(want) = &a.fstype {
            let top = mounts.last().map(|m| m.fstype.clone()).unwrap_or_default();
            r.push("fstype", Value::String(want.clone()), Value::String(top));
        }
    } else if let Some(dir) = &a.no_temp_files {
        let o = sh.exec(
            "assert-temp-files",
            &format!(
                "find {} -name '{}*' 2>/dev/null | sort",
                quote(dir),
                core_ops::fsutil::TEMP_PREFIX
            ),
            T,
        )?;
        let found: Vec<String> = o.stdout_text().lines().map(str::to_string).collect();
        r.push(
            "temp_files",
            Value::from(Vec::<String>::new()),
            Value::from(found),
        );
    }
    Ok(())
}

/// `equals`, `revision` and `contains` against a value read from a document.
fn value_checks(a: &Assertion, cx: &Inputs<'_>, actual: Value, r: &mut Results) {
    if let Some(want) = &a.equals {
        r.push("equals", want.clone(), actual.clone());
    }
    if let Some(label) = &a.revision {
        let sha = cx.revisions.get(label).cloned().unwrap_or_default();
        r.push("revision", Value::String(sha), actual.clone());
    }
    if let Some(want) = &a.contains {
        let found = json_contains(&actual, want);
        let shown = if found { want.clone() } else { actual };
        r.push_as("contains", want.clone(), shown, found);
    }
}

/// Whether `hay` holds `needle`: an element of an array equal to it (or, for an object
/// needle, an element having all its fields), or a substring of a string.
pub fn json_contains(hay: &Value, needle: &Value) -> bool {
    match (hay, needle) {
        (Value::Array(items), _) => items.iter().any(|x| x == needle || subset(needle, x)),
        (Value::String(h), Value::String(n)) => h.contains(n.as_str()),
        _ => false,
    }
}

/// Every field of object `part` is in `whole` with the same value.
fn subset(part: &Value, whole: &Value) -> bool {
    match (part, whole) {
        (Value::Object(p), Value::Object(w)) => p.iter().all(|(k, v)| w.get(k) == Some(v)),
        _ => false,
    }
}

/// `KEY=VALUE` lines (`systemctl show`).
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One line of `/proc/self/mountinfo`, the parts assertions read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point (octal escapes decoded).
    pub mount_point: String,
    /// File-system type.
    pub fstype: String,
    /// Mount source.
    pub source: String,
}

/// The mounts at `path`, bottom first (the last one is what the path shows), from
/// `/proc/self/mountinfo` text: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - TYPE
/// SOURCE SUPEROPTS`.
pub fn mounts_at(mountinfo: &str, path: &str) -> Vec<MountEntry> {
    let want = path.trim_end_matches('/');
    let want = if want.is_empty() { "/" } else { want };
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: unescape_octal(fields.get(4)?),
                fstype: fields.get(sep + 1)?.to_string(),
                source: unescape_octal(fields.get(sep + 2)?),
            })
        })
        .filter(|m| m.mount_point == want)
        .collect()
}

/// Decode the kernel's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// File checks: existence, bytes (copied onto the share), `stat` metadata, directory entries.
fn file_checks(
    sh: &mut Shell<'_>,
    step: usize,
    path: &str,
    a: &Assertion,
    r: &mut Results,
) -> Result<()> {
    let rel = format!("out/file-{step}-{}", path_tag(path));
    let g = sh.guest_share();
    let o = sh.exec(
        "assert-file",
        &format!(
            "mkdir -p {g}/out\np={p}\nif [ -e \"$p\" ] || [ -L \"$p\" ]; then\n  echo present\n  stat -c '%F|%a|%U|%G' -- \"$p\"\n  if [ -f \"$p\" ]; then cp -- \"$p\" {g}/{rel}; fi\n  if [ -d \"$p\" ]; then ls -A1 -- \"$p\"; fi\nelse\n  echo absent\nfi",
            p = quote(path)
        ),
        T,
    )?;
    let text = o.stdout_text();
    let mut lines = text.lines();
    let present = lines.next() == Some("present");
    let meta = if present {
        lines.next().map(parse_stat)
    } else {
        None
    };
    let entries: Vec<String> = lines.map(str::to_string).collect();
    let bytes = if present {
        std::fs::read(sh.host_path(&rel)).ok()
    } else {
        None
    };
    let _ = std::fs::remove_file(sh.host_path(&rel));
    let wants_exist = a.exists.unwrap_or(true);
    r.push("exists", Value::Bool(wants_exist), Value::Bool(present));
    if let Some(want) = &a.sha256 {
        let got = bytes
            .as_deref()
            .map(|b| core_ops::model::normalize::sha256_hex(b)[7..].to_string())
            .unwrap_or_default();
        r.push(
            "sha256",
            Value::String(want.trim_start_matches("sha256:").to_string()),
            Value::String(got),
        );
    }
    if let Some(want) = &a.content {
        let got = bytes
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        r.push("content", Value::String(want.clone()), Value::String(got));
    }
    let field = |f: fn(&FileMeta) -> String| meta.as_ref().map(f).unwrap_or_default();
    if let Some(want) = &a.mode {
        let norm = parse_mode(want)
            .map(|m| format!("{m:04o}"))
            .unwrap_or_default();
        r.push(
            "mode",
            Value::String(norm),
            Value::String(field(|m| m.mode.clone())),
        );
    }
    if let Some(want) = &a.owner {
        r.push(
            "owner",
            Value::String(want.clone()),
            Value::String(field(|m| m.owner.clone())),
        );
    }
    if let Some(want) = &a.group {
        r.push(
            "group",
            Value::String(want.clone()),
            Value::String(field(|m| m.group.clone())),
        );
    }
    if let Some(want) = &a.entries {
        let is_dir = meta.as_ref().is_some_and(|m| m.kind == "directory");
        let mut want = want.clone();
        want.sort();
        let mut got = entries;
        got.sort();
        let actual = if is_dir {
            Value::from(got)
        } else {
            Value::String(format!(
                "not a directory ({})",
                meta.as_ref().map_or("absent", |m| m.kind.as_str())
            ))
        };
        r.push("entries", Value::from(want), actual);
    }
    Ok(())
}

/// `stat -c '%F|%a|%U|%G'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// `regular file`, `directory`, `symbolic link`, ...
    pub kind: String,
    /// Permission bits, 4 octal digits.
    pub mode: String,
    /// Owner name.
    pub owner: String,
    /// Group name.
    pub group: String,
}

/// Parse one `stat -c '%F|%a|%U|%G'` line (`regular empty file` counts as `regular file`).
pub fn parse_stat(line: &str) -> FileMeta {
    let mut f = line.trim().splitn(4, '|');
    let kind = f
        .next()
        .unwrap_or_default()
        .replace("regular empty file", "regular file");
    let mode = f
        .next()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .map(|m| format!("{m:04o}"))
        .unwrap_or_default();
    FileMeta {
        kind,
        mode,
        owner: f.next().unwrap_or_default().to_string(),
        group: f.next().unwrap_or_default().to_string(),
    }
}

/// One receipt: file name, label (see [`receipt_log`]), document.
pub type Receipt = (String, String, Value);

/// The receipt log in chain order: each file with its label (a reconcile receipt's
/// `transition`, a runtime install receipt's `runtime:<installState>`, anything else its file
/// kind) and its document.
pub fn receipt_log(sh: &mut Shell<'_>, state_dir: &str) -> Result<Vec<Receipt>> {
    let o = sh.exec(
        "receipts",
        &format!(
            "cd {state_dir}/receipts 2>/dev/null || exit 0\nfor f in $(ls | grep -E '^[0-9]+-[a-z-]+\\.json$' | sort -n); do printf '%s ' \"$f\"; tr -d '\\n' < \"$f\"; echo; done"
        ),
        T,
    )?;
    let mut out = Vec::new();
    for line in o.stdout_text().lines() {
        let Some((file, json)) = line.split_once(' ') else {
            continue;
        };
        let doc: Value =
            serde_json::from_str(json).with_context(|| format!("receipt {file} is not JSON"))?;
        out.push((file.to_string(), receipt_label(file, &doc), doc));
    }
    Ok(out)
}

fn labels(log: &[Receipt]) -> Vec<String> {
    log.iter().map(|(_, l, _)| l.clone()).collect()
}

/// The receipt at position `i` (negative: from the newest).
fn pick(log: &[Receipt], i: i64) -> Result<&Receipt> {
    let n = log.len() as i64;
    let at = if i < 0 { n + i } else { i };
    if at < 0 || at >= n {
        bail!("no receipt {i}: the log holds {n}");
    }
    Ok(&log[at as usize])
}

/// Copy the receipts and their head anchor onto the share and verify the hash chain there
/// with core-ops' own verifier (every archive re-hashed).
fn receipt_chain(
    sh: &mut Shell<'_>,
    step: usize,
    state_dir: &str,
) -> Result<core_ops::record::receipts::ChainReport> {
    let rel = format!("out/chain-{step}-{}", super::report::random_hex(4));
    let g = sh.guest_share();
    let o = sh.exec(
        "assert-receipt-chain",
        &format!(
            "mkdir -p {g}/{rel}\ncd {state_dir} || exit 3\n[ -d receipts ] && cp -a receipts {g}/{rel}/\n[ -f {head} ] && cp -a {head} {g}/{rel}/\nexit 0",
            head = core_ops::record::receipts::HEAD_FILE
        ),
        T,
    )?;
    if o.code != 0 {
        bail!("cannot copy the receipts: {}", o.stderr_text().trim());
    }
    let copy = sh.host_path(&rel);
    let report = core_ops::record::receipts::verify(
        Path::new(&copy),
        core_ops::record::receipts::Depth::Full,
    )
    .map_err(|e| anyhow::anyhow!("verifying the receipt chain: {e}"));
    let _ = std::fs::remove_dir_all(&copy);
    report
}

fn receipt_label(file: &str, doc: &Value) -> String {
    let kind = file
        .trim_end_matches(".json")
        .split_once('-')
        .map(|(_, k)| k)
        .unwrap_or(file);
    match kind {
        "reconcile" => doc["transition"].as_str().unwrap_or("?").to_string(),
        "runtime-install" => format!("runtime:{}", doc["installState"].as_str().unwrap_or("?")),
        other => other.to_string(),
    }
}

/// A short, file-name-safe tag of a guest path (its copy on the share is named by it).
fn path_tag(path: &str) -> String {
    core_ops::model::normalize::sha256_hex(path.as_bytes())[7..19].to_string()
}

/// The last 400 characters of a text (what a failed `contains` shows).
fn excerpt(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let start = chars.len().saturating_sub(400);
    chars[start..].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::super::machine::local::Local;
    use super::*;
    use serde_json::json;

    /// A local machine, a state dir inside it, and the inputs assertions read.
    struct Fx {
        _t: tempfile::TempDir,
        m: Local,
        state: String,
        revisions: BTreeMap<String, String>,
        outputs: BTreeMap<usize, Value>,
        remembered: BTreeMap<String, UnitMark>,
    }

    fn fx() -> Fx {
        let t = tempfile::tempdir().unwrap();
        let m = Local::new(&t.path().join("share"));
        let state = t.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        Fx {
            m,
            state: state.display().to_string(),
            _t: t,
            revisions: BTreeMap::from([("v1".to_string(), "a".repeat(40))]),
            outputs: BTreeMap::new(),
            remembered: BTreeMap::new(),
        }
    }

    /// Evaluate one assertion (YAML) and return (all passed, results).
    fn eval(f: &mut Fx, yaml: &str) -> (bool, Vec<AssertionResult>) {
        let a: Assertion = serde_yaml::from_str(yaml).unwrap();
        let inputs = Inputs {
            revisions: &f.revisions,
            last_plan: None,
            last_output: None,
            outputs: &f.outputs,
            last_core_ops: f.outputs.keys().last().copied(),
            remembered: &f.remembered,
            state_dir: &f.state,
        };
        let mut sh = Shell::new(&mut f.m);
        let r = evaluate(&mut sh, 3, &a, &inputs);
        assert!(!r.is_empty(), "{yaml}: no result");
        (r.iter().all(|c| c.passed), r)
    }

    fn passes(f: &mut Fx, yaml: &str) {
        let (ok, r) = eval(f, yaml);
        assert!(ok, "{yaml} should pass: {r:#?}");
    }

    fn fails(f: &mut Fx, yaml: &str) {
        let (ok, r) = eval(f, yaml);
        assert!(!ok, "{yaml} should fail: {r:#?}");
    }

    #[test]
    fn receipt_labels() {
        let r: Value = serde_json::json!({"transition": "rolled_back"});
        assert_eq!(receipt_label("00000003-reconcile.json", &r), "rolled_back");
        let r: Value = serde_json::json!({"installState": "installed"});
        assert_eq!(
            receipt_label("00000004-runtime-install.json", &r),
            "runtime:installed"
        );
        assert_eq!(receipt_label("00000005-other.json", &r), "other");
    }

    #[test]
    fn file_mode_owner_group_and_entries() {
        use std::os::unix::fs::PermissionsExt;
        let mut f = fx();
        let dir = f.m.share.join("d");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.conf");
        std::fs::write(&file, "hi\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let me = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let grp = String::from_utf8(
            std::process::Command::new("id")
                .arg("-gn")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let (me, grp) = (me.trim(), grp.trim());
        let p = file.display();
        passes(
            &mut f,
            &format!("{{file: {p}, mode: \"0640\", content: \"hi\\n\"}}"),
        );
        passes(&mut f, &format!("{{file: {p}, mode: \"640\"}}"));
        fails(&mut f, &format!("{{file: {p}, mode: \"0644\"}}"));
        passes(&mut f, &format!("{{file: {p}, owner: {me}, group: {grp}}}"));
        fails(&mut f, &format!("{{file: {p}, owner: nobody-such-user}}"));
        fails(&mut f, &format!("{{file: {p}, group: nobody-such-group}}"));
        let d = dir.display();
        passes(&mut f, &format!("{{file: {d}, entries: [x.conf]}}"));
        fails(&mut f, &format!("{{file: {d}, entries: []}}"));
        // a regular file has no entries
        fails(&mut f, &format!("{{file: {p}, entries: []}}"));
        std::fs::remove_file(&file).unwrap();
        passes(&mut f, &format!("{{file: {d}, entries: []}}"));
        passes(&mut f, &format!("{{file: {p}, exists: false}}"));
        fails(&mut f, &format!("{{file: {p}, mode: \"0640\"}}"));
    }

    #[test]
    fn mount_table() {
        let info = "36 35 98:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 36 0:33 / /srv/my\\040dir rw - tmpfs tmpfs rw\n\
                    41 40 0:34 / /srv/my\\040dir rw - autofs systemd-1 rw\n";
        assert_eq!(mounts_at(info, "/").len(), 1);
        let m = mounts_at(info, "/srv/my dir/");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].fstype, "autofs");
        assert_eq!(m[0].source, "tmpfs");
        assert!(mounts_at(info, "/srv").is_empty());
        // and live, on this host's own table
        let mut f = fx();
        passes(&mut f, "{mount: /, mounted: true}");
        fails(
            &mut f,
            "{mount: /nonexistent-core-ops-verify, mounted: true}",
        );
        passes(
            &mut f,
            "{mount: /nonexistent-core-ops-verify, mounted: false}",
        );
        fails(&mut f, "{mount: /, fstype: no-such-fs}");
    }

    #[test]
    fn no_temp_files() {
        let mut f = fx();
        let d = f.m.share.join("etc");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a.conf"), "x").unwrap();
        let y = format!("{{no_temp_files: {}}}", d.display());
        passes(&mut f, &y);
        std::fs::write(d.join("sub/.core-ops-tmp-abc123"), "x").unwrap();
        let (ok, r) = eval(&mut f, &y);
        assert!(!ok);
        assert!(
            r[0].actual.to_string().contains(".core-ops-tmp-abc123"),
            "{r:#?}"
        );
    }

    /// Two receipts appended by core-ops' own code: log, tail, count, pointer, chain.
    #[test]
    fn receipts_content_and_chain() {
        let mut f = fx();
        let state = PathBuf::from(&f.state);
        for t in ["applied", "rolled_back"] {
            core_ops::record::receipts::append_document(&state, "reconcile", |seq, prev| {
                json!({"sequence": seq, "transition": t, "previous_receipt_digest": prev})
            })
            .unwrap();
        }
        passes(&mut f, "receipts: [applied, rolled_back]");
        passes(&mut f, "receipts_tail: [rolled_back]");
        fails(&mut f, "receipts_tail: [applied]");
        passes(&mut f, "receipts_count: 2");
        fails(&mut f, "receipts_count: 3");
        passes(
            &mut f,
            "{receipt: -1, pointer: /transition, equals: rolled_back}",
        );
        passes(&mut f, "{receipt: 0, pointer: /sequence, equals: 1}");
        fails(
            &mut f,
            "{receipt: 0, pointer: /transition, equals: rolled_back}",
        );
        // out of range: a failed check saying why, not a harness error
        let (ok, r) = eval(&mut f, "{receipt: 5, pointer: /x, equals: 1}");
        assert!(!ok && r[0].check == "evaluated", "{r:#?}");
        passes(&mut f, "receipt_chain: true");
        fails(&mut f, "receipt_chain: false");
        // an edited older receipt breaks the link the newer one records
        let first = state
            .join("receipts")
            .join(core_ops::record::receipts::file_name(1, "reconcile"));
        let text = std::fs::read_to_string(&first).unwrap();
        std::fs::write(&first, text.replace("applied", "applieD")).unwrap();
        fails(&mut f, "receipt_chain: true");
        passes(&mut f, "receipt_chain: false");
    }

    #[test]
    fn runtime_receipt_schema() {
        let mut f = fx();
        let state = PathBuf::from(&f.state);
        let good: Value = serde_json::from_str(include_str!(
            "../../../src/runtime/sourceos/examples/runtimeinstallreceipt.json"
        ))
        .unwrap();
        let mut bad = good.clone();
        bad["installState"] = json!(42);
        for doc in [good, bad] {
            core_ops::record::receipts::append_document(&state, "runtime-install", |_, _| doc)
                .unwrap();
        }
        passes(&mut f, "receipt_schema: 0");
        fails(&mut f, "receipt_schema: -1");
    }

    #[test]
    fn output_json_pointers() {
        let mut f = fx();
        f.outputs.insert(
            1,
            json!({"revision": "a".repeat(40), "actions": [{"id": "unit:a.service", "action": "create", "cause": "desired_change"}], "quarantine_lifted": ["x"]}),
        );
        f.outputs.insert(2, json!({"outcome": "converged"}));
        passes(&mut f, "{output_json: /outcome, equals: converged}");
        fails(&mut f, "{output_json: /outcome, equals: failed}");
        passes(
            &mut f,
            "{output_json: /actions/0/action, step: 1, equals: create}",
        );
        passes(&mut f, "{output_json: /revision, step: 1, revision: v1}");
        fails(&mut f, "{output_json: /outcome, revision: v1}");
        passes(
            &mut f,
            "{output_json: /actions, step: 1, contains: {id: unit:a.service, cause: desired_change}}",
        );
        fails(
            &mut f,
            "{output_json: /actions, step: 1, contains: {id: unit:b.service}}",
        );
        passes(
            &mut f,
            "{output_json: /quarantine_lifted, step: 1, contains: x}",
        );
        passes(&mut f, "{output_json: /outcome, contains: verge}");
        fails(&mut f, "{output_json: /outcome, contains: diverge}");
        fails(&mut f, "{output_json: /missing, equals: 1}");
    }

    /// `systemctl` is a stand-in: what matters is reading InvocationID and NRestarts.
    #[test]
    fn unit_restarted_and_n_restarts() {
        let mut f = fx();
        f.m.fake(
            "systemctl",
            "printf 'ActiveState=active\\nSubState=running\\nInvocationID=%s\\nNRestarts=2\\n' \"$(cat $(dirname $0)/inv)\"",
        );
        std::fs::write(f.m.share.join("fakebin/inv"), "aaa").unwrap();
        f.remembered.insert(
            "web.service".into(),
            UnitMark {
                invocation_id: "aaa".into(),
                n_restarts: 2,
            },
        );
        passes(
            &mut f,
            "{unit: web.service, restarted: false, n_restarts: 2, active_state: active}",
        );
        fails(&mut f, "{unit: web.service, restarted: true}");
        fails(&mut f, "{unit: web.service, n_restarts: 0}");
        std::fs::write(f.m.share.join("fakebin/inv"), "bbb").unwrap();
        passes(&mut f, "{unit: web.service, restarted: true}");
        fails(&mut f, "{unit: web.service, restarted: false}");
        // never remembered: a failed check, saying so
        let (ok, r) = eval(&mut f, "{unit: other.service, restarted: false}");
        assert!(
            !ok && r[0].actual.to_string().contains("remember_unit"),
            "{r:#?}"
        );
    }

    #[test]
    fn status_pointer() {
        let mut f = fx();
        std::fs::write(
            PathBuf::from(&f.state).join("status.json"),
            json!({"last_applied": {"revision": "a".repeat(40)}}).to_string(),
        )
        .unwrap();
        passes(&mut f, "{status: /last_applied/revision, revision: v1}");
        fails(&mut f, "{status: /last_applied/revision, equals: other}");
    }

    #[test]
    fn stat_lines() {
        let m = parse_stat("regular empty file|600|root|adm");
        assert_eq!(m.kind, "regular file");
        assert_eq!(m.mode, "0600");
        assert_eq!((m.owner.as_str(), m.group.as_str()), ("root", "adm"));
    }
}
