//! The client commands of `reuseport`: each sends one request on the control socket and prints
//! the reply for a person (or as JSON for a script).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

pub mod policy_load;
pub mod trace;

use reuseport_steer::Policy;
use reuseport_worker::{control_path, protocol::GroupRef, ControlClient, GroupStatus, Request};

/// The control socket path from `--control`, `REUSEPORT_CONTROL` or the default.
pub fn path(explicit: Option<PathBuf>) -> PathBuf {
    control_path(explicit.as_deref())
}

/// Fetches the status of every group.
pub fn fetch_status(control: &Path) -> anyhow::Result<Vec<GroupStatus>> {
    let reply = ControlClient::connect(control)?.request(&Request::Status)?;
    Ok(reply.groups.unwrap_or_default())
}

pub fn status(control: &Path, json: bool) -> anyhow::Result<()> {
    let groups = fetch_status(control)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "groups": groups }))?
        );
    } else {
        print!("{}", status_table(&groups));
    }
    Ok(())
}

/// The readable form of `status`. The accept queue is headed RECV-Q as `ss -l` heads it (the
/// JSON keeps the wire field `queue`, which scripts already read).
pub fn status_table(groups: &[GroupStatus]) -> String {
    let mut out = String::new();
    for g in groups {
        let _ = writeln!(
            out,
            "group {} ({}) policy {} mode {} on-empty {}  fallbacks {} drops {}",
            g.listen,
            g.proto.name(),
            g.policy,
            g.mode,
            g.on_empty,
            g.fallbacks,
            g.drops
        );
        let _ = writeln!(
            out,
            "  {:>4}  {:>7}  {:<16}  {:<8}  {:>6}  {:>10}  {:>8}  {:>8}  {:>6}",
            "SLOT", "PID", "NAME", "STATE", "WEIGHT", "SELECTED", "MIGRATED", "INFLIGHT", "RECV-Q"
        );
        if g.workers.is_empty() {
            let _ = writeln!(out, "  (no workers registered)");
        }
        for w in &g.workers {
            let _ = write!(
                out,
                "  {:>4}  {:>7}  {:<16}  {:<8}  {:>6}  {:>10}  {:>8}  {:>8}  {:>6}",
                w.slot,
                w.pid,
                reuseport_worker::names::printable(&w.name),
                w.state,
                w.weight,
                w.selected,
                w.migrated,
                w.inflight,
                w.queue
            );
            match &w.reason {
                Some(reason) => {
                    let _ = writeln!(
                        out,
                        "  ({}, {})",
                        reuseport_worker::names::printable(reason),
                        ago(w.since)
                    );
                }
                None => out.push('\n'),
            }
        }
        let errors: Vec<String> = g
            .select_errors
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(out, "  failed selections: {}", errors.join(", "));
        }
    }
    out
}

/// "3.2 s ago" for a Unix time.
fn ago(since: Option<f64>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    since.map_or_else(String::new, |t| format!("{:.1} s ago", (now - t).max(0.0)))
}

/// `policy get`: one `ADDR:PORT POLICY` line per group, or `{"groups": [{"group", "policy"}]}`.
/// With a policy program installed, `ADDR:PORT POLICY program NAME` and `"program": NAME`.
pub fn policy_get(control: &Path, group: Option<GroupRef>, json: bool) -> anyhow::Result<()> {
    let groups: Vec<Option<GroupRef>> = match group {
        Some(group) => vec![Some(group)],
        None => fetch_status(control)?
            .into_iter()
            // `udp://ADDR:PORT` names a UDP group sharing its address with a TCP one.
            .map(|g| g.name().parse::<GroupRef>().ok())
            .collect(),
    };
    let mut policies: Vec<(String, String, Option<String>)> = Vec::new();
    for group in groups {
        let reply = ControlClient::connect(control)?.request(&Request::PolicyGet { group })?;
        match (reply.group, reply.policy) {
            (Some(group), Some(policy)) => {
                policies.push((group.to_string(), policy.to_string(), reply.program));
            }
            _ => anyhow::bail!("the daemon's reply lacks the group or the policy: {reply:?}"),
        }
    }
    if json {
        let groups: Vec<_> = policies
            .iter()
            .map(|(group, policy, program)| {
                let mut g = serde_json::json!({ "group": group, "policy": policy });
                if let Some(program) = program {
                    g["program"] = serde_json::json!(program);
                }
                g
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "groups": groups }))?
        );
    } else {
        for (group, policy, program) in policies {
            match program {
                Some(program) => println!("{group} {policy} program {program}"),
                None => println!("{group} {policy}"),
            }
        }
    }
    Ok(())
}

pub fn policy_set(control: &Path, policy: Policy, group: Option<GroupRef>) -> anyhow::Result<()> {
    ControlClient::connect(control)?.request(&Request::PolicySet {
        policy: policy.into(),
        group,
    })?;
    Ok(())
}

pub fn weight(
    control: &Path,
    slot: u32,
    weight: u32,
    group: Option<GroupRef>,
) -> anyhow::Result<()> {
    ControlClient::connect(control)?.request(&Request::Weight {
        slot,
        weight,
        group,
    })?;
    Ok(())
}

/// `Some(close)`: drain (and shut the listener down when `close`); `None`: undrain.
pub fn drain(
    control: &Path,
    slot: u32,
    group: Option<GroupRef>,
    close: Option<bool>,
) -> anyhow::Result<()> {
    let request = match close {
        Some(close) => Request::Drain {
            slot,
            group,
            close: Some(close),
        },
        None => Request::Undrain { slot, group },
    };
    ControlClient::connect(control)?.request(&request)?;
    Ok(())
}

/// `reload`: prints what changed, or why the daemon refused (a bad file: every problem with
/// its line and column).
pub fn reload(control: &Path) -> anyhow::Result<()> {
    let reply = ControlClient::connect(control)?.request(&Request::Reload)?;
    for change in reply.changes.unwrap_or_default() {
        println!("{change}");
    }
    Ok(())
}
