//! UDP groups against the real kernel: round-robin per datagram is exact; `maglev` moves only
//! the flows of a worker that leaves and about 1/N when one joins; a draining worker keeps its
//! flows (the flow table) and gets no new ones; a worker that stops reading is found stuck by
//! its receive queue and its flows move; a socket of the other protocol is refused; an IPv6 UDP
//! group served by `reuseport echo --udp`.
//!
//! Workers here are threads of the test (a UDP socket registered with
//! `reuseport_worker::listen_udp`, answering `w=<ID>`), so hundreds of flows cost no process.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::AsFd,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use reuseport_steer::Protocol;
use reuseport_testing::{binary, daemon::Fixture, fresh_netns, wait, TestResult as Result};
use reuseport_worker::{
    listen_udp, ClientError, ControlClient, ErrorCode, Registration, Request, WorkerOptions,
};

const LIMIT: Duration = Duration::from_secs(20);

/// A daemon serving one UDP group on `addr` from a configuration file with `settings` lines
/// in its `[[group]]` (stuck detection off: the tests count exact shares).
fn udp_daemon(name: &str, addr: SocketAddr, settings: &str) -> Result<Fixture> {
    udp_daemon_with(name, addr, settings, "stuck_ms = 600000")
}

/// [`udp_daemon`] with `health` as the `[health]` section.
fn udp_daemon_with(name: &str, addr: SocketAddr, settings: &str, health: &str) -> Result<Fixture> {
    fresh_netns()?;
    let mut f = Fixture::on(addr, &format!("test-udp-{name}"), binary::locate()?)?;
    let file = f.dir.join("reuseport.toml");
    std::fs::write(
        &file,
        format!(
            "[health]\n{health}\n\n[[group]]\nlisten = \"{addr}\"\nprotocol = \
             \"udp\"\n{settings}\n"
        ),
    )?;
    f.start_daemon_with_config(&file)?;
    Ok(f)
}

/// A worker thread: a registered UDP socket answering every datagram with `w=<id>`.
struct Worker {
    registration: Option<Registration>,
    stop: Arc<AtomicBool>,
    /// While set, the worker reads nothing (a hung worker).
    paused: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(f: &Fixture, id: usize) -> Result<Self> {
        let options = WorkerOptions {
            control: Some(f.control.clone()),
            name: Some(format!("u{id}")),
            ..WorkerOptions::default()
        };
        let (socket, registration) = listen_udp(f.addr, &options)?;
        registration
            .wait_registered(LIMIT)
            .ok_or("the worker did not register")?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let paused = paused.clone();
            std::thread::spawn(move || {
                let reply = format!("w={id}");
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if paused.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(reply.as_bytes(), peer);
                    }
                }
            })
        };
        Ok(Self {
            registration: Some(registration),
            stop,
            paused,
            thread: Some(thread),
        })
    }

    fn slot(&self) -> Option<u32> {
        self.registration.as_ref().and_then(Registration::slot)
    }
}

impl Drop for Worker {
    /// Unregisters, then closes the socket: the worker leaves the group.
    fn drop(&mut self) {
        self.registration.take();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn workers(f: &Fixture, n: usize) -> Result<Vec<Worker>> {
    let ws = (0..n)
        .map(|i| Worker::start(f, i))
        .collect::<Result<Vec<_>>>()?;
    f.wait_active(n)?;
    Ok(ws)
}

/// A client socket: one flow (its own source port).
fn flow(to: SocketAddr) -> Result<UdpSocket> {
    let bind: SocketAddr = if to.is_ipv4() {
        "127.0.0.1:0".parse()?
    } else {
        "[::1]:0".parse()?
    };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(s)
}

/// Sends one datagram on `client` and returns the answer (a few tries: UDP).
fn ask(client: &UdpSocket, to: SocketAddr) -> Result<String> {
    let mut buf = [0u8; 512];
    for _ in 0..10 {
        client.send_to(b"?", to)?;
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        }
    }
    Err(format!("no answer from {to}").into())
}

fn ask_all(flows: &[UdpSocket], to: SocketAddr) -> Result<Vec<String>> {
    flows.iter().map(|c| ask(c, to)).collect()
}

fn flows(n: usize, to: SocketAddr) -> Result<Vec<UdpSocket>> {
    (0..n).map(|_| flow(to)).collect()
}

fn moved(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn round_robin_is_exact_per_datagram() -> Result<()> {
    let f = udp_daemon("rr", "127.0.0.1:5300".parse()?, "policy = \"round-robin\"")?;
    let _ws = workers(&f, 4)?;
    let status = f.status()?;
    assert_eq!(status.proto, Protocol::Udp);
    // One flow, 400 datagrams: round-robin spreads the datagrams, not the flows.
    let client = flow(f.addr)?;
    let mut counts = BTreeMap::new();
    for _ in 0..400 {
        *counts.entry(ask(&client, f.addr)?).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    Ok(())
}

#[test]
fn maglev_moves_only_the_flows_of_a_worker_that_leaves_and_about_1_in_n_on_a_join() -> Result<()> {
    // No flow table: what moves is what the policy itself moves.
    let f = udp_daemon(
        "maglev",
        "127.0.0.1:5301".parse()?,
        "policy = \"maglev\"\nflow_idle_ms = 0",
    )?;
    let mut ws = workers(&f, 8)?;
    let clients = flows(800, f.addr)?;
    let before = ask_all(&clients, f.addr)?;
    let spread: BTreeMap<&String, usize> = before.iter().fold(BTreeMap::new(), |mut m, w| {
        *m.entry(w).or_insert(0) += 1;
        m
    });
    assert_eq!(spread.len(), 8, "every worker gets flows: {spread:?}");

    // u3 leaves: its flows must move, the others (nearly) all stay.
    drop(ws.remove(3));
    f.wait_active(7)?;
    let after = ask_all(&clients, f.addr)?;
    let own = before.iter().filter(|w| *w == "w=3").count();
    assert!(after.iter().all(|w| w != "w=3"), "a gone worker answered");
    let others = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *b != "w=3" && b != a)
        .count();
    assert!(others * 50 <= clients.len(), "{others} other flows moved");
    assert!(own > 0);

    // A new worker joins: about 1/8 of the flows move to it, the rest stay.
    ws.push(Worker::start(&f, 8)?);
    f.wait_active(8)?;
    let joined = ask_all(&clients, f.addr)?;
    let moved = moved(&after, &joined);
    let to_new = joined.iter().filter(|w| *w == "w=8").count();
    assert!(to_new > 0, "the new worker got no flow");
    assert!(
        moved as f64 / clients.len() as f64 <= 1.0 / 8.0 + 0.05,
        "{moved} of {} flows moved",
        clients.len()
    );
    assert!(
        moved - to_new <= clients.len() / 50,
        "{moved} moved, {to_new} to the new worker"
    );
    Ok(())
}

#[test]
fn a_draining_worker_keeps_its_flows_and_gets_no_new_one() -> Result<()> {
    let f = udp_daemon("drain", "127.0.0.1:5302".parse()?, "policy = \"maglev\"")?;
    let mut ws = workers(&f, 4)?;
    let old = flows(200, f.addr)?;
    let before = ask_all(&old, f.addr)?;
    let on_w0 = before.iter().filter(|w| *w == "w=0").count();
    assert!(on_w0 > 0, "{before:?}");

    // Restart of w0 by hand-over: the old one drains, a new one takes the new flows.
    let slot = ws[0].slot().ok_or("w0 has no slot")?;
    // --close is for TCP listeners: refused, with what to do instead.
    let out = f.cli(&["drain", &slot.to_string(), "--close"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is a UDP group"),
        "{err}"
    );
    let out = f.cli(&["drain", &slot.to_string()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.wait_active(3)?;
    ws.push(Worker::start(&f, 4)?);
    f.wait_active(4)?;

    let during = ask_all(&old, f.addr)?;
    assert_eq!(moved(&before, &during), 0, "flows broke during the drain");
    let new = flows(200, f.addr)?;
    let new_answers = ask_all(&new, f.addr)?;
    assert!(
        new_answers.iter().all(|w| w != "w=0"),
        "a new flow went to the draining worker"
    );
    assert!(
        new_answers.iter().any(|w| w == "w=4"),
        "the new worker got no new flow"
    );
    Ok(())
}

#[test]
fn a_worker_that_stops_reading_is_found_stuck_by_its_receive_queue() -> Result<()> {
    let f = udp_daemon_with(
        "stuck",
        "127.0.0.1:5306".parse()?,
        "policy = \"maglev\"",
        "stuck_ms = 300\nsample_ms = 50",
    )?;
    let ws = workers(&f, 3)?;
    let clients = flows(150, f.addr)?;
    let before = ask_all(&clients, f.addr)?;
    let hung: Vec<&UdpSocket> = clients
        .iter()
        .zip(&before)
        .filter(|(_, w)| *w == "w=0")
        .map(|(c, _)| c)
        .collect();
    assert!(!hung.is_empty(), "{before:?}");

    // w0 hangs; its flows' datagrams pile up in its receive queue.
    ws[0].paused.store(true, Ordering::Relaxed);
    for c in &hung {
        c.send_to(b"?", f.addr)?;
    }
    let slot = ws[0].slot().ok_or("w0 has no slot")?;
    f.wait_worker(LIMIT, &format!("slot {slot} stuck"), |w| {
        w.slot == slot && w.state == reuseport_worker::protocol::WorkerState::Stuck
    })?;
    // Its flows move to the workers that read (the flow table lets go of a stuck slot).
    for c in &hung {
        let mut buf = [0u8; 64];
        // The datagram queued before the hang may still come back later: drain it first.
        c.set_read_timeout(Some(Duration::from_millis(10)))?;
        while c.recv_from(&mut buf).is_ok() {}
        c.set_read_timeout(Some(Duration::from_millis(500)))?;
        let answer = ask(c, f.addr)?;
        assert_ne!(answer, "w=0", "a flow stayed on the stuck worker");
    }
    Ok(())
}

#[test]
fn least_loaded_sends_new_flows_away_from_a_full_receive_queue() -> Result<()> {
    // Stuck detection off: only the load (the receive queue) keeps new flows away.
    let f = udp_daemon_with(
        "least-loaded",
        "127.0.0.1:5307".parse()?,
        "policy = \"least-loaded\"",
        "stuck_ms = 600000\nsample_ms = 20",
    )?;
    let ws = workers(&f, 2)?;
    // w0 stops reading; datagrams sent straight to its flows fill its queue.
    ws[0].paused.store(true, Ordering::Relaxed);
    let probes = flows(100, f.addr)?;
    let mut on_w0 = Vec::new();
    let mut buf = [0u8; 64];
    for c in &probes {
        c.set_read_timeout(Some(Duration::from_millis(100)))?;
        c.send_to(b"?", f.addr)?;
        if c.recv_from(&mut buf).is_err() {
            // No answer: the flow went to the paused w0 (the flow table keeps it there).
            on_w0.push(c);
        }
        if on_w0.len() >= 3 {
            break;
        }
    }
    assert!(
        !on_w0.is_empty(),
        "no flow went to w0 before its queue filled"
    );
    for c in &on_w0 {
        for _ in 0..20 {
            c.send_to(b"?", f.addr)?;
        }
    }
    let slot = ws[0].slot().ok_or("w0 has no slot")?;
    f.wait_worker(LIMIT, &format!("slot {slot} with a queue"), |w| {
        w.slot == slot && w.queue > 0
    })?;
    // Now every new flow goes to w1, the one with the empty queue.
    let fresh = flows(50, f.addr)?;
    let answers = ask_all(&fresh, f.addr)?;
    assert!(answers.iter().all(|w| w == "w=1"), "{answers:?}");
    Ok(())
}

#[test]
fn flows_keep_their_draining_worker_across_a_daemon_restart() -> Result<()> {
    let mut f = udp_daemon("restart", "127.0.0.1:5308".parse()?, "policy = \"maglev\"")?;
    let ws = workers(&f, 4)?;
    let clients = flows(200, f.addr)?;
    let before = ask_all(&clients, f.addr)?;
    assert!(before.iter().any(|w| w == "w=0"), "{before:?}");
    let slot = ws[0].slot().ok_or("w0 has no slot")?;
    let out = f.cli(&["drain", &slot.to_string()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.wait_active(3)?;

    // The daemon restarts; the workers register again on their own, and its new program
    // takes over the group with the pinned flow table.
    f.stop_daemon(libc::SIGTERM)?;
    f.start_daemon_with_config(&f.dir.join("reuseport.toml"))?;
    f.wait_workers(4)?;
    f.wait_active(3)?;
    let after = ask_all(&clients, f.addr)?;
    assert_eq!(moved(&before, &after), 0, "flows moved across the restart");
    Ok(())
}

#[test]
fn a_flow_idle_past_the_timeout_leaves_its_draining_worker() -> Result<()> {
    let f = udp_daemon(
        "idle",
        "127.0.0.1:5309".parse()?,
        "policy = \"maglev\"\nflow_idle_ms = 300",
    )?;
    let ws = workers(&f, 3)?;
    let clients = flows(60, f.addr)?;
    let before = ask_all(&clients, f.addr)?;
    let on_w0: Vec<&UdpSocket> = clients
        .iter()
        .zip(&before)
        .filter(|(_, w)| *w == "w=0")
        .map(|(c, _)| c)
        .collect();
    assert!(!on_w0.is_empty(), "{before:?}");
    let slot = ws[0].slot().ok_or("w0 has no slot")?;
    let out = f.cli(&["drain", &slot.to_string()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.wait_active(2)?;
    // Idle for over twice the timeout: forgotten, so steered as new, away from the drain.
    std::thread::sleep(Duration::from_millis(700));
    for c in &on_w0 {
        assert_ne!(
            ask(c, f.addr)?,
            "w=0",
            "an idle flow stayed on the draining worker"
        );
    }
    Ok(())
}

#[test]
fn a_tcp_and_a_udp_group_share_an_address() -> Result<()> {
    fresh_netns()?;
    let addr: SocketAddr = "127.0.0.1:5310".parse()?;
    let mut f = Fixture::on(addr, "test-udp-shared", binary::locate()?)?;
    let file = f.dir.join("reuseport.toml");
    std::fs::write(
        &file,
        format!(
            "[health]\nstuck_ms = 600000\n\n[[group]]\nlisten = \"{addr}\"\npolicy = \
             \"hash\"\n\n[[group]]\nlisten = \"{addr}\"\nprotocol = \"udp\"\npolicy = \
             \"maglev\"\n"
        ),
    )?;
    f.start_daemon_with_config(&file)?;
    let tcp_pid = f.echo("tcp")?;
    let udp = Worker::start(&f, 7)?;
    wait::until(LIMIT, "both groups with a worker", || {
        f.request(&Request::Status)
            .ok()
            .and_then(|r| r.groups)
            .is_some_and(|g| g.len() == 2 && g.iter().all(|g| g.workers.len() == 1))
    })?;
    let groups = f.request(&Request::Status)?.groups.ok_or("no groups")?;
    let protocols: Vec<Protocol> = groups.iter().map(|g| g.proto).collect();
    assert_eq!(protocols, [Protocol::Tcp, Protocol::Udp]);
    assert_eq!(groups[0].workers[0].pid, tcp_pid);
    assert_eq!(ask(&flow(addr)?, addr)?, "w=7");

    // The address alone is ambiguous; the scheme names the UDP group.
    let out = f.cli(&["policy", "set", "round-robin", "--group", &addr.to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("udp://"), "{err}");
    let out = f.cli(&[
        "policy",
        "set",
        "round-robin",
        "--group",
        &format!("udp://{addr}"),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let groups = f.request(&Request::Status)?.groups.ok_or("no groups")?;
    let policies: Vec<String> = groups.iter().map(|g| g.policy.to_string()).collect();
    assert_eq!(policies, ["hash", "round-robin"]);
    drop(udp);
    Ok(())
}

/// Registers `fd` on a connection of its own; the refusal's code and message.
fn refusal(f: &Fixture, fd: impl AsFd) -> Result<(ErrorCode, String)> {
    let mut client = ControlClient::connect(&f.control)?;
    match client.request_with_fd(
        &Request::Register {
            name: Some("mismatch".into()),
            weight: None,
            pid: None,
        },
        fd.as_fd(),
    ) {
        Err(ClientError::Rejected { code, message }) => Ok((code, message)),
        other => Err(format!("expected a refusal, got {other:?}").into()),
    }
}

#[test]
fn a_socket_of_the_other_protocol_is_refused_with_the_fix() -> Result<()> {
    let f = udp_daemon("mismatch", "127.0.0.1:5303".parse()?, "")?;
    let tcp = reuseport_worker::bind_listener(f.addr, 16)?;
    let (code, message) = refusal(&f, &tcp)?;
    assert_eq!(code, ErrorCode::WrongProtocol, "{message}");
    assert!(
        message.contains("socket is TCP, the group 127.0.0.1:5303 is UDP"),
        "{message}"
    );
    assert!(message.contains("SOCK_DGRAM"), "{message}");
    drop::<TcpListener>(tcp);

    // And the other way round: a UDP socket into a TCP group.
    let mut tcp_group = Fixture::on(
        "127.0.0.1:5304".parse()?,
        "test-udp-mismatch-tcp",
        binary::locate()?,
    )?;
    tcp_group.start_daemon(&[])?;
    let udp = reuseport_worker::bind_udp_with(tcp_group.addr, false)?;
    let (code, message) = refusal(&tcp_group, &udp)?;
    assert_eq!(code, ErrorCode::WrongProtocol, "{message}");
    assert!(
        message.contains("socket is UDP, the group 127.0.0.1:5304 is TCP"),
        "{message}"
    );
    assert!(message.contains("listen()"), "{message}");
    Ok(())
}

/// `reuseport echo --udp` processes, killed on drop.
struct Echoes(Vec<Child>);

impl Drop for Echoes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn an_ipv6_udp_group_served_by_echo_udp() -> Result<()> {
    let f = udp_daemon("ipv6", "[::1]:5305".parse()?, "policy = \"round-robin\"")?;
    let mut echoes = Echoes(Vec::new());
    for i in 0..2 {
        echoes.0.push(
            Command::new(binary::locate()?)
                .args(["echo", "--udp", "--listen", &f.addr.to_string()])
                .args(["--name", &format!("e{i}")])
                .arg("--control")
                .arg(&f.control)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    f.wait_active(2)?;
    let client = flow(f.addr)?;
    let mut counts = BTreeMap::new();
    for _ in 0..20 {
        *counts.entry(ask(&client, f.addr)?).or_insert(0) += 1;
    }
    let pids: Vec<String> = echoes.0.iter().map(|c| format!("pid={}", c.id())).collect();
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>().len(),
        2,
        "{counts:?}"
    );
    for pid in &pids {
        assert_eq!(counts.get(pid), Some(&10), "{counts:?}");
    }
    wait::until(LIMIT, "status naming the group UDP", || {
        f.status().is_ok_and(|s| s.proto == Protocol::Udp)
    })?;
    Ok(())
}
