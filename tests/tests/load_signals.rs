//! The load signals the program reads at each selection: what it dispatched per slot, the
//! connections open per slot (counted in the kernel by the sock_ops program), and the counters
//! a worker publishes in its own memory-mapped map. Real kernel, real daemon, each test in a
//! network namespace of its own.

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::Duration,
};

use reuseport_testing::{
    daemon::{Fixture, START_LIMIT},
    loadgen::{tally, Load},
    TestResult as Result,
};
use reuseport_worker::{
    bind_listener, protocol::ErrorCode, ClientError, ControlClient, Counters, Request,
};

/// Generous for a loaded 2-core machine: conditions are polled, never slept for.
const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn dispatched_connections_are_exact_under_concurrency() -> Result {
    let mut f = Fixture::new("signals-exact")?;
    f.echo_workers(4)?;
    f.wait_workers(4)?;
    f.wait_answers(1)?;
    let before: u64 = f.status()?.workers.iter().map(|w| w.selected).sum();
    const N: usize = 400;
    // 16 client threads at once, a new connection per request.
    let outcomes = Load::new(f.addr, N, 16).run();
    let (_, errors) = tally(&outcomes);
    assert!(errors.is_empty(), "{errors:?}");
    let status = f.status()?;
    let dispatched: u64 = status.workers.iter().map(|w| w.selected).sum();
    assert_eq!(dispatched - before, N as u64, "{:?}", status.workers);
    // Every echo worker publishes through its own map (put in by the daemon's thread).
    f.wait_status(LIMIT, "every worker's counters map in", |s| {
        s.workers.iter().all(|w| w.counters)
    })?;
    Ok(())
}

/// Servers that publish nothing (raw registrations that accept and close) under least-loaded:
/// the kernel counts their open connections on the slot the program chose, exactly, and the
/// counts return to zero once every connection closed.
#[test]
fn open_connections_are_counted_exactly_and_return_to_zero() -> Result {
    let f = Fixture::with_daemon_args("signals-open", &["--policy", "least-loaded"])?;
    let workers = (0..3)
        .map(|i| RawWorker::register(&f, &format!("w{i}")))
        .collect::<Result<Vec<_>>>()?;
    let before = selected_by_slot(&f)?;
    // Held open, never accepted: counted from the handshake on.
    let held: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(f.addr))
        .collect::<std::io::Result<_>>()?;
    let status = f.wait_status(LIMIT, "12 connections open", |s| {
        s.workers.iter().filter_map(|w| w.open).sum::<u64>() == 12
    })?;
    for w in &status.workers {
        let chosen = w.selected - before.get(&w.slot).copied().unwrap_or(0);
        assert_eq!(w.open, Some(chosen), "{:?}", status.workers);
    }
    // The open connections were the load: least-loaded spread them.
    assert!(
        status.workers.iter().all(|w| w.open == Some(4)),
        "{:?}",
        status.workers
    );
    // 400 more from 8 threads at once while the workers accept and close everything.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> Result {
        for w in &workers {
            w.listener.set_nonblocking(true)?;
            let (listener, stop) = (&w.listener, &stop);
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => drop(conn),
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            });
        }
        let addr = f.addr;
        let clients: Vec<_> = (0..8)
            .map(|_| s.spawn(move || (0..50).try_for_each(|_| TcpStream::connect(addr).map(drop))))
            .collect();
        for c in clients {
            c.join().map_err(|_| "client panicked")??;
        }
        drop(held);
        let done = f.wait_status(LIMIT, "every connection closed", |s| {
            s.workers.iter().all(|w| w.open == Some(0))
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        done?;
        Ok(())
    })?;
    // Every connection was steered (a burst may take SYN cookies or a retransmitted SYN, which
    // runs the program twice for one connection: the exact count is the echo test's).
    let after = selected_by_slot(&f)?;
    let sent: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    assert!(sent >= 412, "{sent} selections for 412 connections");
    Ok(())
}

/// A worker registered over the raw protocol, holding its listener and control connection.
struct RawWorker {
    listener: TcpListener,
    control: ControlClient,
    slot: u32,
}

impl RawWorker {
    fn register(f: &Fixture, name: &str) -> Result<Self> {
        let listener = bind_listener(f.addr, 1024)?;
        let mut control = ControlClient::connect(&f.control)?;
        let reply = control.request_with_fd(
            &Request::Register {
                name: Some(name.into()),
                weight: None,
                pid: None,
            },
            listener.as_fd(),
        )?;
        let slot = reply.slot.ok_or("no slot")?;
        Ok(Self {
            listener,
            control,
            slot,
        })
    }

    /// Asks for the counters map of `slot`.
    fn counters_of(&mut self, slot: u32) -> std::result::Result<(u32, OwnedFd), ClientError> {
        let (reply, fd) = self
            .control
            .request_returning_fd(&Request::Counters { slot: Some(slot) })?;
        let fd = fd.ok_or_else(|| ClientError::BadReply("no descriptor".into()))?;
        Ok((reply.slot.unwrap_or(u32::MAX), fd))
    }

    fn counters(&mut self) -> Result<Counters> {
        let slot = self.slot;
        let (reply, fd) = self
            .control
            .request_returning_fd(&Request::Counters { slot: Some(slot) })?;
        let layout = reply.counters.ok_or("no layout")?;
        Ok(Counters::map(fd.ok_or("no descriptor")?, layout)?)
    }
}

/// The kernel's id of the map behind a descriptor (`map_id` in /proc/self/fdinfo).
fn map_id(fd: &impl AsRawFd) -> Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let id = info
        .lines()
        .find_map(|l| l.strip_prefix("map_id:"))
        .ok_or("not a map")?;
    Ok(id.trim().parse()?)
}

#[test]
fn a_worker_gets_only_its_own_counters() -> Result {
    let f = Fixture::new("signals-own")?;
    let mut a = RawWorker::register(&f, "a")?;
    let mut b = RawWorker::register(&f, "b")?;
    assert_ne!(a.slot, b.slot);
    // Another worker's slot: refused, and no descriptor comes.
    match a.counters_of(b.slot) {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::NotRegistered),
        Ok(_) => panic!("worker a got the counters of b's slot"),
        Err(e) => panic!("not a refusal: {e}"),
    }
    // Its own: a map of its own, distinct from b's.
    let (slot_a, fd_a) = a.counters_of(a.slot)?;
    let (slot_b, fd_b) = b.counters_of(b.slot)?;
    assert_eq!((slot_a, slot_b), (a.slot, b.slot));
    assert_ne!(map_id(&fd_a)?, map_id(&fd_b)?);
    drop((fd_a, fd_b));
    // What a writes shows on a's slot only.
    let counters_a = a.counters()?;
    let counters_b = b.counters()?;
    counters_a.set_inflight(7);
    counters_b.set_inflight(0);
    let (sa, sb) = (a.slot, b.slot);
    f.wait_status(LIMIT, "a's published in-flight count", |s| {
        let by_slot: BTreeMap<u32, (u32, bool)> = s
            .workers
            .iter()
            .map(|w| (w.slot, (w.inflight, w.counters)))
            .collect();
        by_slot.get(&sa) == Some(&(7, true)) && by_slot.get(&sb) == Some(&(0, true))
    })?;
    // A connection with no worker gets none.
    let mut stranger = ControlClient::connect(&f.control)?;
    match stranger.request_returning_fd(&Request::Counters { slot: None }) {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::NotRegistered),
        Ok(_) => panic!("an unregistered connection got a counters map"),
        Err(e) => panic!("not a refusal: {e}"),
    }
    drop((a.listener, b.listener));
    Ok(())
}

#[test]
fn least_loaded_and_p2c_steer_away_from_a_worker_publishing_a_high_inflight() -> Result {
    let f = Fixture::with_daemon_args("signals-steer", &["--policy", "least-loaded"])?;
    let mut workers = (0..3)
        .map(|i| RawWorker::register(&f, &format!("w{i}")))
        .collect::<Result<Vec<_>>>()?;
    let counters = workers
        .iter_mut()
        .map(RawWorker::counters)
        .collect::<Result<Vec<_>>>()?;
    // Worker 0 says it is busy; no `load` line is ever sent.
    counters[0].set_inflight(1000);
    let busy = workers[0].slot;
    // `counters` shows once the program reads the map (a background thread puts it in).
    f.wait_status(LIMIT, "every worker's map read by the program", |s| {
        s.workers.iter().all(|w| w.counters)
            && s.workers
                .iter()
                .any(|w| w.slot == busy && w.inflight == 1000)
    })?;
    let mut held = Vec::new();
    for policy in ["least-loaded", "p2c"] {
        assert!(f.cli(&["policy", "set", policy])?.status.success());
        let before = selected_by_slot(&f)?;
        // Connections that nobody accepts queue up on the others, raising their sampled load,
        // still far below 1000.
        for _ in 0..30 {
            held.push(TcpStream::connect(f.addr)?);
        }
        let after = f.wait_status(START_LIMIT, "30 more connections dispatched", |s| {
            s.workers.iter().map(|w| w.selected).sum::<u64>() == before.values().sum::<u64>() + 30
        })?;
        let got = |slot: u32| {
            after
                .workers
                .iter()
                .find(|w| w.slot == slot)
                .map_or(0, |w| w.selected)
                - before.get(&slot).copied().unwrap_or(0)
        };
        assert_eq!(
            got(busy),
            0,
            "{policy}: the busy worker got connections: {:?}",
            after.workers
        );
        for w in &workers[1..] {
            assert!(got(w.slot) > 0, "{policy}: slot {} got none", w.slot);
        }
    }
    drop(held);
    drop(workers);
    Ok(())
}

fn selected_by_slot(f: &Fixture) -> Result<BTreeMap<u32, u64>> {
    Ok(f.status()?
        .workers
        .iter()
        .map(|w| (w.slot, w.selected))
        .collect())
}

#[test]
fn the_python_example_and_echo_publish_their_inflight_through_their_map() -> Result {
    let mut f = Fixture::with_daemon_args("signals-python", &["--stuck-ms", "60000"])?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/worker.py");
    let child = std::process::Command::new("python3")
        .arg(&script)
        .args(["--listen", &f.addr.to_string(), "--name", "py", "--control"])
        .arg(&f.control)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    f.workers.push(child);
    f.echo("rust")?;
    f.wait_status(LIMIT, "both workers publishing", |s| {
        s.workers.len() == 2 && s.workers.iter().all(|w| w.counters)
    })?;
    // One slow request each (round-robin): both show it in flight, read from their maps.
    let addr = f.addr;
    std::thread::scope(|s| -> Result {
        let slow: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(move || {
                    reuseport_testing::loadgen::request(
                        addr,
                        "/sleep?ms=1500",
                        Duration::from_secs(20),
                    )
                })
            })
            .collect();
        f.wait_status(LIMIT, "a request in flight on each worker", |s| {
            s.workers.iter().all(|w| w.inflight == 1)
        })?;
        for t in slow {
            t.join().map_err(|_| "request thread panicked")??;
        }
        Ok(())
    })?;
    f.wait_status(LIMIT, "nothing in flight", |s| {
        s.workers.iter().all(|w| w.inflight == 0)
    })?;
    Ok(())
}
