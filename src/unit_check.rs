//! Validation of the merged, rendered unit set by systemd's own parser, plus core-ops' checks
//! for what systemd only warns about, before the host is touched.
//!
//! Why: systemd loads a unit at reload time and then refuses it (`bad-setting`), treats it as
//! masked (an empty file), or silently drops what it cannot read (a typo'd key, a dependency
//! on a unit nothing provides, a Quadlet file name where a unit name belongs). Each layer can
//! be valid on its own while the merge is not (`Type=oneshot` + a drop-in's `Restart=always`).
//! So `plan` writes the managed unit files, their drop-ins and the Quadlet generator's output
//! into a private temp dir and lets the manager's own parser judge them:
//!
//! ```text
//! SYSTEMD_UNIT_PATH=<tmp>/units:<tmp>/generated:   (trailing colon: then the host's own dirs)
//! systemd-analyze verify --man=no --generators=no --recursive-errors=no <tmp>/units/a.service ...
//! ```
//!
//! - The temp dirs come first, so the desired files win over what is on the host now, and the
//!   host's units (`network-online.target`, a distro unit a managed drop-in extends) resolve as
//!   they will after apply. `--root` would hide them.
//! - As root, the verify runs as `nobody`: systemd-analyze's test manager touches
//!   `/run/systemd/systemd-units-load` (util-linux reads its mtime); without privileges it
//!   cannot, so the host's systemd state is never changed. No bus is used, no generator runs.
//! - Each message `<tmp path>:<line>: ...` or `<unit>: ...` is mapped back to the resource and
//!   repository file (and line: a unit-level message is pinned on the last layer that sets the
//!   key it names). What systemd refuses or ignores (a value dropped with `ignoring`, an
//!   unknown key or section, `Refusing.`) is a rejection; what it only warns about is a
//!   finding. `Command ... is not executable` is skipped: binaries may arrive with a runtime or
//!   exist only on the target host.
//!
//! core-ops' own checks add what systemd does not say (or says without a file): an empty file
//! (masked), a `.mount` without `What=` after merging, a dependency or trigger naming a unit this
//! host neither selects nor has (a warning finding: on a CI runner the host's units are not the
//! target's), a drop-in for such a unit, a Quadlet file name where a unit name belongs.
//! Without systemd-analyze (`CORE_OPS_SYSTEMD_ANALYZE=none`, or not installed) the plan says so
//! once and only the own checks run, which then also mirror systemd's refusals for the common
//! unit types.
//!
//! Cost: the set is written to `/dev/shm` when `nobody` can reach it (RAM; nothing hits the
//! disk at every agent tick). Measured on systemd 252, 2 loaded cores: 1 unit ~15 ms, 20 units
//! ~20 ms, 100 units (+100 drop-ins) ~50 ms, writing and removal included; no cache is kept.
//!
//! Like `quadlet_check`, this starts a process but is not systemd and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Paths;
use crate::error::Location;
use crate::model::normalize::Kind;
use crate::model::unit_file::UnitFile;
use crate::quadlet_check::QuadletCheck;
use crate::render::DesiredState;
use crate::render::quadlet;

/// `CORE_OPS_SYSTEMD_ANALYZE`: a path, `none` (skip the verify), or unset/empty (look in the
/// default places).
pub const ANALYZE_ENV: &str = "CORE_OPS_SYSTEMD_ANALYZE";

/// Where systemd-analyze is looked for.
const DEFAULT_ANALYZERS: &[&str] = &["/usr/bin/systemd-analyze", "/bin/systemd-analyze"];

/// How long the verify may take before the set is reported as not validated.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Directories systemd loads units from (besides the managed unit dir): a dependency on a unit
/// found in one of them is satisfied on this host.
const HOST_UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system.attached",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/run/systemd/generator.late",
];

/// Dependencies whose target must exist for the unit to start.
const HARD_DEPS: &[&str] = &["Requires", "Requisite", "BindsTo"];
/// Dependencies systemd drops without a word when the target does not exist.
const SOFT_DEPS: &[&str] = &[
    "Wants",
    "Upholds",
    "PartOf",
    "After",
    "Before",
    "OnFailure",
    "OnSuccess",
];
/// Unit types that exist without a unit file (devices, scopes, implicit slices, mounts and
/// swaps from the kernel's tables or fstab): their absence on disk proves nothing.
const DYNAMIC_TYPES: &[&str] = &["device", "scope", "slice", "mount", "swap"];

/// What systemd and core-ops say about the managed unit set.
///
/// Why: the planner stays pure; it receives this value like any other input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitCheck {
    /// Rejected objects: resource id -> `file:line: message` (several joined with `; `).
    pub rejected: BTreeMap<String, String>,
    /// Warning findings: (resource id, `file:line: message`), sorted.
    pub findings: Vec<(String, String)>,
    /// Plan warnings (not validated, and why; output nobody could attribute).
    pub warnings: Vec<String>,
    /// The systemd-analyze that ran, if one did.
    pub analyzer: Option<PathBuf>,
}

/// The systemd-analyze to run, or why there is none.
pub fn resolve_analyzer(setting: Option<&str>) -> Result<PathBuf, String> {
    match setting.map(str::trim).unwrap_or("") {
        "" => DEFAULT_ANALYZERS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| format!("none of {} exists", DEFAULT_ANALYZERS.join(", "))),
        "none" => Err(format!("validation is off: {ANALYZE_ENV}=none")),
        p if Path::new(p).is_file() => Ok(PathBuf::from(p)),
        p => Err(format!("{p} does not exist ({ANALYZE_ENV})")),
    }
}

/// Validate the managed units of `desired` (with the units the Quadlet generator made).
///
/// Why: see the module docs. Returns an empty check when nothing systemd loads is managed.
pub fn check(desired: &DesiredState, paths: &Paths, quadlet: &QuadletCheck) -> UnitCheck {
    let setting = std::env::var(ANALYZE_ENV).ok();
    check_with(
        desired,
        paths,
        quadlet,
        resolve_analyzer(setting.as_deref()),
        &|name| host_has(&paths.unit_dir, name),
    )
}

/// [`check`] with the analyzer and the host's unit lookup given (for tests).
pub(crate) fn check_with(
    desired: &DesiredState,
    paths: &Paths,
    quadlet: &QuadletCheck,
    analyzer: Result<PathBuf, String>,
    host: &dyn Fn(&str) -> bool,
) -> UnitCheck {
    let set = unit_set(desired, &paths.unit_dir, quadlet);
    if set.is_empty() {
        return UnitCheck::default();
    }
    let mut warnings = Vec::new();
    let mut verified = None;
    let mut analyzer_used = None;
    match analyzer {
        Err(why) => warnings.push(format!(
            "units not validated by systemd-analyze: {why}; only core-ops' own checks ran"
        )),
        Ok(a) => {
            let t0 = Instant::now();
            let run = run_verify(&a, &set);
            let ms = t0.elapsed().as_millis() as u64;
            match run {
                Ok(run) => {
                    tracing::info!(
                        analyzer = %a.display(),
                        units = set.len(),
                        duration_ms = ms,
                        "unit set verified by systemd-analyze"
                    );
                    match interpret(&set, &run.output, &run.dir) {
                        Ok(v) => verified = Some(v),
                        Err(why) => warnings.push(format!(
                            "units not validated by systemd-analyze: {why}; only core-ops' own checks ran"
                        )),
                    }
                }
                Err(e) => warnings.push(format!(
                    "units not validated: running {} failed: {e}; only core-ops' own checks ran",
                    a.display()
                )),
            }
            analyzer_used = Some(a);
        }
    }
    let known = known_units(desired);
    let own = own_checks(&set, &known, host, verified.is_none());
    let mut out = own.clone();
    if let Some(v) = verified {
        warnings.extend(v.warnings.iter().cloned());
        for (id, msgs) in v.rejected {
            // a unit core-ops already rejected for a reason it can say better (empty, no
            // What=) keeps only systemd's line-level messages
            let own_says = own.rejected.contains_key(&id);
            let keep: Vec<String> = msgs
                .into_iter()
                .filter(|m| !own_says || m.line_level)
                .map(|m| m.text)
                .collect();
            out.rejected.entry(id).or_default().extend(keep);
        }
        out.findings.extend(v.findings);
    }
    UnitCheck {
        rejected: out
            .rejected
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(id, mut msgs)| {
                dedup_keep_order(&mut msgs);
                (id, msgs.join("; "))
            })
            .collect(),
        findings: out.findings.into_iter().collect(),
        warnings,
        analyzer: analyzer_used,
    }
}

fn dedup_keep_order(v: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    v.retain(|m| seen.insert(m.clone()));
}

/// Whether the host has a unit of this name (a file or a link in a unit dir); an instance
/// counts when its template exists.
pub fn host_has(unit_dir: &Path, name: &str) -> bool {
    let mut names = vec![name.to_string()];
    if let Some(t) = template_of(name) {
        names.push(t);
    }
    std::iter::once(unit_dir)
        .chain(HOST_UNIT_DIRS.iter().map(Path::new))
        .any(|d| names.iter().any(|n| d.join(n).symlink_metadata().is_ok()))
}

/// `a@b.service` -> `a@.service`.
fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let (instance, suffix) = rest.rsplit_once('.')?;
    (!instance.is_empty()).then(|| format!("{prefix}@.{suffix}"))
}

fn unit_type(name: &str) -> &str {
    name.rsplit_once('.').map(|(_, s)| s).unwrap_or("")
}

/// Where a file of the set is written in the temp dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    /// `<tmp>/units`: managed unit files and drop-ins.
    Units,
    /// `<tmp>/generated`: the Quadlet generator's output.
    Generated,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Units => "units",
            Dir::Generated => "generated",
        }
    }
}

/// One file systemd reads for a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layer<'a> {
    /// Resource id it belongs to.
    id: &'a str,
    /// The repository file shown in messages.
    file: String,
    /// Temp dir and path below it.
    dir: Dir,
    rel: String,
    content: &'a [u8],
}

/// One unit as systemd will load it after apply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetUnit<'a> {
    /// Its main file; `None` when only drop-ins are managed (a unit of the host).
    main: Option<Layer<'a>>,
    /// Managed drop-ins, in the order systemd applies them (by file name).
    dropins: Vec<Layer<'a>>,
}

impl<'a> SetUnit<'a> {
    fn layers(&self) -> impl Iterator<Item = &Layer<'a>> {
        self.main.iter().chain(self.dropins.iter())
    }

    /// The id a unit-level message about this unit is pinned on.
    fn owner(&self) -> &'a str {
        self.main
            .as_ref()
            .or(self.dropins.first())
            .map(|l| l.id)
            .unwrap_or_default()
    }
}

/// The units systemd will load from what core-ops manages, by systemd name.
fn unit_set<'a>(
    desired: &'a DesiredState,
    unit_dir: &Path,
    quadlet: &'a QuadletCheck,
) -> BTreeMap<String, SetUnit<'a>> {
    let mut set: BTreeMap<String, SetUnit<'a>> = BTreeMap::new();
    for r in desired.resources.values() {
        let Some(first) = r.layers.first() else {
            continue;
        };
        match r.kind {
            Kind::Unit | Kind::Mount | Kind::Automount => {
                let Some(name) = r.path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                set.entry(name.to_string())
                    .or_insert_with(|| SetUnit {
                        main: None,
                        dropins: Vec::new(),
                    })
                    .main = Some(Layer {
                    id: &r.id,
                    file: first.file.clone(),
                    dir: Dir::Units,
                    rel: name.to_string(),
                    content: &r.content,
                });
            }
            Kind::Quadlet => {
                let Some(u) = &r.unit else { continue };
                if quadlet.rejected.contains_key(&r.id) {
                    continue;
                }
                let Some(text) = quadlet.generated.get(&u.name) else {
                    continue;
                };
                set.entry(u.name.clone())
                    .or_insert_with(|| SetUnit {
                        main: None,
                        dropins: Vec::new(),
                    })
                    .main = Some(Layer {
                    id: &r.id,
                    file: format!("{} (generated {})", first.file, u.name),
                    dir: Dir::Generated,
                    rel: u.name.clone(),
                    content: text.as_bytes(),
                });
            }
            Kind::Dropin => {
                let Ok(rel) = r.path.strip_prefix(unit_dir) else {
                    continue; // a Quadlet drop-in: the generator merged it
                };
                let Some(unit) = rel
                    .parent()
                    .and_then(|p| p.to_str())
                    .and_then(|p| p.strip_suffix(".d"))
                else {
                    continue;
                };
                let file = r.layers.last().unwrap_or(first).file.clone();
                set.entry(unit.to_string())
                    .or_insert_with(|| SetUnit {
                        main: None,
                        dropins: Vec::new(),
                    })
                    .dropins
                    .push(Layer {
                        id: &r.id,
                        file,
                        dir: Dir::Units,
                        rel: rel.display().to_string(),
                        content: &r.content,
                    });
            }
            Kind::File | Kind::Runtime => {}
        }
    }
    for u in set.values_mut() {
        u.dropins.sort_by(|a, b| {
            let name = |l: &Layer| l.rel.rsplit('/').next().unwrap_or_default().to_string();
            name(a).cmp(&name(b))
        });
    }
    set
}

/// What the desired state provides.
#[derive(Debug, Clone, Default)]
struct Known {
    /// Unit names (Quadlet: the generated one) and their `Alias=` names.
    names: BTreeSet<String>,
    /// Quadlet file name -> generated unit name.
    quadlet: BTreeMap<String, String>,
}

fn known_units(desired: &DesiredState) -> Known {
    let mut names = BTreeSet::new();
    let mut quadlet = BTreeMap::new();
    for r in desired.resources.values() {
        if let Some(u) = &r.unit {
            names.insert(u.name.clone());
            if r.kind == Kind::Quadlet
                && let Some(file) = r.path.file_name().and_then(|n| n.to_str())
            {
                quadlet.insert(file.to_string(), u.name.clone());
            }
            if let Some(file) = r.layers.first()
                && let Ok(text) = std::str::from_utf8(&r.content)
                && let Ok(f) = UnitFile::parse(&file.file, text)
            {
                for e in f.entries("Install").filter(|e| e.key == "Alias") {
                    names.extend(e.value.split_whitespace().map(str::to_string));
                }
            }
        }
    }
    Known { names, quadlet }
}

/// One assignment after layering, with where it was written.
#[derive(Debug, Clone)]
struct Assigned<'a> {
    layer: &'a Layer<'a>,
    line: usize,
    value: String,
}

/// The parsed layers of a unit.
struct Parsed<'a> {
    layers: Vec<(&'a Layer<'a>, UnitFile)>,
}

impl<'a> Parsed<'a> {
    fn of(unit: &'a SetUnit<'a>) -> Parsed<'a> {
        let layers = unit
            .layers()
            .filter_map(|l| {
                let text = std::str::from_utf8(l.content).ok()?;
                Some((l, UnitFile::parse(&l.file, text).ok()?))
            })
            .collect();
        Parsed { layers }
    }

    /// The values of `section`/`key` after layering (an empty assignment resets).
    fn merged(&self, section: &str, key: &str) -> Vec<Assigned<'a>> {
        let mut out: Vec<Assigned<'a>> = Vec::new();
        for (layer, f) in &self.layers {
            for e in f.entries(section).filter(|e| e.key == key) {
                if e.value.is_empty() {
                    out.clear();
                } else {
                    out.push(Assigned {
                        layer,
                        line: e.line,
                        value: e.value.clone(),
                    });
                }
            }
        }
        out
    }

    fn last(&self, section: &str, key: &str) -> Option<String> {
        self.merged(section, key).pop().map(|a| a.value)
    }

    fn has(&self, section: &str, key: &str) -> bool {
        !self.merged(section, key).is_empty()
    }

    /// The last assignment of `key` in any section, reset or not: the line to blame.
    fn blame(&self, key: &str) -> Option<(&'a Layer<'a>, usize)> {
        self.blame_any(&[key])
    }

    /// The last assignment of any of `keys`.
    fn blame_any(&self, keys: &[&str]) -> Option<(&'a Layer<'a>, usize)> {
        let mut found = None;
        for (layer, f) in &self.layers {
            for s in &f.sections {
                for e in s.entries.iter().filter(|e| keys.contains(&e.key.as_str())) {
                    found = Some((*layer, e.line));
                }
            }
        }
        found
    }
}

/// Rejections and findings, before they are joined.
#[derive(Debug, Clone, Default)]
struct Verdicts {
    rejected: BTreeMap<String, Vec<String>>,
    findings: BTreeSet<(String, String)>,
}

impl Verdicts {
    fn reject(&mut self, id: &str, text: String) {
        self.rejected.entry(id.to_string()).or_default().push(text);
    }
    fn find(&mut self, id: &str, text: String) {
        self.findings.insert((id.to_string(), text));
    }
}

fn at(layer: &Layer, line: Option<usize>) -> Location {
    match line {
        Some(l) => Location::line(&layer.file, l),
        None => Location::file(&layer.file),
    }
}

/// core-ops' own checks: what systemd only warns about, or says in words nobody maps to a
/// file; with `mirror`, also systemd's refusals for the common types (no verify ran).
fn own_checks(
    set: &BTreeMap<String, SetUnit<'_>>,
    known: &Known,
    host: &dyn Fn(&str) -> bool,
    mirror: bool,
) -> Verdicts {
    let mut v = Verdicts::default();
    let provided = |n: &str| {
        known.names.contains(n)
            || template_of(n).is_some_and(|t| known.names.contains(&t))
            || DYNAMIC_TYPES.contains(&unit_type(n))
            || host(n)
    };
    for (name, unit) in set {
        let p = Parsed::of(unit);
        if let Some(main) = unit.main.as_ref().filter(|m| m.dir == Dir::Units) {
            if main.content.is_empty() {
                v.reject(
                    main.id,
                    format!(
                        "{}: empty unit file: systemd treats it as masked",
                        at(main, None)
                    ),
                );
                continue;
            }
            if unit_type(name) == "mount" && !p.has("Mount", "What") {
                let loc = p
                    .blame("What")
                    .map(|(l, n)| at(l, Some(n)))
                    .unwrap_or_else(|| at(main, None));
                v.reject(
                    main.id,
                    format!(
                        "{loc}: {name}: no What= in [Mount] once the layers are merged; systemd refuses a mount without a source"
                    ),
                );
            }
            if mirror {
                mirror_refusals(name, main, &p, &mut v);
            }
            triggers(name, main, &p, &provided, &mut v);
        }
        if unit.main.is_none() && !provided(name) {
            for d in &unit.dropins {
                v.find(
                    d.id,
                    format!(
                        "{}: drop-in for {name}, which this host neither selects nor has; systemd ignores it",
                        at(d, None)
                    ),
                );
            }
        }
        dependencies(name, &p, &provided, known, &mut v);
    }
    v
}

/// The refusals of systemd's loader for the common types, for when it could not be asked.
fn mirror_refusals(name: &str, main: &Layer, p: &Parsed, v: &mut Verdicts) {
    let blame_any = |keys: &[&str]| {
        p.blame_any(keys)
            .map(|(l, n)| at(l, Some(n)))
            .unwrap_or_else(|| at(main, None))
    };
    let mut refuse = |loc: Location, why: &str| {
        v.reject(
            main.id,
            format!("{loc}: {name}: {why} (systemd refuses the unit)"),
        )
    };
    match unit_type(name) {
        "service" => {
            let exec = ["ExecStart", "ExecStop", "SuccessAction"];
            if !exec.iter().any(|k| p.has("Service", k)) {
                refuse(
                    blame_any(&exec),
                    "no ExecStart=, ExecStop= or SuccessAction= once the layers are merged",
                );
            }
            let oneshot = p.last("Service", "Type").as_deref() == Some("oneshot");
            if !oneshot && p.merged("Service", "ExecStart").len() > 1 {
                refuse(
                    blame_any(&["ExecStart"]),
                    "more than one ExecStart=, which only Type=oneshot allows",
                );
            }
            if oneshot
                && matches!(
                    p.last("Service", "Restart").as_deref(),
                    Some("always" | "on-success")
                )
            {
                refuse(
                    blame_any(&["Restart"]),
                    "Restart=always or on-success is not allowed for Type=oneshot",
                );
            }
        }
        "timer" => {
            let keys = [
                "OnActiveSec",
                "OnBootSec",
                "OnStartupSec",
                "OnUnitActiveSec",
                "OnUnitInactiveSec",
                "OnCalendar",
                "OnClockChange",
                "OnTimezoneChange",
            ];
            if !keys.iter().any(|k| p.has("Timer", k)) {
                refuse(at(main, None), "the timer has no On...= setting");
            }
        }
        "socket" => {
            let keys = [
                "ListenStream",
                "ListenDatagram",
                "ListenSequentialPacket",
                "ListenFIFO",
                "ListenSpecial",
                "ListenNetlink",
                "ListenMessageQueue",
                "ListenUSBFunction",
            ];
            if !keys.iter().any(|k| p.has("Socket", k)) {
                refuse(at(main, None), "the socket has no Listen...= setting");
            }
        }
        "path" => {
            let keys = [
                "PathExists",
                "PathExistsGlob",
                "PathChanged",
                "PathModified",
                "DirectoryNotEmpty",
            ];
            if !keys.iter().any(|k| p.has("Path", k)) {
                refuse(at(main, None), "the path unit has no Path...= setting");
            }
        }
        "automount" if !p.has("Automount", "Where") => {
            refuse(at(main, None), "no Where= in [Automount]");
        }
        _ => {}
    }
}

/// A timer, path or socket starts another unit; if nothing provides it, it never can.
fn triggers(
    name: &str,
    main: &Layer,
    p: &Parsed,
    provided: &dyn Fn(&str) -> bool,
    v: &mut Verdicts,
) {
    let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name);
    let (section, key) = match unit_type(name) {
        "timer" => ("Timer", "Unit"),
        "path" => ("Path", "Unit"),
        "socket" => ("Socket", "Service"),
        _ => return,
    };
    let (target, loc) = match p.merged(section, key).pop() {
        Some(a) => (a.value, at(a.layer, Some(a.line))),
        None => {
            let accept = p
                .last("Socket", "Accept")
                .is_some_and(|a| matches!(a.as_str(), "yes" | "true" | "on" | "1"));
            let t = if unit_type(name) == "socket" && accept {
                format!("{stem}@.service")
            } else {
                format!("{stem}.service")
            };
            (t, at(main, None))
        }
    };
    if target.contains('%') || provided(&target) {
        return;
    }
    v.find(
        main.id,
        format!(
            "{loc}: {name} triggers {target}, which this host neither selects nor has; it cannot start it"
        ),
    );
}

/// `[Unit]` dependencies: a Quadlet file name where a unit name belongs, or a unit nothing
/// provides.
fn dependencies(
    name: &str,
    p: &Parsed,
    provided: &dyn Fn(&str) -> bool,
    known: &Known,
    v: &mut Verdicts,
) {
    for (key, hard) in HARD_DEPS
        .iter()
        .map(|k| (k, true))
        .chain(SOFT_DEPS.iter().map(|k| (k, false)))
    {
        for a in p.merged("Unit", key) {
            // the generator rewrote a Quadlet file's own [Unit]; only managed text is judged
            if a.layer.dir == Dir::Generated {
                continue;
            }
            let loc = at(a.layer, Some(a.line));
            for dep in a.value.split_whitespace() {
                if dep.contains('%') || dep == name {
                    continue;
                }
                if quadlet::is_quadlet(dep) {
                    let generated = known
                        .quadlet
                        .get(dep)
                        .cloned()
                        .unwrap_or_else(|| quadlet::generated_unit(dep, &UnitFile::default()));
                    let text = format!(
                        "{loc}: {name}: {key}={dep} names a Quadlet file, not a unit; systemd ignores it (use {key}={generated})"
                    );
                    if hard {
                        v.reject(a.layer.id, text);
                    } else {
                        v.find(a.layer.id, text);
                    }
                    continue;
                }
                if !dep.contains('.') || provided(dep) {
                    continue;
                }
                let effect = if hard {
                    format!("systemd will refuse to start {name} while it is missing")
                } else {
                    "systemd ignores it".to_string()
                };
                v.find(
                    a.layer.id,
                    format!(
                        "{loc}: {name}: {key}={dep} names a unit this host neither selects nor has; {effect}"
                    ),
                );
            }
        }
    }
}

/// The captured verify.
#[derive(Debug)]
struct Run {
    /// stderr then stdout.
    output: String,
    /// The temp dir (to map paths back).
    dir: PathBuf,
}

fn world_traversable(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors().all(|d| {
        d.metadata()
            .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0)
    })
}

/// Write the set and run `systemd-analyze verify` on it.
fn run_verify(analyzer: &Path, set: &BTreeMap<String, SetUnit<'_>>) -> std::io::Result<Run> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::os::unix::process::CommandExt;
    // RAM first: this runs at every plan, and a loaded disk makes 200 small files cost half
    // a second; `nobody` must reach it, and TMPDIR may be a private dir
    let base = [PathBuf::from("/dev/shm"), std::env::temp_dir()]
        .into_iter()
        .find(|d| world_traversable(d))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let tmp = crate::fsutil::ScratchDir::new_in(&base, "units", 0o755)?;
    let mut args: Vec<String> = Vec::new();
    for (name, unit) in set {
        for l in unit.layers() {
            let p = tmp.path().join(l.dir.name()).join(&l.rel);
            if let Some(parent) = p.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&p)?;
            std::io::Write::write_all(&mut f, l.content)?;
        }
        args.push(match &unit.main {
            Some(m) => tmp
                .path()
                .join(m.dir.name())
                .join(&m.rel)
                .display()
                .to_string(),
            None => name.clone(),
        });
    }
    let unit_path = format!(
        "{}:{}:",
        tmp.path().join(Dir::Units.name()).display(),
        tmp.path().join(Dir::Generated.name()).display()
    );
    let mut cmd = Command::new(analyzer);
    cmd.arg("verify")
        .arg("--man=no")
        .arg("--generators=no")
        .arg("--recursive-errors=no")
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("SYSTEMD_UNIT_PATH", &unit_path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_LOG_TIME", "0")
        .env("SYSTEMD_LOG_LOCATION", "0")
        .env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_PAGER", "")
        .env("LC_ALL", "C")
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if nix::unistd::Uid::effective().is_root() {
        // see the module docs: without privileges it cannot touch the host's systemd state
        cmd.uid(65534).gid(65534);
    }
    let child = cmd.spawn()?;
    let (_, stdout, stderr) = crate::quadlet_check::output_within(child, VERIFY_TIMEOUT)?;
    let mut output = stderr;
    output.push_str(&stdout);
    Ok(Run {
        output,
        dir: tmp.path().to_path_buf(),
    })
}

/// One line of systemd-analyze's output, by shape.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Said<'a> {
    /// `<path>:<line>: <message>`: the parser, about one line of one file.
    AtLine {
        path: &'a str,
        line: usize,
        msg: &'a str,
    },
    /// `Unit <name> has a bad unit file setting.`, `... is masked.`, `... failed to load ...`.
    LoadFailed { unit: &'a str, msg: &'a str },
    /// `Unit <name> not found.`
    NotFound { unit: &'a str },
    /// `<name>: <message>`: the loader or the transaction builder, about one unit.
    Unit { unit: &'a str, msg: &'a str },
    /// Anything else.
    Other(&'a str),
}

fn looks_like_unit(s: &str) -> bool {
    !s.contains('/')
        && !s.contains(' ')
        && matches!(
            unit_type(s),
            "service"
                | "socket"
                | "target"
                | "timer"
                | "path"
                | "mount"
                | "automount"
                | "swap"
                | "slice"
                | "scope"
                | "device"
        )
}

/// Classify one output line.
fn said(line: &str) -> Said<'_> {
    if line.starts_with('/')
        && let Some((head, msg)) = line.split_once(": ")
        && let Some((path, n)) = head.rsplit_once(':')
        && let Ok(n) = n.parse::<usize>()
    {
        return Said::AtLine {
            path,
            line: n,
            msg: msg.trim(),
        };
    }
    if let Some(rest) = line.strip_prefix("Unit ")
        && let Some((unit, tail)) = rest.split_once(' ')
        && looks_like_unit(unit)
    {
        if tail == "not found." {
            return Said::NotFound { unit };
        }
        return Said::LoadFailed { unit, msg: line };
    }
    if let Some((unit, msg)) = line.split_once(": ")
        && looks_like_unit(unit)
    {
        return Said::Unit {
            unit,
            msg: msg.trim(),
        };
    }
    Said::Other(line)
}

/// What a line means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// systemd refuses the unit or drops part of it.
    Reject,
    /// systemd accepts it but says something worth knowing.
    Finding,
    /// Nothing to report (or core-ops' own check says it better).
    Skip,
}

/// Judge a parser message about one line.
fn judge_line(msg: &str) -> Verdict {
    if let Some(rest) = msg.strip_prefix("Failed to add dependency on ")
        && let Some((dep, _)) = rest.split_once(',')
        && quadlet::is_quadlet(dep)
    {
        return Verdict::Skip; // own check: names the generated unit to use
    }
    let lower = msg.to_ascii_lowercase();
    if lower.starts_with("unknown key")
        || lower.starts_with("unknown section")
        || lower.starts_with("unknown lvalue")
        || lower.contains("ignoring")
    {
        return Verdict::Reject;
    }
    Verdict::Finding
}

/// Judge a loader or transaction message about one unit.
fn judge_unit(msg: &str, ours: &dyn Fn(&str) -> bool) -> Verdict {
    if msg.contains(" is not executable") {
        // the binary may come with a runtime or exist only on the target host
        return Verdict::Skip;
    }
    if msg.contains(" not loaded, socket cannot be started") {
        return Verdict::Skip; // own check: triggers
    }
    if let Some(rest) = msg.strip_prefix("Failed to create ")
        && let Some((_, why)) = rest.split_once(": ")
    {
        // a missing dependency is the own check's; a broken managed one has its own message
        let dep = why.strip_prefix("Unit ").and_then(|r| r.split(' ').next());
        if why.ends_with(" not found.") || dep.is_some_and(ours) {
            return Verdict::Skip;
        }
        return Verdict::Finding;
    }
    if msg.ends_with("Refusing.") || msg.contains("fatal error") {
        return Verdict::Reject;
    }
    Verdict::Finding
}

/// A message for one resource, and whether it points at a line systemd named itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    text: String,
    line_level: bool,
}

/// What the verify said, mapped back to resources.
#[derive(Debug, Clone, Default)]
struct Verified {
    rejected: BTreeMap<String, Vec<Msg>>,
    findings: BTreeSet<(String, String)>,
    warnings: Vec<String>,
}

/// The keys a message names (`Restart=`, `ExecStart=`), in order.
fn keys_named(msg: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    for (i, _) in msg.match_indices('=') {
        let head = &msg[..i];
        let start = head
            .rfind(|c: char| !c.is_ascii_alphanumeric())
            .map(|j| j + 1)
            .unwrap_or(0);
        let key = &head[start..];
        if key.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            keys.push(key);
        }
    }
    keys
}

/// Map systemd-analyze's output back to resources and repository lines.
fn interpret(
    set: &BTreeMap<String, SetUnit<'_>>,
    output: &str,
    tmp: &Path,
) -> Result<Verified, String> {
    let mut r = Reading {
        set,
        tmp: tmp.display().to_string(),
        by_path: BTreeMap::new(),
        v: Verified::default(),
        generic: BTreeMap::new(),
        unattributed: Vec::new(),
    };
    for u in set.values() {
        for l in u.layers() {
            let shown = tmp.join(l.dir.name()).join(&l.rel).display().to_string();
            r.by_path.insert(shown, l);
        }
    }
    for raw in output.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.contains(&r.tmp) && line.contains("Permission denied") {
            return Err(format!(
                "systemd-analyze could not read the unit set: {line}"
            ));
        }
        match said(line) {
            Said::AtLine { path, line: n, msg } => r.at_line(path, n, msg),
            Said::Unit { unit, msg } => r.about_unit(unit, msg),
            Said::LoadFailed { unit, msg } => r.load_failed(unit, msg),
            Said::NotFound { .. } => {} // a unit only drop-ins are managed for: own check
            Said::Other(text) => r.other(text),
        }
    }
    Ok(r.finish())
}

/// systemd-analyze's output being read: what it said, pinned on the managed layers.
struct Reading<'s, 'a> {
    set: &'s BTreeMap<String, SetUnit<'a>>,
    /// The temp dir as systemd-analyze prints it.
    tmp: String,
    /// Layers by the path systemd-analyze saw them at.
    by_path: BTreeMap<String, &'s Layer<'a>>,
    v: Verified,
    /// "bad unit file setting" per object, used only when nothing more precise was said.
    generic: BTreeMap<String, Msg>,
    unattributed: Vec<String>,
}

impl<'s, 'a> Reading<'s, 'a> {
    /// The managed unit `name` is (or the template it is an instance of).
    fn unit_of(&self, name: &str) -> Option<&'s SetUnit<'a>> {
        self.set
            .get(name)
            .or_else(|| template_of(name).and_then(|t| self.set.get(&t)))
    }

    fn reject(&mut self, id: &str, text: String, line_level: bool) {
        self.v
            .rejected
            .entry(id.to_string())
            .or_default()
            .push(Msg { text, line_level });
    }

    /// `<path>:<line>: <message>` about one line of a managed layer.
    fn at_line(&mut self, path: &str, n: usize, msg: &str) {
        let Some(layer) = self.by_path.get(path).copied() else {
            return; // a unit of the host
        };
        let text = format!("{}: {msg}", at(layer, Some(n)));
        match judge_line(msg) {
            Verdict::Reject => self.reject(layer.id, text, true),
            Verdict::Finding => {
                self.v.findings.insert((layer.id.to_string(), text));
            }
            Verdict::Skip => {}
        }
    }

    /// `<unit>: <message>`: pinned on the last layer that sets a key the message names.
    fn about_unit(&mut self, unit: &str, msg: &str) {
        let Some(u) = self.unit_of(unit) else { return };
        let verdict = judge_unit(msg, &|name: &str| self.unit_of(name).is_some());
        if verdict == Verdict::Skip {
            return;
        }
        let p = Parsed::of(u);
        let blamed = keys_named(msg).into_iter().find_map(|k| p.blame(k));
        let (loc, culprit) = match (blamed, &u.main) {
            (Some((l, n)), _) => (at(l, Some(n)), Some(l.id)),
            (None, Some(m)) => (at(m, None), None),
            (None, None) => (
                u.dropins
                    .first()
                    .map(|l| at(l, None))
                    .unwrap_or_else(|| Location::file(unit)),
                None,
            ),
        };
        let text = format!("{loc}: {unit}: {msg}");
        if verdict == Verdict::Finding {
            self.v
                .findings
                .insert((culprit.unwrap_or(u.owner()).to_string(), text));
            return;
        }
        let mut ids = vec![u.owner()];
        ids.extend(culprit);
        for id in ids {
            self.reject(id, text.clone(), false);
        }
    }

    /// `Unit <name> has a bad unit file setting.` and the like: kept in case nothing more
    /// precise is said about that object.
    fn load_failed(&mut self, unit: &str, msg: &str) {
        let Some(u) = self.unit_of(unit) else { return };
        let loc = u
            .main
            .as_ref()
            .or(u.dropins.first())
            .map(|l| at(l, None))
            .unwrap_or_else(|| Location::file(unit));
        self.generic.entry(u.owner().to_string()).or_insert(Msg {
            text: format!("{loc}: {msg}"),
            line_level: false,
        });
    }

    /// Anything else: a rejection when it names a managed layer's path, else a warning
    /// (unless it is about the temp dir itself).
    fn other(&mut self, text: &str) {
        let named = self
            .by_path
            .iter()
            .find(|(p, _)| text.contains(p.as_str()))
            .map(|(p, l)| (p.clone(), *l));
        if let Some((path, layer)) = named {
            let shown = text.replace(path.as_str(), &layer.file);
            self.reject(layer.id, format!("{}: {shown}", layer.file), false);
        } else if !text.contains(&self.tmp) {
            self.unattributed.push(text.to_string());
        }
    }

    /// "bad unit file setting" only when systemd said nothing more precise.
    fn finish(mut self) -> Verified {
        for (id, msg) in std::mem::take(&mut self.generic) {
            let entry = self.v.rejected.entry(id).or_default();
            if entry.is_empty() {
                entry.push(msg);
            }
        }
        for u in self.unattributed {
            self.v.warnings.push(format!("systemd-analyze: {u}"));
        }
        self.v
    }
}

#[cfg(test)]
mod tests;
