//! Kernel-level experiments against the real kernel: the decision trace (every selection, and
//! nothing while nobody traces) and policy programs (docs/experiments.md).

use std::{
    collections::BTreeMap,
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use reuseport_steer::{
    trace::{TraceRecord, Tracer},
    AttachMode, Family, GroupOptions, Policy,
};
use reuseport_testing::{clients, daemon::Fixture, fresh_netns, steer, wait};
use reuseport_worker::{trace::TraceEvent, ControlClient, Request};

/// Generous: the CI machine has two loaded cores.
const LIMIT: Duration = Duration::from_secs(30);

fn options(policy: Policy) -> GroupOptions {
    GroupOptions {
        mode: AttachMode::SelectOrMigrate,
        policy,
        ..GroupOptions::default()
    }
}

/// Reads records from `tracer` until `n` arrived (or `LIMIT` passed), then a little longer to
/// catch any extra one.
fn records(tracer: &mut Tracer, n: usize) -> Vec<TraceRecord> {
    let mut got = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while got.len() < n && Instant::now() < deadline {
        match tracer.next_record() {
            Some(r) => got.push(r),
            None => std::thread::sleep(wait::POLL),
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    while let Some(r) = tracer.next_record() {
        got.push(r);
    }
    got
}

#[test]
fn the_trace_of_n_connections_has_n_selections_matching_the_counters() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (pool, mut group) = steer::pool(Family::Ipv4, n, options(Policy::RoundRobin))?;
    let mut tracer = group.take_tracer().context("no tracer")?;
    tracer.set_enabled(true)?;
    let out = clients::run(pool.addr(), n, 4, 25);
    assert!(out.is_clean(), "{out}");
    let got = records(&mut tracer, 100);
    assert_eq!(got.len(), 100, "one record per connection: {got:?}");

    let stats = group.stats()?;
    let mut per_slot = vec![0u64; n];
    for r in &got {
        let event = TraceEvent::from(r);
        assert_eq!(event.kind, "select", "{event:?}");
        assert_eq!(event.policy, "round-robin", "{event:?}");
        assert!(!event.fell_back, "{event:?}");
        let slot = event.slot.context("a selection without a slot")? as usize;
        per_slot[slot] += 1;
    }
    assert_eq!(per_slot, steer::selected(&stats, n), "{stats:?}");
    assert_eq!(per_slot, out.counts, "the trace and the clients disagree");
    // Times only go forward on one CPU.
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &got {
        let before = last.insert(r.cpu, r.time_ns).unwrap_or(0);
        assert!(r.time_ns >= before, "{r:?}");
    }
    Ok(())
}

#[test]
fn nothing_is_recorded_while_nobody_traces() -> Result<()> {
    fresh_netns()?;
    let n = 2;
    let (pool, mut group) = steer::pool(Family::Ipv4, n, options(Policy::Hash))?;
    // Off, as a group starts.
    let mut tracer = group.take_tracer().context("no tracer")?;
    let out = clients::run(pool.addr(), n, 2, 25);
    assert!(out.is_clean(), "{out}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(tracer.next_record(), None, "recorded while off");

    tracer.set_enabled(true)?;
    let out = clients::run(pool.addr(), n, 1, 3);
    assert!(out.is_clean(), "{out}");
    let got = records(&mut tracer, 3);
    assert_eq!(got.len(), 3, "{got:?}");

    tracer.set_enabled(false)?;
    let out = clients::run(pool.addr(), n, 1, 5);
    assert!(out.is_clean(), "{out}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        tracer.next_record(),
        None,
        "recorded after being turned off"
    );
    Ok(())
}

/// Connections to the fixture's address until `done` says stop (at most `LIMIT`).
fn connect_until(fixture: &Fixture, mut done: impl FnMut() -> bool) -> Result<u64> {
    let deadline = Instant::now() + LIMIT;
    let mut made = 0;
    while !done() {
        if Instant::now() > deadline {
            bail!("still not done after {made} connections");
        }
        drop(TcpStream::connect(fixture.addr)?);
        made += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(made)
}

#[test]
fn the_daemon_streams_the_trace_and_stops_recording_when_the_client_leaves() -> Result<()> {
    let mut fixture = Fixture::new("trace-stream")?;
    fixture.echo_workers(3)?;
    fixture.wait_active(3)?;
    let before = fixture.status()?;

    let mut client = ControlClient::connect(&fixture.control)?;
    let started = client.request(&Request::Trace {
        group: None,
        count: Some(30),
    })?;
    assert_eq!(started.group, Some(fixture.addr));
    for _ in 0..30 {
        drop(TcpStream::connect(fixture.addr)?);
    }
    let mut per_slot: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..30 {
        let event = client.next_reply()?.trace.context("a trace line")?;
        *per_slot.entry(event.slot.context("no slot")?).or_default() += 1;
    }
    let end = client.next_reply()?;
    assert_eq!(end.lost, Some(0), "{end:?}");
    let after = fixture.wait_status(LIMIT, "the counters caught up", |s| {
        s.workers.iter().map(|w| w.selected).sum::<u64>()
            >= before.workers.iter().map(|w| w.selected).sum::<u64>() + 30
    })?;
    for w in &after.workers {
        let was = before
            .workers
            .iter()
            .find(|b| b.slot == w.slot)
            .map_or(0, |b| b.selected);
        assert_eq!(
            per_slot.get(&w.slot).copied().unwrap_or(0),
            w.selected - was,
            "slot {}: {per_slot:?}",
            w.slot
        );
    }

    drop(client);

    // Nobody traces now: the daemon turned recording off (its reader wakes when the last
    // client leaves; a second is generous on a loaded machine), so these leave nothing for the
    // next client to find.
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..10 {
        drop(TcpStream::connect(fixture.addr)?);
    }
    let mut client = ControlClient::connect(&fixture.control)?;
    client.request(&Request::Trace {
        group: None,
        count: Some(1),
    })?;
    let since = monotonic_ns();
    drop(TcpStream::connect(fixture.addr)?);
    let event = client
        .next_reply()
        .with_context(|| fixture.logs())?
        .trace
        .context("a trace line")?;
    assert!(
        event.mono_ns >= since,
        "a decision from while nobody traced: {event:?}"
    );
    drop(client);

    // The command line, until it has its 5 decisions.
    let mut cli = std::process::Command::new(reuseport_testing::binary::locate()?)
        .args(["trace", "--count", "5", "--json", "--control"])
        .arg(&fixture.control)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    connect_until(&fixture, || matches!(cli.try_wait(), Ok(Some(_))))?;
    let output = cli.wait_with_output()?;
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<TraceEvent> = String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.iter().all(|e| e.slot.is_some() && e.kind == "select"));
    Ok(())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
