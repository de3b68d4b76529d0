//! The daemon, its control socket, the CLI and the workers, as real processes in a private
//! network namespace per test.

use reuseport_worker::protocol::ErrorCode;
use reuseport_worker::protocol::WorkerState;
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, UdpSocket},
    os::{
        fd::AsFd,
        unix::{fs::PermissionsExt, net::UnixStream},
    },
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use reuseport_steer::netns;
use reuseport_steer::Policy;
use reuseport_testing::loadgen::{tally, Load};
use reuseport_testing::{
    child::NOBODY,
    daemon::{state, Fixture, START_LIMIT},
    wait, TestResult as Result,
};
use reuseport_worker::{
    self as worker, ClientError, ControlClient, GroupStatus, Reply, Request, WorkerOptions,
};
use socket2::{Domain, Socket, Type};

fn rejected_code(e: ClientError) -> String {
    match e {
        ClientError::Rejected { code, .. } => code.to_string(),
        other => format!("not a refusal: {other}"),
    }
}

/// Sends raw bytes (optionally with fds) and returns the last reply line and whether the
/// daemon then closed the connection.
fn raw_exchange(control: &Path, bytes: &[u8], fds: &[i32]) -> Result<(Reply, bool)> {
    let stream = UnixStream::connect(control)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    if fds.is_empty() {
        (&stream).write_all(bytes)?;
    } else {
        let sent = reuseport_worker::fdpass::send_with_fds(&stream, bytes, fds)?;
        (&stream).write_all(&bytes[sent..])?;
    }
    let mut reader = BufReader::new(&stream);
    let mut last = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok((last.ok_or("no reply")?, true)),
            Ok(_) => last = Some(serde_json::from_str::<Reply>(&line)?),
            // Closed with our unread bytes still queued: the kernel resets.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok((last.ok_or("no reply")?, true))
            }
            Err(_) => return Ok((last.ok_or("no reply")?, false)),
        }
    }
}

#[test]
fn rust_helper_registers_and_gets_round_robin_share() -> Result {
    let f = Fixture::new("helper")?;
    let options = WorkerOptions {
        control: Some(f.control.clone()),
        name: Some("rust-helper".into()),
        ..WorkerOptions::default()
    };
    let (l1, r1) = worker::listen(f.addr, &options)?;
    let (l2, r2) = worker::listen(f.addr, &options)?;
    assert!(r1.slot().is_some() && r2.slot().is_some());
    assert_ne!(r1.slot(), r2.slot());
    let status = f.wait_workers(2)?;
    assert!(status.workers.iter().all(|w| w.name == "rust-helper"));
    assert_eq!(status.workers[0].pid, std::process::id());

    for _ in 0..10 {
        std::net::TcpStream::connect(f.addr)?;
    }
    let accepted: Vec<usize> = [&l1, &l2]
        .iter()
        .map(|l| {
            l.set_nonblocking(true).expect("nonblocking");
            std::iter::from_fn(|| l.accept().ok()).count()
        })
        .collect();
    assert_eq!(accepted, vec![5, 5]);

    drop(r1);
    f.wait_workers(1)?;
    Ok(())
}

#[test]
fn python_example_registers_and_serves() -> Result {
    // Exact counts: health checks that never fire (on 2 shared cores a Python worker can leave
    // a connection queued past 50 ms, and an evicted worker sits out its probation).
    let mut f = Fixture::with_daemon_args("python", &["--stuck-ms", "60000"])?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/worker.py");
    assert!(script.exists(), "{} missing", script.display());
    for name in ["py0", "py1"] {
        let child = Command::new("python3")
            .arg(&script)
            .args(["--listen", &f.addr.to_string(), "--name", name, "--control"])
            .arg(&f.control)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        f.workers.push(child);
    }
    f.echo("rust0")?;
    let status = f.wait_workers(3)?;
    let mut names: Vec<_> = status.workers.iter().map(|w| w.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["py0", "py1", "rust0"]);
    let counts = f.load_ok(300);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&c| c == 100),
        "round-robin: {counts:?}"
    );
    Ok(())
}

#[test]
fn bad_registrations_are_refused_and_serving_goes_on() -> Result {
    let mut f = Fixture::new("refusals")?;
    f.echo("w0")?;
    f.echo("w1")?;
    f.wait_workers(2)?;
    let register = Request::Register {
        name: Some("bad".into()),
        weight: None,
        pid: None,
    };
    let try_register = |fd: std::os::fd::BorrowedFd<'_>| -> String {
        match ControlClient::connect(&f.control).and_then(|mut c| c.request_with_fd(&register, fd))
        {
            Ok(r) => format!("accepted: {r:?}"),
            Err(e) => rejected_code(e),
        }
    };

    // No SO_REUSEPORT (bound elsewhere, since the group's port is taken).
    let plain = TcpListener::bind("127.0.0.1:0")?;
    assert_eq!(try_register(plain.as_fd()), "no_reuseport");
    // Bound with SO_REUSEPORT to the group's address, not listening.
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_port(true)?;
    s.bind(&f.addr.into())?;
    assert_eq!(try_register(s.as_fd()), "not_listening");
    // Another port.
    let other = worker::bind_listener("127.0.0.1:9090".parse()?, 16)?;
    assert_eq!(try_register(other.as_fd()), "no_group");
    // UDP on the group's port.
    let u = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    u.set_reuse_port(true)?;
    u.bind(&f.addr.into())?;
    let u: UdpSocket = u.into();
    assert_eq!(try_register(u.as_fd()), "wrong_protocol");
    // IPv6 on the group's port.
    let v6 = worker::bind_listener("[::1]:8080".parse()?, 16)?;
    assert_eq!(try_register(v6.as_fd()), "wrong_family");
    // Twice the same socket.
    let dup = worker::bind_listener(f.addr, 16)?;
    let mut c = ControlClient::connect(&f.control)?;
    c.request_with_fd(&register, dup.as_fd())?;
    assert_eq!(try_register(dup.as_fd()), "already_in_group");
    drop(c);
    // Its slot goes with its connection; nobody accepts on `dup`, so wait before loading.
    f.wait_workers(2)?;
    f.load_ok(100);

    // Protocol violations: an error line, then the daemon closes the connection.
    let (reply, closed) = raw_exchange(&f.control, b"hello there\n", &[])?;
    assert_eq!((reply.code, closed), (Some(ErrorCode::BadRequest), true));
    let (reply, closed) = raw_exchange(&f.control, b"{\"op\":\"register\"}\n", &[])?;
    assert_eq!((reply.code, closed), (Some(ErrorCode::FdMissing), true));
    let huge = vec![b'x'; 100 * 1024];
    let (reply, closed) = raw_exchange(&f.control, &huge, &[])?;
    assert_eq!((reply.code, closed), (Some(ErrorCode::TooLarge), true));
    let fd = plain.as_fd();
    use std::os::fd::AsRawFd;
    let (reply, closed) = raw_exchange(&f.control, b"{\"op\":\"status\"}\n", &[fd.as_raw_fd()])?;
    assert_eq!((reply.code, closed), (Some(ErrorCode::UnexpectedFd), true));
    let (reply, closed) = raw_exchange(
        &f.control,
        b"{\"op\":\"register\"}\n",
        &[fd.as_raw_fd(), fd.as_raw_fd()],
    )?;
    assert_eq!((reply.code, closed), (Some(ErrorCode::TooManyFds), true));
    // Truncated: half a line, then end of stream.
    let stream = UnixStream::connect(&f.control)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&stream).write_all(b"{\"op\":\"sta")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let reply: Reply = serde_json::from_str(&line)?;
    assert_eq!(reply.code, Some(ErrorCode::Truncated));

    // The daemon is still there, and no refused registration left a slot behind: it lists
    // exactly the two echo workers, both active, and still steers.
    let status = f.status()?;
    let mut listed: Vec<u32> = status.workers.iter().map(|w| w.pid).collect();
    listed.sort_unstable();
    let mut started = f.worker_pids();
    started.sort_unstable();
    assert_eq!(listed, started, "{status:?}");
    assert!(
        status.workers.iter().all(|w| state(w) == "active"),
        "{status:?}"
    );
    let counts = f.load_ok(100);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![50, 50]);
    Ok(())
}

/// The control socket's mode, and what `reuseport status` run as uid 65534 prints to stderr
/// (it must fail).
fn mode_and_nobody_status(f: &Fixture) -> Result<(u32, String)> {
    let mode = std::fs::metadata(&f.control)?.permissions().mode() & 0o777;
    // From a copy uid 65534 can reach, wherever the checkout lives (issue 9, item 9).
    let out = f
        .command_as(NOBODY)?
        .args(["status", "--control"])
        .arg(&f.control)
        .output()?;
    assert!(!out.status.success());
    Ok((mode, String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn foreign_uids_are_refused() -> Result {
    let f = Fixture::with_daemon_args("uids", &["--allow-uid", "4242"])?;
    // Open to others (an uid is allowed), but uid 65534 is not among them.
    let (mode, stderr) = mode_and_nobody_status(&f)?;
    assert_eq!(mode, 0o666);
    assert!(
        stderr.contains("uid 65534 may not use this daemon"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn control_socket_is_owner_only_and_others_get_a_clear_error() -> Result {
    let f = Fixture::new("mode")?;
    let (mode, stderr) = mode_and_nobody_status(&f)?;
    assert_eq!(mode, 0o600);
    assert!(
        stderr.contains("permission denied on the control socket"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn cli_without_daemon_says_so() -> Result {
    netns::enter_new()?;
    let out = Command::new(reuseport_testing::binary::locate()?)
        .args(["status", "--control", "/nonexistent/reuseport.sock"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("daemon is not running"), "{stderr}");
    Ok(())
}

#[test]
fn killed_worker_leaves_at_once_and_nothing_is_refused() -> Result {
    let mut f = Fixture::new("sigkill")?;
    f.echo_workers(4)?;
    f.wait_workers(4)?;
    f.load_ok(200);
    let victim = &mut f.workers[1];
    let pid = victim.id();
    victim.kill()?;
    let killed = Instant::now();
    victim.wait()?;
    wait::until_every(
        Duration::from_millis(2),
        Duration::from_secs(2),
        "the killed worker's slot freed",
        || {
            f.status()
                .is_ok_and(|s| s.workers.iter().all(|w| w.pid != pid))
        },
    )?;
    let gone_after = killed.elapsed();
    assert!(
        gone_after <= Duration::from_secs(1),
        "slot gone after {gone_after:?}"
    );
    let counts = f.load_ok(300);
    assert!(!counts.contains_key(&pid));
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![100, 100, 100]
    );
    Ok(())
}

#[test]
fn drain_and_undrain_from_the_cli() -> Result {
    let mut f = Fixture::new("drain")?;
    f.echo_workers(3)?;
    let status = f.wait_workers(3)?;
    let target = &status.workers[0];
    let out = f.cli(&["drain", &target.slot.to_string()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = f.status()?;
    assert_eq!(status.workers[0].state, WorkerState::Draining);
    let counts = f.load_ok(200);
    assert!(!counts.contains_key(&target.pid), "{counts:?}");
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100, 100]);

    let out = f.cli(&["undrain", &target.slot.to_string()])?;
    assert!(out.status.success());
    let counts = f.load_ok(300);
    assert_eq!(counts.get(&target.pid), Some(&100));

    let out = f.cli(&["drain", "999"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("slot 999 is empty"));
    Ok(())
}

#[test]
fn status_json_matches_what_clients_saw() -> Result {
    let mut f = Fixture::new("json")?;
    f.echo_workers(4)?;
    f.wait_workers(4)?;
    let counts = f.load_ok(400);
    let out = f.cli(&["status", "--json"])?;
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let group = &json["groups"][0];
    assert_eq!(group["listen"], "127.0.0.1:8080");
    assert_eq!(group["proto"], "tcp");
    assert_eq!(group["policy"], "round-robin");
    let workers = group["workers"].as_array().ok_or("no workers array")?;
    assert_eq!(workers.len(), 4);
    for w in workers {
        for key in ["slot", "pid", "name", "state", "weight", "selected"] {
            assert!(!w[key].is_null(), "missing {key} in {w}");
        }
        let pid = w["pid"].as_u64().ok_or("pid")? as u32;
        // The demo's readiness probes are not part of the load: `wait_workers` only asks the
        // daemon, so the program's count is exactly what the clients made.
        assert_eq!(w["selected"].as_u64(), counts.get(&pid).copied(), "{w}");
        assert_eq!(w["state"], "active");
    }
    let plain = f.cli(&["status"])?;
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.contains("SELECTED") && text.contains("w3"), "{text}");
    Ok(())
}

#[test]
fn policy_swaps_from_the_cli_under_load_lose_nothing() -> Result {
    let mut f = Fixture::new("swap")?;
    f.echo_workers(4)?;
    let status = f.wait_workers(4)?;
    let out = f.cli(&["weight", &status.workers[3].slot.to_string(), "4"])?;
    assert!(out.status.success());
    let load = Load::new(f.addr, 4000, 8);
    let outcomes = std::thread::scope(|s| -> Result<_> {
        let handle = s.spawn(|| load.run());
        let mut swaps = 0;
        while !handle.is_finished() && swaps < 200 {
            let policy = ["hash", "weighted", "round-robin"][swaps % 3];
            let out = f.cli(&["policy", "set", policy])?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            swaps += 1;
        }
        assert!(
            swaps >= 3,
            "the load ended before the policy could be swapped"
        );
        Ok(handle.join().map_err(|_| "load thread panicked")?)
    })?;
    let (counts, errors) = tally(&outcomes);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts.values().sum::<u64>(), 4000);
    let out = f.cli(&["policy", "get"])?;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("127.0.0.1:8080 "));
    Ok(())
}

/// How long the README says workers take to register again with a restarted daemon ("about
/// 100 ms"), with room for a machine busy with other builds.
const COME_BACK_LIMIT: Duration = Duration::from_secs(1);

/// Every worker of the status by slot: (pid, state, weight).
fn by_slot(status: &GroupStatus) -> BTreeMap<u32, (u32, String, u32)> {
    status
        .workers
        .iter()
        .map(|w| (w.slot, (w.pid, state(w), w.weight)))
        .collect()
}

/// Restarts the daemon with `args` and waits until every worker of `f` is listed by its own pid
/// again; returns that status and how long it took from the new daemon answering.
fn restart_until_back(f: &mut Fixture, args: &[&str]) -> Result<(GroupStatus, Duration)> {
    f.start_daemon(args)?;
    let answering = Instant::now();
    let status = wait::until_every(
        Duration::from_millis(2),
        START_LIMIT,
        "every worker registered again",
        || {
            f.status().is_ok_and(|s| {
                let mut back: Vec<u32> = s.workers.iter().map(|w| w.pid).collect();
                back.sort_unstable();
                let mut started = f.worker_pids();
                started.sort_unstable();
                back == started
            })
        },
    )
    .and_then(|()| f.status());
    let took = answering.elapsed();
    let status = status.map_err(|e| format!("{e:#}\n{}", f.logs()))?;
    eprintln!("workers back with their pids {took:?} after the new daemon answered");
    Ok((status, took))
}

#[test]
fn steering_survives_the_daemon_and_workers_come_back_to_a_new_one() -> Result {
    restart_round_trip("restart", &[])
}

/// Without pins the new daemon has new maps while the old program still holds the sockets:
/// it must take the group over rather than refuse the workers.
#[test]
fn workers_come_back_to_a_restarted_daemon_without_pins() -> Result {
    restart_round_trip("nopin", &["--no-pin"])
}

fn restart_round_trip(name: &str, daemon_args: &[&str]) -> Result {
    let mut f = Fixture::with_daemon_args(name, daemon_args)?;
    f.echo_workers(4)?;
    let before = by_slot(&f.wait_pids(START_LIMIT, &f.worker_pids())?);
    f.stop_daemon(libc::SIGTERM)?;
    assert!(
        !f.control.exists(),
        "the control socket is removed on a clean stop"
    );
    // The program stays attached with its last state: still exact round-robin.
    let counts = f.load_ok(400);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100; 4]);

    let (status, took) = restart_until_back(&mut f, daemon_args)?;
    assert!(took <= COME_BACK_LIMIT, "workers back after {took:?}");
    let after = by_slot(&status);
    if daemon_args.contains(&"--no-pin") {
        // New maps: slots are given anew, but every worker is back and active.
        assert!(
            after.values().all(|(_, state, _)| state == "active"),
            "{after:?}"
        );
    } else {
        // Each worker back in its own slot, by its real pid, active.
        assert_eq!(after, before, "{status:?}");
    }
    let counts = f.load_ok(400);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100; 4]);
    Ok(())
}

/// The pinned state is the group's: a restarted daemon keeps the policy, the weights and a
/// drained slot, and steers by them once the workers are back.
#[test]
fn weights_states_and_policy_survive_a_daemon_restart() -> Result {
    let mut f = Fixture::new("keepstate")?;
    f.echo_workers(4)?;
    let status = f.wait_pids(START_LIMIT, &f.worker_pids())?;
    let slots: Vec<u32> = status.workers.iter().map(|w| w.slot).collect();
    f.set_policy(Policy::Weighted)?;
    for (&slot, weight) in slots.iter().zip([1, 2, 3, 5]) {
        let reply = f.request(&Request::Weight {
            slot,
            weight,
            group: None,
        })?;
        assert!(reply.ok, "{reply:?}");
    }
    let drained = slots[3];
    let reply = f.request(&Request::Drain {
        slot: drained,
        group: None,
        close: None,
    })?;
    assert!(reply.ok, "{reply:?}");
    let before = by_slot(&f.status()?);
    assert_eq!(before[&drained].1, "draining");

    f.stop_daemon(libc::SIGTERM)?;
    let (status, took) = restart_until_back(&mut f, &[])?;
    assert!(took <= COME_BACK_LIMIT, "workers back after {took:?}");
    assert_eq!(status.policy.to_string(), "weighted", "{status:?}");
    assert_eq!(by_slot(&status), before, "{status:?}");
    // Weights 1:2:3 over the three active slots: 600 connections are 100 whole periods.
    let counts = f.load_ok(600);
    let pid = |slot: u32| before[&slot].0;
    let want: BTreeMap<u32, u64> = [
        (pid(slots[0]), 100),
        (pid(slots[1]), 200),
        (pid(slots[2]), 300),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want, "{status:?}");
    Ok(())
}

/// Weights, drains and undrains sent while clients connect cost no connection, and once they
/// stop the shares are exactly the last weights.
#[test]
fn weight_and_state_changes_under_load_lose_nothing() -> Result {
    let mut f = Fixture::with_daemon_args("reweigh", &["--policy", "weighted"])?;
    f.echo_workers(4)?;
    let status = f.wait_pids(START_LIMIT, &f.worker_pids())?;
    let slots: Vec<u32> = status.workers.iter().map(|w| w.slot).collect();
    let load = Load::new(f.addr, 6000, 8);
    let (outcomes, changes) = std::thread::scope(|s| -> Result<_> {
        let handle = s.spawn(|| load.run());
        let mut changes = 0usize;
        while !handle.is_finished() && changes < 5000 {
            let slot = slots[changes % slots.len()];
            // At most two slots are draining at a time: each is undrained four changes later.
            let request = match changes % 3 {
                0 => Request::Weight {
                    slot,
                    weight: 1 + (changes * 7 % 5) as u32,
                    group: None,
                },
                1 => Request::Drain {
                    slot,
                    group: None,
                    close: None,
                },
                _ => Request::Undrain { slot, group: None },
            };
            let reply = f.request(&request)?;
            assert!(reply.ok, "{request:?}: {reply:?}");
            changes += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        let outcomes = handle.join().map_err(|_| "load thread panicked")?;
        Ok((outcomes, changes))
    })?;
    eprintln!("{changes} weight and state changes during the load");
    assert!(changes >= 30, "only {changes} changes during the load");
    let (counts, errors) = tally(&outcomes);
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());
    assert_eq!(counts.values().sum::<u64>(), 6000);

    // The last word: every slot active, weights 1:2:3:4; a fresh window of 100 periods.
    let weights = [1, 2, 3, 4];
    for (&slot, weight) in slots.iter().zip(weights) {
        for request in [
            Request::Undrain { slot, group: None },
            Request::Weight {
                slot,
                weight,
                group: None,
            },
        ] {
            let reply = f.request(&request)?;
            assert!(reply.ok, "{request:?}: {reply:?}");
        }
    }
    let counts = f.load_ok(1000);
    let want: BTreeMap<u32, u64> = status
        .workers
        .iter()
        .zip(weights)
        .map(|(w, weight)| (w.pid, 100 * u64::from(weight)))
        .collect();
    assert_eq!(counts, want, "{:?}", f.status()?);
    Ok(())
}
