//! `udp`: UDP groups, where the program runs once per datagram. Three measures, each on a group
//! of 8 UDP sockets served by threads of this process, steered by the program loaded in-process
//! (the daemon's `Group`), against the kernel's own hash with no program:
//!
//! - flows remapped when one of 8 workers leaves and when one joins: the kernel's hash, the
//!   program's `hash` (the flow hash scaled onto the active slots) and `maglev`, all with the
//!   flow table off (what the policy itself moves);
//! - flows broken while a worker restarts by hand-over (the old one drains, a new one joins):
//!   `hash` and `maglev` with and without the flow table, and the kernel (no drain there: the
//!   new socket just joins);
//! - per-datagram fairness of `round-robin` over a few flows, against the kernel's hash.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use reuseport_steer::{AttachMode, Group, GroupOptions, Policy, SlotState};
use reuseport_testing::distribution::Distribution;

use crate::{
    cluster,
    machine::Watch,
    report::{num, Report, Section, Table},
    scenario::{Options, Scenario},
};

const WORKERS: usize = 8;

pub struct Udp;

impl Scenario for Udp {
    fn name(&self) -> &'static str {
        "udp"
    }

    fn about(&self) -> &'static str {
        "UDP: flows remapped when 1 of 8 leaves or joins (hash vs maglev), flows broken by a \
         drain and restart, per-datagram round-robin fairness"
    }

    fn run(&self, options: &Options) -> Result<Report> {
        let flows = options
            .connections
            .map_or(if options.quick { 400 } else { 4000 }, |n| n as usize);
        let datagrams = if options.quick { 800 } else { 16_000 };
        let watch = Watch::start();
        let steerings = [
            Steering::Kernel,
            Steering::Program(Policy::Hash),
            Steering::Program(Policy::Maglev),
        ];
        let mut remaps = Vec::new();
        for s in steerings {
            let r = remap(s, flows)?;
            eprintln!(
                "udp: remap {:<12} leave {} of {} flows moved ({} its own), join {} moved",
                s.label(),
                r.leave_moved,
                flows,
                r.leave_own,
                r.join_moved
            );
            remaps.push((s, r));
        }
        let mut restarts = Vec::new();
        for (s, flow_table) in [
            (Steering::Kernel, false),
            (Steering::Program(Policy::Hash), false),
            (Steering::Program(Policy::Maglev), false),
            (Steering::Program(Policy::Hash), true),
            (Steering::Program(Policy::Maglev), true),
        ] {
            let r = restart(s, flow_table, flows)?;
            eprintln!(
                "udp: restart {:<12} flow table {flow_table}: {} of {flows} flows broken, {} new \
                 flows to the old worker",
                s.label(),
                r.broken,
                r.new_to_old
            );
            restarts.push((s, flow_table, r));
        }
        let mut fairness = Vec::new();
        for s in [Steering::Kernel, Steering::Program(Policy::RoundRobin)] {
            let d = spread(s, 16, datagrams)?;
            eprintln!("udp: fairness {:<12} {}", s.label(), d.summary());
            fairness.push((s, d));
        }
        Ok(report(
            flows,
            datagrams,
            &remaps,
            &restarts,
            &fairness,
            watch.lines(),
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Steering {
    /// No program: the kernel hashes each datagram's 4-tuple over the group's sockets.
    Kernel,
    Program(Policy),
}

impl Steering {
    fn label(self) -> String {
        match self {
            Self::Kernel => "kernel hash".into(),
            Self::Program(p) => p.name().into(),
        }
    }
}

/// A worker: a UDP socket of the group answering each datagram with its id.
struct Server {
    id: u32,
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(addr: SocketAddr, id: u32) -> Result<Self> {
        let socket = Arc::new(reuseport_worker::bind_udp_with(addr, false)?);
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let reply = id.to_ne_bytes();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })
        };
        Ok(Self {
            id,
            socket,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    /// Stops the thread, which closes the socket: it leaves the kernel group.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A group of servers on one address, steered by `steering`.
struct Cluster {
    addr: SocketAddr,
    group: Option<Group>,
    servers: Vec<(Option<u32>, Server)>,
}

impl Cluster {
    fn start(steering: Steering, flow_table: bool) -> Result<Self> {
        let addr = cluster::next_addr();
        let group = match steering {
            Steering::Kernel => None,
            Steering::Program(policy) => {
                let mut g = Group::load(GroupOptions {
                    mode: AttachMode::Select,
                    policy,
                    ..GroupOptions::default()
                })?;
                if !flow_table {
                    g.set_flow_idle(Duration::ZERO)?;
                }
                Some(g)
            }
        };
        let mut c = Self {
            addr,
            group,
            servers: Vec::new(),
        };
        for id in 0..WORKERS as u32 {
            c.join(id)?;
        }
        Ok(c)
    }

    fn join(&mut self, id: u32) -> Result<()> {
        let server = Server::start(self.addr, id)?;
        let slot = match &mut self.group {
            Some(g) => {
                if !g.is_attached() {
                    g.attach(&*server.socket)?;
                }
                Some(g.insert(&*server.socket)?)
            }
            None => None,
        };
        self.servers.push((slot, server));
        Ok(())
    }

    /// Worker `id` leaves: out of its slot first (as the daemon frees it), then closed.
    fn leave(&mut self, id: u32) -> Result<()> {
        let i = self
            .servers
            .iter()
            .position(|(_, s)| s.id == id)
            .context("no such worker")?;
        let (slot, server) = self.servers.remove(i);
        if let (Some(g), Some(slot)) = (&mut self.group, slot) {
            g.remove(slot)?;
        }
        drop(server);
        Ok(())
    }

    fn drain(&mut self, id: u32) -> Result<()> {
        let slot = self
            .servers
            .iter()
            .find(|(_, s)| s.id == id)
            .and_then(|(slot, _)| *slot);
        if let (Some(g), Some(slot)) = (&mut self.group, slot) {
            g.set_state(slot, SlotState::Draining)?;
        }
        Ok(())
    }
}

fn clients(n: usize) -> Result<Vec<UdpSocket>> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(s)
        })
        .collect()
}

/// The worker that answers a datagram on `client` (a few tries).
fn ask(client: &UdpSocket, to: SocketAddr) -> Result<u32> {
    let mut buf = [0u8; 16];
    for _ in 0..10 {
        client.send_to(b"?", to)?;
        if let Ok((4, _)) = client.recv_from(&mut buf) {
            return Ok(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]));
        }
    }
    bail!("no answer from {to}")
}

fn map(clients: &[UdpSocket], to: SocketAddr) -> Result<Vec<u32>> {
    clients.iter().map(|c| ask(c, to)).collect()
}

fn moved(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

struct Remap {
    leave_moved: usize,
    leave_own: usize,
    join_moved: usize,
}

fn remap(steering: Steering, flows: usize) -> Result<Remap> {
    let mut c = Cluster::start(steering, false)?;
    let clients = clients(flows)?;
    let before = map(&clients, c.addr)?;
    c.leave(3)?;
    let after = map(&clients, c.addr)?;
    c.join(WORKERS as u32)?;
    let joined = map(&clients, c.addr)?;
    Ok(Remap {
        leave_moved: moved(&before, &after),
        leave_own: before.iter().filter(|&&w| w == 3).count(),
        join_moved: moved(&after, &joined),
    })
}

struct Restart {
    broken: usize,
    new_to_old: usize,
}

/// Worker 0 restarts by hand-over: drained (with a program), a new worker joins; counted: the
/// flows that changed worker meanwhile, and the new flows sent to the old worker.
fn restart(steering: Steering, flow_table: bool, flows: usize) -> Result<Restart> {
    let mut c = Cluster::start(steering, flow_table)?;
    let old = clients(flows)?;
    let before = map(&old, c.addr)?;
    c.drain(0)?;
    c.join(WORKERS as u32)?;
    let during = map(&old, c.addr)?;
    let new = map(&clients(flows)?, c.addr)?;
    Ok(Restart {
        broken: moved(&before, &during),
        new_to_old: new.iter().filter(|&&w| w == 0).count(),
    })
}

/// `datagrams` over `flows` client sockets, one at a time: datagrams per worker.
fn spread(steering: Steering, flows: usize, datagrams: usize) -> Result<Distribution> {
    let c = Cluster::start(steering, false)?;
    let clients = clients(flows)?;
    let mut counts = vec![0u64; WORKERS];
    for i in 0..datagrams {
        let w = ask(&clients[i % flows], c.addr)? as usize;
        if let Some(n) = counts.get_mut(w) {
            *n += 1;
        }
    }
    Ok(Distribution::new(counts))
}

fn pct(part: usize, whole: usize) -> String {
    format!("{}%", num(100.0 * part as f64 / whole.max(1) as f64))
}

fn report(
    flows: usize,
    datagrams: usize,
    remaps: &[(Steering, Remap)],
    restarts: &[(Steering, bool, Restart)],
    fairness: &[(Steering, Distribution)],
    machine: Vec<String>,
) -> Report {
    let mut preamble = machine;
    preamble.push(format!(
        "{WORKERS} UDP sockets with SO_REUSEPORT on one loopback port, each served by a thread \
         of the bench answering with its id; {flows} flows (client sockets, one source port \
         each), one datagram per flow per measure; the program loaded in-process (the \
         daemon's Group) in select mode"
    ));
    let mut remap_table = Table::new(&[
        "steering",
        "leave: flows moved",
        "of which the leaver's",
        "others moved",
        "join: flows moved",
        "goal",
    ]);
    let mut csv = Table::new(&["measure", "steering", "flows", "value"]);
    for (s, r) in remaps {
        let others = r.leave_moved.saturating_sub(r.leave_own);
        remap_table.push(vec![
            s.label(),
            pct(r.leave_moved, flows),
            pct(r.leave_own, flows),
            pct(others, flows),
            pct(r.join_moved, flows),
            if *s == Steering::Program(Policy::Maglev) {
                format!("≤ {} (1/N + 2%)", pct(flows / WORKERS + flows / 50, flows))
            } else {
                "-".into()
            },
        ]);
        csv.push(vec![
            "leave_moved".into(),
            s.label(),
            flows.to_string(),
            r.leave_moved.to_string(),
        ]);
        csv.push(vec![
            "leave_own".into(),
            s.label(),
            flows.to_string(),
            r.leave_own.to_string(),
        ]);
        csv.push(vec![
            "join_moved".into(),
            s.label(),
            flows.to_string(),
            r.join_moved.to_string(),
        ]);
    }
    let mut restart_table = Table::new(&[
        "steering",
        "flow table",
        "flows broken",
        "new flows to the draining worker",
    ]);
    for (s, table, r) in restarts {
        restart_table.push(vec![
            s.label(),
            if *table { "on (30 s idle)" } else { "off" }.into(),
            format!("{} of {flows}", r.broken),
            format!("{} of {flows}", r.new_to_old),
        ]);
        csv.push(vec![
            format!("restart_broken_flow_table_{table}"),
            s.label(),
            flows.to_string(),
            r.broken.to_string(),
        ]);
    }
    let rows: Vec<(String, Distribution)> = fairness
        .iter()
        .map(|(s, d)| (s.label(), d.clone()))
        .collect();
    for (label, d) in &rows {
        csv.push(vec![
            "fairness_jain".into(),
            label.clone(),
            "16".into(),
            format!("{:.4}", d.jain()),
        ]);
    }
    Report {
        scenario: "udp".into(),
        title: "UDP groups: remapping, drains and per-datagram fairness".into(),
        preamble,
        sections: vec![
            Section {
                heading: format!("Flows remapped when 1 of {WORKERS} workers leaves, then 1 joins"),
                text: "Flow table off: what the steering itself moves. A leaver's own flows \
                       must move; everything else moved is a broken flow."
                    .into(),
                table: Some(remap_table),
                extra: String::new(),
            },
            Section {
                heading: "Flows broken while a worker restarts by hand-over".into(),
                text: "Worker 0 is drained (with a program; the kernel has no drain) and a new \
                       worker joins; each flow sends again. Goal: 0 broken, 0 new flows to the \
                       draining worker."
                    .into(),
                table: Some(restart_table),
                extra: String::new(),
            },
            Section {
                heading: format!(
                    "Per-datagram fairness: {datagrams} datagrams over 16 flows, {WORKERS} workers"
                ),
                text: "Datagrams per worker, one at a time.".into(),
                table: None,
                extra: reuseport_testing::distribution::markdown_table(&rows),
            },
        ],
        csv,
        extra_csv: Vec::new(),
        plots: Vec::new(),
    }
}
