//! [`DbusSystemd`]: the real [`Systemd`], talking to the manager over D-Bus (zbus 5 +
//! `zbus_systemd` proxies, pinned to `=0.26200.0`, the last release on zbus 5).
//!
//! Why it looks the way it does (measured, see `docs/dbus-apply-performance.md`):
//! - one bus connection through dbus-daemon (zbus cannot speak peer-to-peer to systemd's
//!   private socket), driven by a private current-thread tokio runtime so callers stay sync;
//! - calls are pipelined, never more than [`MAX_IN_FLIGHT`] at once: the system bus allows
//!   only 128 pending replies per connection and answers the rest with `LimitsExceeded`;
//! - for jobs, the `JobRemoved` match is added and `Subscribe()` called *before* the first
//!   `StartUnit`, or a fast job's signal is missed;
//! - properties are read with raw `org.freedesktop.DBus.Properties.Get` calls, not per-unit
//!   proxies (a proxy would `GetAll` and add a match rule per unit).

mod settle;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::runtime::Runtime;
use tokio::time::Instant;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Str};
use zbus::{Connection, MatchRule, MessageStream};
use zbus_systemd::systemd1::ManagerProxy;

use super::{
    CallCounts, JobKind, JobOutcome, JobResult, SettleRequest, Settled, Systemd, SystemdError,
    UnitStatus,
};

/// Environment variable naming the bus address of the systemd to manage (unset: system bus).
///
/// Why: tests and the verification harness point the agent at a test bed's bus.
pub const ADDRESS_ENV: &str = "CORE_OPS_SYSTEMD_ADDRESS";

/// Most calls this client keeps waiting for a reply at once.
///
/// Why: dbus-daemon's system bus refuses more than 128 pending replies per connection
/// (`max_replies_per_connection`); 100 leaves room for the odd concurrent call.
pub const MAX_IN_FLIGHT: usize = 100;

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
/// Where systemd keeps its unit objects (the settle step's signal match covers all of them).
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";
/// Capacity of the `JobRemoved` signal queue (zbus' default is 64; a full queue stops the
/// connection from reading anything, replies included).
const SIGNAL_QUEUE: usize = 4096;
/// Reply timeout of ordinary calls (systemctl uses 25 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Reply timeout of `Reload()`, which re-reads every unit file (systemctl uses 10 min).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The interface that carries `Result` for a unit of this name, if its type has one.
///
/// Why: `Result` lives on the type-specific interface (Service, Mount, ...); targets,
/// devices and slices have none, and asking for it would only produce an error reply.
pub(crate) fn result_interface(unit: &str) -> Option<&'static str> {
    let suffix = unit.rsplit_once('.').map(|(_, s)| s)?;
    Some(match suffix {
        "service" => "org.freedesktop.systemd1.Service",
        "socket" => "org.freedesktop.systemd1.Socket",
        "mount" => "org.freedesktop.systemd1.Mount",
        "automount" => "org.freedesktop.systemd1.Automount",
        "swap" => "org.freedesktop.systemd1.Swap",
        "timer" => "org.freedesktop.systemd1.Timer",
        "path" => "org.freedesktop.systemd1.Path",
        "scope" => "org.freedesktop.systemd1.Scope",
        _ => return None,
    })
}
/// The properties to read for one unit beyond its `ListUnitsByNames` row: why it is not
/// loaded, how an inactive one ended (stopped, finished, skipped by a condition), and in the
/// full read its enablement, invocation, result and restarts.
fn property_reads(row: &Row, brief: bool, fresh_file_state: bool) -> Vec<Read> {
    // the object path comes from systemd, so aliases and escaping are right by construction
    let (id, load_state, active_state) = (&row.0, row.2.as_str(), row.3.as_str());
    let path = row.6.as_str().to_string();
    let prop = |iface, name| Read::Property {
        path: path.clone(),
        iface,
        name,
    };
    let result_iface = result_interface(id);
    let mut reads = Vec::new();
    if load_state != "loaded" {
        // systemd's own reason (bad setting, not found, masked...)
        reads.push(prop(UNIT_IFACE, "LoadError"));
    } else if active_state == "inactive" {
        // inactive can mean stopped, finished (a oneshot) or skipped by a condition: these
        // tell them apart, in both modes
        reads.push(prop(UNIT_IFACE, "ConditionResult"));
        reads.push(prop(UNIT_IFACE, "ConditionTimestampMonotonic"));
        if brief {
            reads.push(prop(UNIT_IFACE, "InvocationID"));
            reads.extend(result_iface.map(|iface| prop(iface, "Result")));
        }
    }
    if brief {
        // only why a failed unit failed
        if active_state == "failed" {
            reads.extend(result_iface.map(|iface| prop(iface, "Result")));
        }
    } else if load_state != "not-found" {
        reads.push(if fresh_file_state {
            Read::FileState(id.clone())
        } else {
            prop(UNIT_IFACE, "UnitFileState")
        });
        reads.push(prop(UNIT_IFACE, "InvocationID"));
        if let Some(iface) = result_iface {
            reads.push(prop(iface, "Result"));
            if id.ends_with(".service") {
                reads.push(prop(iface, "NRestarts"));
            }
        }
    }
    reads
}

/// Every read, at most [`MAX_IN_FLIGHT`] pending at once (dbus-daemon's limit per
/// connection is 128).
async fn fetch_reads(
    conn: &zbus::Connection,
    gets: Vec<(usize, Read)>,
) -> Vec<Result<Fetched, SystemdError>> {
    stream::iter(gets)
        .map(|(i, read)| async move {
            match read {
                Read::Property { path, iface, name } => {
                    Ok((i, name, get_property(conn, &path, iface, name).await?))
                }
                Read::FileState(unit) => {
                    let v = unit_file_state(conn, &unit).await?;
                    Ok((
                        i,
                        "UnitFileState",
                        v.map(|v| OwnedValue::from(Str::from(v))),
                    ))
                }
            }
        })
        .buffer_unordered(MAX_IN_FLIGHT)
        .collect()
        .await
}

/// Put what was read into the statuses; a unit is skipped by a condition when its
/// conditions were checked and did not hold.
fn fill_properties(
    statuses: &mut [UnitStatus],
    values: Vec<Result<Fetched, SystemdError>>,
) -> Result<(), SystemdError> {
    let mut condition_ok: Vec<Option<bool>> = vec![None; statuses.len()];
    let mut condition_checked: Vec<bool> = vec![false; statuses.len()];
    for v in values {
        let (i, prop, value) = v?;
        let Some(value) = value else { continue };
        let s = &mut statuses[i];
        let bad = |e: zbus::zvariant::Error| SystemdError::Call {
            method: format!("Get({prop})"),
            message: format!("{}: {e}", s.name),
        };
        match prop {
            "UnitFileState" => s.unit_file_state = String::try_from(value).map_err(bad)?,
            "Result" => s.result = String::try_from(value).map_err(bad)?,
            "NRestarts" => s.n_restarts = Some(u32::try_from(value).map_err(bad)?),
            "InvocationID" => {
                s.invocation_id = invocation_hex(&Vec::<u8>::try_from(value).map_err(bad)?)
            }
            "ConditionResult" => condition_ok[i] = Some(bool::try_from(value).map_err(bad)?),
            "ConditionTimestampMonotonic" => {
                condition_checked[i] = u64::try_from(value).map_err(bad)? > 0
            }
            "LoadError" => {
                let (name, message) = <(String, String)>::try_from(value).map_err(bad)?;
                s.load_error = if message.is_empty() { name } else { message };
            }
            _ => {}
        }
    }
    for (i, s) in statuses.iter_mut().enumerate() {
        s.skipped_by_condition = condition_checked[i] && condition_ok[i] == Some(false);
    }
    Ok(())
}

/// Lowercase hex of an invocation id; empty when unset (empty or all-zero).
fn invocation_hex(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| *b == 0) {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `name: message` of a D-Bus error reply, or the error's text for anything else.
fn describe(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{}: {msg}", name.as_str()),
        zbus::Error::MethodError(name, None, _) => name.as_str().to_string(),
        other => other.to_string(),
    }
}

/// The D-Bus error name of a refused call, if it was one.
fn error_name(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        _ => None,
    }
}

fn call_error(method: &str, e: &zbus::Error) -> SystemdError {
    SystemdError::Call {
        method: method.to_string(),
        message: describe(e),
    }
}

fn timeout_error(method: &str, after: Duration) -> SystemdError {
    SystemdError::Call {
        method: method.to_string(),
        message: format!("no reply within {} s", after.as_secs()),
    }
}

/// Await a call with a reply timeout; both failures become [`SystemdError::Call`].
async fn bounded<T>(
    method: &str,
    after: Duration,
    fut: impl Future<Output = zbus::Result<T>>,
) -> Result<T, SystemdError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(call_error(method, &e)),
        Err(_) => Err(timeout_error(method, after)),
    }
}

/// One row of `ListUnitsByNames`: name, description, load, active, sub, following, object
/// path, job id, job type, job path.
type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// One read of `unit_statuses` after `ListUnitsByNames`.
enum Read {
    /// `Properties.Get(iface, name)` on the unit's object.
    Property {
        path: String,
        iface: &'static str,
        name: &'static str,
    },
    /// The manager's `GetUnitFileState(unit)`, computed from disk on every call.
    FileState(String),
}

/// A property read: (index of the status, property name, value unless refused).
type Fetched = (usize, &'static str, Option<OwnedValue>);

/// One `JobRemoved(u id, o job, s unit, s result)` signal.
#[derive(Debug)]
struct Removed {
    id: u32,
    job: String,
    unit: String,
    result: String,
}

/// Numeric id at the end of a job object path (`/org/freedesktop/systemd1/job/123`).
fn job_id(path: &str) -> Option<u32> {
    path.rsplit('/').next()?.parse().ok()
}

/// The connection and the manager proxy; dropped inside the runtime (see [`Drop`]).
struct Inner {
    conn: Connection,
    manager: ManagerProxy<'static>,
}

/// The real systemd, reached over D-Bus.
///
/// Why a private runtime: the rest of core-ops is synchronous; every method `block_on`s its
/// own current-thread runtime, so no async leaks past this module. Do not call it from inside
/// an async context (tokio forbids nested `block_on`).
pub struct DbusSystemd {
    rt: Runtime,
    /// Always `Some` until dropped.
    inner: Option<Inner>,
    address: String,
    subscribed: AtomicBool,
    /// An enable/disable went through this handle since the last `Reload()`: systemd's cached
    /// `UnitFileState` property of loaded units is stale until the next reload.
    enablement_since_reload: AtomicBool,
    reloads: AtomicU32,
    jobs: AtomicU32,
    enablement_calls: AtomicU32,
}

impl std::fmt::Debug for DbusSystemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusSystemd")
            .field("address", &self.address)
            .field("counts", &self.counts())
            .finish()
    }
}

impl DbusSystemd {
    /// Connect as a bus client to `address` (e.g. `unix:path=DIR/run/dbus/system_bus_socket`),
    /// or to the system bus when `None`.
    ///
    /// Why a bus client: systemd's private socket speaks peer-to-peer with a sender zbus
    /// rejects (zbus issue #1497); through dbus-daemon everything works.
    pub fn connect(address: Option<&str>) -> Result<Self, SystemdError> {
        let shown = address.unwrap_or("the system bus").to_string();
        let connect_error = |message: String| SystemdError::Connect {
            address: shown.clone(),
            message,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| connect_error(format!("cannot start the tokio runtime: {e}")))?;
        let inner = rt
            .block_on(async {
                let conn = match address {
                    Some(a) => zbus::connection::Builder::address(a)?.build().await?,
                    None => Connection::system().await?,
                };
                let manager = ManagerProxy::builder(&conn)
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await?;
                Ok::<_, zbus::Error>(Inner { conn, manager })
            })
            .map_err(|e| connect_error(describe(&e)))?;
        Ok(DbusSystemd {
            rt,
            inner: Some(inner),
            address: shown,
            subscribed: AtomicBool::new(false),
            enablement_since_reload: AtomicBool::new(false),
            reloads: AtomicU32::new(0),
            jobs: AtomicU32::new(0),
            enablement_calls: AtomicU32::new(0),
        })
    }

    /// Connect to the bus named by `CORE_OPS_SYSTEMD_ADDRESS`, or the system bus when it is
    /// unset or empty.
    ///
    /// Why: one switch lets the same binary and tests run against a test bed.
    pub fn from_env() -> Result<Self, SystemdError> {
        let address = std::env::var(ADDRESS_ENV).ok().filter(|a| !a.is_empty());
        Self::connect(address.as_deref())
    }

    /// The address this handle is connected to (`the system bus` when none was given).
    ///
    /// Why: error messages and logs should say which manager was talked to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The manager's `Version` property (e.g. `252.39-1~deb12u2`).
    ///
    /// Why: records and bug reports name the systemd they ran against; it is one call.
    pub fn manager_version(&self) -> Result<String, SystemdError> {
        let inner = self.inner();
        self.rt.block_on(async {
            let bad = |message: String| SystemdError::Call {
                method: "Get(Version)".into(),
                message,
            };
            let v = get_property(&inner.conn, MANAGER_PATH, MANAGER_IFACE, "Version")
                .await?
                .ok_or_else(|| bad("systemd refused the call".into()))?;
            String::try_from(v).map_err(|e| bad(e.to_string()))
        })
    }

    fn inner(&self) -> &Inner {
        // Only `Drop` takes it.
        self.inner.as_ref().expect("DbusSystemd used after drop")
    }

    /// `ListUnitsByNames` per name, pipelined; `None` for a name systemd skips or refuses.
    async fn list_units_one_by_one(
        &self,
        inner: &Inner,
        names: &[String],
    ) -> Result<Vec<Option<Row>>, SystemdError> {
        stream::iter(names)
            .map(|n| async move {
                let r = tokio::time::timeout(
                    CALL_TIMEOUT,
                    inner.manager.list_units_by_names(vec![n.clone()]),
                )
                .await;
                match r {
                    Ok(Ok(mut rows)) if rows.len() == 1 => Ok(rows.pop()),
                    Ok(Ok(_)) => Ok(None),
                    Ok(Err(e)) if error_name(&e).is_some() => Ok(None),
                    Ok(Err(e)) => Err(call_error("ListUnitsByNames", &e)),
                    Err(_) => Err(timeout_error("ListUnitsByNames", CALL_TIMEOUT)),
                }
            })
            .buffered(MAX_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    async fn list_units(
        &self,
        inner: &Inner,
        names: &[String],
        brief: bool,
    ) -> Result<Vec<UnitStatus>, SystemdError> {
        let rows = self.rows_by_name(inner, names).await?;
        // systemd caches `UnitFileState` per loaded unit and refreshes it only on `Reload()`
        // (or when the unit is unloaded): after our own enable/disable, ask the manager's
        // `GetUnitFileState`, which reads the disk every time (slower: ~0.6 ms per unit).
        let fresh_file_state = self.enablement_since_reload.load(Ordering::Relaxed);
        let mut statuses = Vec::with_capacity(names.len());
        let mut gets: Vec<(usize, Read)> = Vec::new();
        for (asked, row) in names.iter().zip(rows) {
            let Some(row) = row else {
                statuses.push(UnitStatus {
                    name: asked.to_string(),
                    load_state: "not-found".into(),
                    active_state: "inactive".into(),
                    sub_state: "dead".into(),
                    ..UnitStatus::default()
                });
                continue;
            };
            let i = statuses.len();
            gets.extend(
                property_reads(&row, brief, fresh_file_state)
                    .into_iter()
                    .map(|r| (i, r)),
            );
            // The row carries the canonical name (it differs for an alias): report the asked
            // one; the canonical id decided the unit type of the reads.
            statuses.push(UnitStatus {
                name: asked.to_string(),
                load_state: row.2,
                active_state: row.3,
                sub_state: row.4,
                ..UnitStatus::default()
            });
        }
        let values = fetch_reads(&inner.conn, gets).await;
        fill_properties(&mut statuses, values)?;
        Ok(statuses)
    }

    /// One `ListUnitsByNames` row per name (`None`: systemd does not know it).
    async fn rows_by_name(
        &self,
        inner: &Inner,
        names: &[String],
    ) -> Result<Vec<Option<Row>>, SystemdError> {
        let one_call = tokio::time::timeout(
            CALL_TIMEOUT,
            inner.manager.list_units_by_names(names.to_vec()),
        )
        .await
        .map_err(|_| timeout_error("ListUnitsByNames", CALL_TIMEOUT))?;
        match one_call {
            Ok(rows) if rows.len() == names.len() => Ok(rows.into_iter().map(Some).collect()),
            // systemd 252 silently skips invalid names (so rows no longer line up with names)
            // and fails the whole call when one valid name cannot be loaded (e.g. a template
            // without instance). Ask one by one: the bad ones become not-found.
            Ok(_) => self.list_units_one_by_one(inner, names).await,
            Err(e) if error_name(&e).is_some() => self.list_units_one_by_one(inner, names).await,
            Err(e) => Err(call_error("ListUnitsByNames", &e)),
        }
    }

    /// `Subscribe()` once per handle: without it systemd sends no `JobRemoved` and no
    /// `PropertiesChanged` to this client.
    async fn subscribe(&self, inner: &Inner) -> Result<(), SystemdError> {
        if self.subscribed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match bounded("Subscribe", CALL_TIMEOUT, inner.manager.subscribe()).await {
            Ok(()) => {}
            // Another call on this handle already did it.
            Err(SystemdError::Call { message, .. }) if message.contains("AlreadySubscribed") => {}
            Err(e) => return Err(e),
        }
        self.subscribed.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn jobs_async(
        &self,
        inner: &Inner,
        jobs: &[(JobKind, String)],
        timeout: Duration,
    ) -> Result<Vec<JobResult>, SystemdError> {
        // Match first, then Subscribe, then the calls: a fast job's signal cannot be missed.
        let signals = job_removed_signals(inner).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Removed>();
        // Drain the stream from now on, concurrently with everything else: when a zbus stream
        // queue is full the connection stops reading, so the replies we wait for (Subscribe,
        // StartUnit) would never arrive while other clients' jobs flood JobRemoved.
        let drain = drain_job_removed(signals, tx);
        let work = async {
            self.subscribe(inner).await?;
            let mut waiting = self.queue_jobs(inner, jobs, timeout).await?;
            waiting.wait_all(&mut rx, jobs).await?;
            Ok(waiting.results(jobs))
        };
        tokio::select! {
            r = work => r,
            () = drain => Err(SystemdError::Call {
                method: "JobRemoved".into(),
                message: "signal stream ended (connection lost?)".into(),
            }),
        }
    }

    /// Ask systemd for every job (at most [`MAX_IN_FLIGHT`] calls pending); a refused job is
    /// decided at once, a queued one is waited for until its deadline.
    async fn queue_jobs(
        &self,
        inner: &Inner,
        jobs: &[(JobKind, String)],
        timeout: Duration,
    ) -> Result<Waiting, SystemdError> {
        let manager = inner.manager.inner();
        let replies: Vec<_> = stream::iter(jobs.iter().enumerate())
            .map(|(i, (kind, unit))| async move {
                let (method, mode) = match kind {
                    JobKind::Start => ("StartUnit", "replace"),
                    JobKind::Stop => ("StopUnit", "replace"),
                    JobKind::StopAlone => ("StopUnit", "ignore-requirements"),
                    JobKind::Restart => ("RestartUnit", "replace"),
                };
                self.jobs.fetch_add(1, Ordering::Relaxed);
                let reply = tokio::time::timeout(
                    CALL_TIMEOUT,
                    manager.call::<_, _, OwnedObjectPath>(method, &(unit.as_str(), mode)),
                )
                .await;
                (i, reply, Instant::now())
            })
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        let mut w = Waiting::new(jobs.len());
        for (i, reply, at) in replies {
            match reply {
                Ok(Ok(path)) => {
                    let path = path.as_str().to_string();
                    w.ids[i] = job_id(&path).unwrap_or(0);
                    w.deadlines[i] = Some(at + timeout);
                    w.by_path.entry(path).or_default().push(i);
                }
                Ok(Err(e)) if error_name(&e).is_some() => {
                    w.outcomes[i] = Some(JobOutcome::Refused(describe(&e)));
                }
                Ok(Err(e)) => return Err(call_error("StartUnit/StopUnit/RestartUnit", &e)),
                // No reply at all: whether the job exists is unknown; we stop waiting.
                Err(_) => w.outcomes[i] = Some(JobOutcome::WaitTimedOut),
            }
        }
        Ok(w)
    }
}

/// A raw match stream of the manager's `JobRemoved` signals, not
/// `ManagerProxy::receive_job_removed`: that one makes two more round trips
/// (NameOwnerChanged match, GetNameOwner) and has a fixed 64-message queue.
async fn job_removed_signals(inner: &Inner) -> Result<MessageStream, SystemdError> {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(DEST)
        .and_then(|b| b.path(MANAGER_PATH))
        .and_then(|b| b.interface(MANAGER_IFACE))
        .and_then(|b| b.member("JobRemoved"))
        .map_err(|e| call_error("AddMatch(JobRemoved)", &e))?
        .build();
    bounded(
        "AddMatch(JobRemoved)",
        CALL_TIMEOUT,
        MessageStream::for_match_rule(rule, &inner.conn, Some(SIGNAL_QUEUE)),
    )
    .await
}

/// Forward every `JobRemoved` to `tx` until the stream or the receiver ends.
async fn drain_job_removed(
    mut signals: MessageStream,
    tx: tokio::sync::mpsc::UnboundedSender<Removed>,
) {
    while let Some(msg) = signals.next().await {
        let Ok(msg) = msg else { continue };
        let body = msg.body();
        let Ok((id, job, unit, result)) =
            body.deserialize::<(u32, OwnedObjectPath, String, String)>()
        else {
            continue;
        };
        let removed = Removed {
            id,
            job: job.as_str().to_string(),
            unit,
            result,
        };
        if tx.send(removed).is_err() {
            break;
        }
    }
}

/// The jobs of one batch being waited for: their outcomes so far, deadlines, job ids and
/// object paths.
struct Waiting {
    outcomes: Vec<Option<JobOutcome>>,
    deadlines: Vec<Option<Instant>>,
    ids: Vec<u32>,
    by_path: HashMap<String, Vec<usize>>,
}

impl Waiting {
    fn new(n: usize) -> Waiting {
        Waiting {
            outcomes: vec![None; n],
            deadlines: vec![None; n],
            ids: vec![0; n],
            by_path: HashMap::new(),
        }
    }

    /// Until every queued job has ended or passed its deadline.
    async fn wait_all(
        &mut self,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Removed>,
        jobs: &[(JobKind, String)],
    ) -> Result<(), SystemdError> {
        let n = jobs.len();
        loop {
            let next = (0..n)
                .filter(|&i| self.outcomes[i].is_none())
                .filter_map(|i| self.deadlines[i])
                .min();
            let Some(next) = next else { return Ok(()) };
            match tokio::time::timeout_at(next, rx.recv()).await {
                Ok(Some(sig)) => self.removed(&sig, jobs),
                Ok(None) => {
                    return Err(SystemdError::Call {
                        method: "JobRemoved".into(),
                        message: "signal stream ended (connection lost?)".into(),
                    });
                }
                Err(_) => {
                    let now = Instant::now();
                    for i in 0..n {
                        if self.outcomes[i].is_none() && self.deadlines[i].is_some_and(|d| d <= now)
                        {
                            self.outcomes[i] = Some(JobOutcome::WaitTimedOut);
                        }
                    }
                }
            }
        }
    }

    /// A job ended: ours by its object path, else by unit name - but never for a job older
    /// than ours (someone else's earlier job on that unit).
    fn removed(&mut self, sig: &Removed, jobs: &[(JobKind, String)]) {
        let matched: Vec<usize> = match self.by_path.get(&sig.job) {
            Some(idx) => idx.clone(),
            None => (0..jobs.len())
                .find(|&i| {
                    self.outcomes[i].is_none()
                        && self.deadlines[i].is_some()
                        && jobs[i].1 == sig.unit
                        && sig.id >= self.ids[i]
                })
                .into_iter()
                .collect(),
        };
        for i in matched {
            if self.outcomes[i].is_none() {
                self.outcomes[i] = Some(JobOutcome::from_result(&sig.result));
            }
        }
    }

    fn results(self, jobs: &[(JobKind, String)]) -> Vec<JobResult> {
        jobs.iter()
            .zip(self.outcomes)
            .map(|((kind, unit), outcome)| JobResult {
                unit: unit.clone(),
                kind: *kind,
                outcome: outcome.unwrap_or(JobOutcome::WaitTimedOut),
            })
            .collect()
    }
}

/// `GetUnitFileState(unit)`; `None` when systemd refuses (no such file).
async fn unit_file_state(conn: &Connection, unit: &str) -> Result<Option<String>, SystemdError> {
    let body = (unit,);
    let call = conn.call_method(
        Some(DEST),
        MANAGER_PATH,
        Some(MANAGER_IFACE),
        "GetUnitFileState",
        &body,
    );
    let reply = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) if error_name(&e).is_some() => return Ok(None),
        Ok(Err(e)) => return Err(call_error("GetUnitFileState", &e)),
        Err(_) => return Err(timeout_error("GetUnitFileState", CALL_TIMEOUT)),
    };
    reply
        .body()
        .deserialize::<String>()
        .map(Some)
        .map_err(|e| call_error("GetUnitFileState", &e))
}

/// Raw `Properties.Get(iface, prop)`; `None` when systemd answers with an error (unit gone,
/// no such property/interface), an error only when the bus itself fails.
async fn get_property(
    conn: &Connection,
    path: &str,
    iface: &str,
    prop: &str,
) -> Result<Option<OwnedValue>, SystemdError> {
    let method = format!("Get({prop})");
    let body = (iface, prop);
    let call = conn.call_method(Some(DEST), path, Some(PROPERTIES_IFACE), "Get", &body);
    let reply = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) if error_name(&e).is_some() => return Ok(None),
        Ok(Err(e)) => return Err(call_error(&method, &e)),
        Err(_) => return Err(timeout_error(&method, CALL_TIMEOUT)),
    };
    reply
        .body()
        .deserialize::<OwnedValue>()
        .map(Some)
        .map_err(|e| call_error(&method, &e))
}

impl Systemd for DbusSystemd {
    fn reload(&self) -> Result<(), SystemdError> {
        let inner = self.inner();
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.rt
            .block_on(bounded("Reload", RELOAD_TIMEOUT, inner.manager.reload()))?;
        self.enablement_since_reload.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn unit_statuses(&self, names: &[String]) -> Result<Vec<UnitStatus>, SystemdError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner();
        self.rt.block_on(self.list_units(inner, names, false))
    }

    fn unit_states_brief(&self, names: &[String]) -> Result<Vec<UnitStatus>, SystemdError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner();
        self.rt.block_on(self.list_units(inner, names, true))
    }

    fn enable(&self, names: &[String]) -> Result<(), SystemdError> {
        if names.is_empty() {
            return Ok(());
        }
        let inner = self.inner();
        self.enablement_calls.fetch_add(1, Ordering::Relaxed);
        self.enablement_since_reload.store(true, Ordering::Relaxed);
        let call = inner
            .manager
            .enable_unit_files(names.to_vec(), false, false);
        self.rt
            .block_on(bounded("EnableUnitFiles", CALL_TIMEOUT, call))
            .map(|_| ())
    }

    fn disable(&self, names: &[String]) -> Result<(), SystemdError> {
        if names.is_empty() {
            return Ok(());
        }
        let inner = self.inner();
        self.enablement_calls.fetch_add(1, Ordering::Relaxed);
        self.enablement_since_reload.store(true, Ordering::Relaxed);
        let call = inner.manager.disable_unit_files(names.to_vec(), false);
        self.rt
            .block_on(bounded("DisableUnitFiles", CALL_TIMEOUT, call))
            .map(|_| ())
    }

    fn reset_failed(&self, names: &[String]) -> Result<(), SystemdError> {
        let inner = self.inner();
        self.rt.block_on(async {
            let results: Vec<Result<(), SystemdError>> = stream::iter(names)
                .map(|n| async move {
                    let call = inner.manager.reset_failed_unit(n.clone());
                    match tokio::time::timeout(CALL_TIMEOUT, call).await {
                        Ok(Ok(())) => Ok(()),
                        // A unit that is not loaded has nothing to reset.
                        Ok(Err(e))
                            if error_name(&e) == Some("org.freedesktop.systemd1.NoSuchUnit") =>
                        {
                            Ok(())
                        }
                        Ok(Err(e)) => Err(call_error(&format!("ResetFailedUnit({n})"), &e)),
                        Err(_) => Err(timeout_error("ResetFailedUnit", CALL_TIMEOUT)),
                    }
                })
                .buffer_unordered(MAX_IN_FLIGHT)
                .collect()
                .await;
            results.into_iter().collect()
        })
    }

    fn run_jobs(
        &self,
        jobs: &[(JobKind, String)],
        timeout: Duration,
    ) -> Result<Vec<JobResult>, SystemdError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner();
        self.rt.block_on(self.jobs_async(inner, jobs, timeout))
    }

    fn settle(&self, requests: &[SettleRequest]) -> Result<Vec<Settled>, SystemdError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner();
        self.rt.block_on(self.settle_async(inner, requests))
    }

    fn counts(&self) -> CallCounts {
        CallCounts {
            reloads: self.reloads.load(Ordering::Relaxed),
            jobs: self.jobs.load(Ordering::Relaxed),
            enablement_calls: self.enablement_calls.load(Ordering::Relaxed),
        }
    }
}

impl Drop for DbusSystemd {
    fn drop(&mut self) {
        // zbus queues match-rule removals on the runtime when streams and proxies drop; that
        // needs a runtime context (tokio::spawn panics without one).
        if let Some(inner) = self.inner.take() {
            let _guard = self.rt.enter();
            drop(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_ids_are_hex_and_empty_when_unset() {
        assert_eq!(invocation_hex(&[]), "");
        assert_eq!(invocation_hex(&[0; 16]), "");
        assert_eq!(invocation_hex(&[0x0a, 0xff, 0x00, 0x10]), "0aff0010");
    }

    #[test]
    fn result_lives_on_the_type_interface() {
        assert_eq!(
            result_interface("web.service"),
            Some("org.freedesktop.systemd1.Service")
        );
        assert_eq!(
            result_interface("srv-data.mount"),
            Some("org.freedesktop.systemd1.Mount")
        );
        assert_eq!(result_interface("multi-user.target"), None);
        assert_eq!(result_interface("noext"), None);
    }

    #[test]
    fn job_ids_come_from_the_path() {
        assert_eq!(job_id("/org/freedesktop/systemd1/job/1234"), Some(1234));
        assert_eq!(job_id("/"), None);
    }

    #[test]
    fn connect_to_a_missing_socket_is_a_connect_error() {
        let e = DbusSystemd::connect(Some("unix:path=/nonexistent/core-ops/bus")).unwrap_err();
        assert!(
            matches!(e, SystemdError::Connect { ref address, .. } if address.contains("/nonexistent/")),
            "{e:?}"
        );
    }
}
