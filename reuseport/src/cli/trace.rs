//! `reuseport trace`: streams the steering program's decisions from the daemon (the `trace`
//! request), one line each, for a person or as JSON lines.

use std::{io::Write as _, path::Path};

use reuseport_worker::{protocol::GroupRef, trace::TraceEvent, ControlClient, Request};

pub fn run(
    control: &Path,
    group: Option<GroupRef>,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = ControlClient::connect(control)?;
    let started = client.request(&Request::Trace { group, count })?;
    let mut out = std::io::stdout().lock();
    if !json {
        if let Some(group) = started.group {
            writeln!(out, "tracing {group} (Ctrl-C to stop)")?;
        }
        writeln!(
            out,
            "{:>16}  {:<7}  {:>5}  {:>5}  {:<12}  {:<9}  {:>10}  {:>6}  {:>3}",
            "MONO_NS", "KIND", "SLOT", "FIRST", "POLICY", "OUTCOME", "HASH", "LOAD", "CPU"
        )?;
    }
    loop {
        let reply = client.next_reply()?;
        match reply.trace {
            Some(event) if json => writeln!(out, "{}", serde_json::to_string(&event)?)?,
            Some(event) => writeln!(out, "{}", line(&event))?,
            None => {
                let lost = reply.lost.unwrap_or(0);
                if lost > 0 {
                    eprintln!("{lost} decisions were lost (the trace was read too slowly)");
                }
                return Ok(());
            }
        }
        out.flush()?;
    }
}

fn line(e: &TraceEvent) -> String {
    let slot = |s: Option<u32>| s.map_or_else(|| "-".to_owned(), |s| s.to_string());
    format!(
        "{:>16}  {:<7}  {:>5}  {:>5}  {:<12}  {:<9}  {:>10}  {:>6}  {:>3}",
        e.mono_ns,
        e.kind,
        slot(e.slot),
        slot(e.first),
        e.policy,
        e.outcome,
        format!("{:08x}", e.hash),
        e.load,
        e.cpu
    )
}
