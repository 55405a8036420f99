//! The settle step over D-Bus: wait only where a unit can still fail.
//!
//! How (all units at once, one connection):
//! 1. a `PropertiesChanged` match on every unit object (`path_namespace`), and `Subscribe()`,
//!    before anything is read, so a crash between the read and the wait is not missed;
//! 2. one `ListUnitsByNames` for the requested units: only `active`/`running` services can
//!    still fail later (a oneshot that exited, a timer waiting, a mount mounted, a failed
//!    unit are decided by what was just read);
//! 3. for those, `Type`, `ActiveEnterTimestampMonotonic`, `NRestarts`, `InvocationID`
//!    (pipelined `Get`s); `notify`, `notify-reload`, `dbus` and `oneshot` services reached
//!    active through their own readiness protocol and are decided too;
//! 4. the rest (`simple`, `exec`, `forking`, `idle`) are watched until their own
//!    `ActiveEnterTimestampMonotonic + window` (so the windows overlap the start-up of the
//!    others), or until a signal shows `ActiveState` leaving `active`, or `NRestarts` or
//!    `Result` changing: then that unit's window ends early.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;
use zbus::zvariant::OwnedValue;
use zbus::{MatchRule, MessageStream};

use super::{
    CALL_TIMEOUT, DEST, DbusSystemd, Inner, MAX_IN_FLIGHT, PROPERTIES_IFACE, SERVICE_IFACE,
    SIGNAL_QUEUE, UNIT_IFACE, UNIT_PATH_PREFIX, bounded, call_error, get_property, invocation_hex,
};
use crate::systemd::{SettleRequest, Settled, SystemdError, needs_settle};

/// The object path systemd gives a unit: every byte that is not `[A-Za-z0-9]` (and a
/// leading digit) as `_xx` in lowercase hex.
///
/// Why: computed, it costs no `GetUnit` call per unit (sd-bus `bus_label_escape`).
pub(crate) fn unit_object_path(unit: &str) -> String {
    let mut out = String::with_capacity(UNIT_PATH_PREFIX.len() + 1 + unit.len() * 3);
    out.push_str(UNIT_PATH_PREFIX);
    out.push('/');
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// `CLOCK_MONOTONIC` now, in µs: the clock of systemd's `*TimestampMonotonic` properties.
fn monotonic_now_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1_000)
        .unwrap_or(0)
}

/// What a `PropertiesChanged` signal of a watched unit says, if it ends its window: the unit
/// left `active` (failed, stopping, restarting), restarted, or its `Result` is no success.
fn ends_window(iface: &str, changed: &HashMap<String, OwnedValue>) -> Option<String> {
    let text = |k: &str| {
        changed
            .get(k)
            .and_then(|v| String::try_from(v.clone()).ok())
    };
    if iface == UNIT_IFACE
        && let Some(state) = text("ActiveState")
        && state != "active"
    {
        return Some(format!("ActiveState={state}"));
    }
    if iface == SERVICE_IFACE {
        if let Some(n) = changed
            .get("NRestarts")
            .and_then(|v| u32::try_from(v.clone()).ok())
            && n > 0
        {
            return Some(format!("NRestarts={n}"));
        }
        if let Some(r) = text("Result")
            && r != "success"
        {
            return Some(format!("Result={r}"));
        }
    }
    None
}

/// One watched unit while its window runs.
struct Watch {
    index: usize,
    path: String,
    deadline: Instant,
}

impl DbusSystemd {
    pub(super) async fn settle_async(
        &self,
        inner: &Inner,
        requests: &[SettleRequest],
    ) -> Result<Vec<Settled>, SystemdError> {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(DEST)
            .and_then(|b| b.interface(PROPERTIES_IFACE))
            .and_then(|b| b.member("PropertiesChanged"))
            .and_then(|b| b.path_namespace(UNIT_PATH_PREFIX))
            .map_err(|e| call_error("AddMatch(PropertiesChanged)", &e))?
            .build();
        let mut signals = bounded(
            "AddMatch(PropertiesChanged)",
            CALL_TIMEOUT,
            MessageStream::for_match_rule(rule, &inner.conn, Some(SIGNAL_QUEUE)),
        )
        .await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, String)>();
        // drained concurrently (a full stream queue stops the connection reading replies)
        let drain = async move {
            while let Some(msg) = signals.next().await {
                let Ok(msg) = msg else { continue };
                let path = msg
                    .header()
                    .path()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default();
                let body = msg.body();
                let Ok((iface, changed, _)) =
                    body.deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                else {
                    continue;
                };
                if let Some(why) = ends_window(&iface, &changed)
                    && tx.send((path, iface, why)).is_err()
                {
                    break;
                }
            }
        };
        let work = async {
            self.subscribe(inner).await?;
            let mut out: Vec<Settled> = requests
                .iter()
                .map(|r| Settled {
                    unit: r.unit.clone(),
                    ..Settled::default()
                })
                .collect();
            let mut watches = self.start_windows(inner, requests, &mut out).await?;
            let began = Instant::now();
            while let Some(next) = watches.iter().map(|w| w.deadline).min() {
                match tokio::time::timeout_at(next, rx.recv()).await {
                    Ok(Some((path, _, why))) => {
                        if let Some(pos) = watches.iter().position(|w| w.path == path) {
                            let w = watches.swap_remove(pos);
                            out[w.index].ended_by = Some(why);
                            out[w.index].waited_ms = began.elapsed().as_millis() as u64;
                        }
                    }
                    Ok(None) => {
                        return Err(SystemdError::Call {
                            method: "PropertiesChanged".into(),
                            message: "signal stream ended (connection lost?)".into(),
                        });
                    }
                    Err(_) => {
                        let now = Instant::now();
                        for w in watches.iter().filter(|w| w.deadline <= now) {
                            out[w.index].waited_ms = began.elapsed().as_millis() as u64;
                        }
                        watches.retain(|w| w.deadline > now);
                    }
                }
            }
            Ok(out)
        };
        tokio::select! {
            r = work => r,
            () = drain => Err(SystemdError::Call {
                method: "PropertiesChanged".into(),
                message: "signal stream ended (connection lost?)".into(),
            }),
        }
    }

    /// Read what decides each unit now and open a window for those that can still fail.
    async fn start_windows(
        &self,
        inner: &Inner,
        requests: &[SettleRequest],
        out: &mut [Settled],
    ) -> Result<Vec<Watch>, SystemdError> {
        let names: Vec<String> = requests.iter().map(|r| r.unit.clone()).collect();
        let brief = self.list_units(inner, &names, true).await?;
        let running = running_services(&brief, out);
        let entered_us = read_window_facts(&inner.conn, requests, &running, out).await?;
        let (now_us, now) = (monotonic_now_us(), Instant::now());
        let mut watches = Vec::new();
        for &i in &running {
            let s = &mut out[i];
            if s.ended_by.is_some() {
                continue;
            }
            // restarted since this run started it: nothing to wait for
            if let Some(n) = s.n_restarts.filter(|n| *n > 0) {
                s.ended_by = Some(format!("NRestarts={n} when the window began"));
                continue;
            }
            let notify_is_start = requests[i].ready_means_started && s.service_type == "notify";
            if !needs_settle(&s.service_type) && !notify_is_start {
                continue;
            }
            s.watched = true;
            let window_us = requests[i].window.as_micros() as u64;
            let entered = entered_us
                .get(&i)
                .copied()
                .filter(|t| *t > 0)
                .unwrap_or(now_us);
            let left_us = (entered + window_us).saturating_sub(now_us);
            if left_us > 0 {
                watches.push(Watch {
                    index: i,
                    path: unit_object_path(&requests[i].unit),
                    deadline: now + Duration::from_micros(left_us),
                });
            }
        }
        Ok(watches)
    }
}

/// The services that may still fail on their own: running ones, and ones already on their
/// way to a restart (auto-restart, stopping, starting again), which restarted since this run
/// started them - that is their verdict, noted in `out`.
fn running_services(brief: &[crate::systemd::UnitStatus], out: &mut [Settled]) -> Vec<usize> {
    let mut running: Vec<usize> = Vec::new();
    for (i, st) in brief.iter().enumerate() {
        if !st.name.ends_with(".service") {
            continue;
        }
        if st.active_state == "active" && st.sub_state == "running" {
            running.push(i);
        } else if st.sub_state == "auto-restart"
            || matches!(st.active_state.as_str(), "activating" | "deactivating")
        {
            out[i].ended_by = Some(format!(
                "ActiveState={} SubState={} when the window began",
                st.active_state, st.sub_state
            ));
            running.push(i);
        }
    }
    running
}

/// Type, NRestarts and InvocationID of each running service into `out`; returns when each
/// entered `active` (`ActiveEnterTimestampMonotonic`, µs), where its window starts.
async fn read_window_facts(
    conn: &zbus::Connection,
    requests: &[SettleRequest],
    running: &[usize],
    out: &mut [Settled],
) -> Result<HashMap<usize, u64>, SystemdError> {
    let reads: Vec<(usize, &'static str, &'static str)> = running
        .iter()
        .flat_map(|&i| {
            [
                (i, SERVICE_IFACE, "Type"),
                (i, UNIT_IFACE, "ActiveEnterTimestampMonotonic"),
                (i, SERVICE_IFACE, "NRestarts"),
                (i, UNIT_IFACE, "InvocationID"),
            ]
        })
        .collect();
    let values: Vec<Result<_, SystemdError>> = stream::iter(reads)
        .map(|(i, iface, name)| {
            let path = unit_object_path(&requests[i].unit);
            async move { Ok((i, name, get_property(conn, &path, iface, name).await?)) }
        })
        .buffer_unordered(MAX_IN_FLIGHT)
        .collect()
        .await;
    let mut entered_us: HashMap<usize, u64> = HashMap::new();
    for v in values {
        let (i, name, value) = v?;
        let Some(value) = value else { continue };
        let s = &mut out[i];
        match name {
            "Type" => s.service_type = String::try_from(value).unwrap_or_default(),
            "NRestarts" => s.n_restarts = u32::try_from(value).ok(),
            "InvocationID" => {
                s.invocation_id = Vec::<u8>::try_from(value)
                    .map(|b| invocation_hex(&b))
                    .unwrap_or_default()
            }
            "ActiveEnterTimestampMonotonic" => {
                entered_us.insert(i, u64::try_from(value).unwrap_or(0));
            }
            _ => {}
        }
    }
    Ok(entered_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_escape_like_systemd() {
        assert_eq!(
            unit_object_path("web.service"),
            "/org/freedesktop/systemd1/unit/web_2eservice"
        );
        assert_eq!(
            unit_object_path("a-b@1.service"),
            "/org/freedesktop/systemd1/unit/a_2db_401_2eservice"
        );
        assert_eq!(
            unit_object_path("1x.mount"),
            "/org/freedesktop/systemd1/unit/_31x_2emount"
        );
    }

    #[test]
    fn a_window_ends_on_failure_or_restart_only() {
        let m = |k: &str, v: OwnedValue| HashMap::from([(k.to_string(), v)]);
        let s = |x: &str| OwnedValue::from(zbus::zvariant::Str::from(x.to_string()));
        assert_eq!(
            ends_window(UNIT_IFACE, &m("ActiveState", s("failed"))),
            Some("ActiveState=failed".into())
        );
        assert_eq!(
            ends_window(UNIT_IFACE, &m("ActiveState", s("active"))),
            None
        );
        assert_eq!(
            ends_window(SERVICE_IFACE, &m("NRestarts", OwnedValue::from(2u32))),
            Some("NRestarts=2".into())
        );
        assert_eq!(
            ends_window(SERVICE_IFACE, &m("Result", s("exit-code"))),
            Some("Result=exit-code".into())
        );
        assert_eq!(ends_window(SERVICE_IFACE, &m("Result", s("success"))), None);
        assert_eq!(ends_window(UNIT_IFACE, &m("SubState", s("running"))), None);
    }
}
