//! The daemon's state: one [`Group`] per `--listen` address and the workers registered in it.
//! Every control request ends up as one call here, under one lock.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    time::{Duration, Instant, SystemTime},
};

use log::{info, warn};

use super::health::{process_stopped, Health, HealthConfig, Mark, OnStuck, Verdict};
use reuseport_steer::{
    diag::{ListenerDiag, Queue},
    pin, AttachMode, Error, Family, Group, GroupOptions, OnEmpty, Policy, Protocol, SlotState,
    SocketInfo,
};
use reuseport_worker::{EventStatus, GroupStatus, WorkerStatus};

/// How the daemon sets up its groups.
#[derive(Clone, Debug, Default)]
pub struct GroupSetup {
    pub mode: AttachMode,
    /// `None`: keep the pinned group's policy, or round-robin for a new group.
    pub policy: Option<Policy>,
    pub on_empty: OnEmpty,
    /// Pin the maps under this directory (one subdirectory per group).
    pub pin_root: Option<std::path::PathBuf>,
    /// Discard pinned state instead of taking it over.
    pub fresh: bool,
}

/// Identifies one control connection.
pub type ConnId = u64;

/// A refusal, as it goes back to the client.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

/// Who is on the other end of a control connection (SO_PEERCRED).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
}

struct Worker {
    conn: ConnId,
    peer: Peer,
    name: String,
    cookie: u64,
    inflight: u32,
    /// Since when the worker has had requests in flight without a break.
    busy_since: Option<Instant>,
    /// The daemon's copy of the listening socket, kept while the worker is registered so it
    /// can shut the listener down (eviction, `drain --close`). Closed the moment the worker
    /// goes, so it never keeps a dead worker's queue alive.
    socket: OwnedFd,
    health: Health,
    /// /proc/PID/stat, opened once: read again (pread) to tell a stopped process.
    proc_stat: Option<std::fs::File>,
}

/// A worker whose listener the daemon shut down; listed until it registers again or leaves.
struct Evicted {
    conn: ConnId,
    peer: Peer,
    name: String,
    slot: u32,
    mark: Mark,
}

/// Something that happened to a slot, kept for `status`.
#[derive(Clone, Debug)]
struct Event {
    slot: u32,
    pid: u32,
    name: String,
    what: &'static str,
    mark: Mark,
}

/// How many events a group remembers.
const EVENTS: usize = 32;

struct GroupEntry {
    listen: SocketAddr,
    group: Group,
    workers: BTreeMap<u32, Worker>,
    evicted: Vec<Evicted>,
    events: VecDeque<Event>,
    stuck_events: u64,
    /// Pids drained with `--close`: their next registration starts draining too.
    closed_pids: Vec<u32>,
}

pub struct Registry {
    groups: Vec<GroupEntry>,
    health: HealthConfig,
    /// What the last full sample saw, to skip the next when nothing can have changed.
    quiet: Quiet,
}

/// Enough of the last sample to know that a group is idle: nothing was queued or in flight,
/// and the program has sent nothing since (queues only grow by what it sends).
#[derive(Default)]
struct Quiet {
    idle: bool,
    dispatched: u64,
    skipped: u32,
}

/// Even when idle, a full sample at least this often (in samples).
const MAX_SKIPPED: u32 = 20;

impl Registry {
    /// Loads one program per listen address, taking over the pinned state of an earlier
    /// daemon under `pin_root` (unless `fresh`). Nothing is attached until a worker registers:
    /// the group only exists once a worker has bound its socket.
    pub fn new(
        listen: &[SocketAddr],
        setup: &GroupSetup,
        health: HealthConfig,
    ) -> Result<Self, Error> {
        let mut groups = Vec::new();
        for &listen in listen {
            let mut group = Group::load(GroupOptions {
                mode: setup.mode,
                policy: setup.policy.unwrap_or_default(),
                on_empty: setup.on_empty,
                pin: setup
                    .pin_root
                    .as_deref()
                    .map(|root| pin::group_dir(root, listen)),
            })?;
            if group.adopted() {
                if setup.fresh {
                    group.reset(setup.policy.unwrap_or_default(), setup.on_empty)?;
                    info!("{listen}: discarded the pinned state (--fresh)");
                } else {
                    if let Some(policy) = setup.policy {
                        group.set_policy(policy)?;
                    }
                    group.set_on_empty(setup.on_empty)?;
                    info!(
                        "{listen}: took over the pinned state: {} slots, policy {}; workers \
                         register again on their own",
                        group.slots().len(),
                        group.policy()
                    );
                }
            }
            groups.push(GroupEntry {
                listen,
                group,
                workers: BTreeMap::new(),
                evicted: Vec::new(),
                events: VecDeque::new(),
                stuck_events: 0,
                closed_pids: Vec::new(),
            });
        }
        Ok(Self {
            groups,
            health,
            quiet: Quiet::default(),
        })
    }

    /// Puts a worker's listening socket in its group. The received descriptor is kept as the
    /// daemon's copy while the worker is registered (to shut the listener down when evicting)
    /// and closed the moment the worker leaves, after its slot is emptied.
    pub fn register(
        &mut self,
        conn: ConnId,
        peer: Peer,
        socket: OwnedFd,
        name: Option<String>,
        weight: Option<u32>,
    ) -> Result<(String, u32), Refusal> {
        let info = SocketInfo::of(socket.as_fd())?;
        info.check_joinable()?;
        let entry = self.group_for(&info)?;
        let slot = match entry.group.slot_of_socket(socket.as_fd())? {
            // Left in its slot by an earlier daemon (pinned state): take it back as it is.
            Some(slot) if !entry.workers.contains_key(&slot) => slot,
            Some(slot) => return Err(Error::AlreadyInGroup(slot).into()),
            None => insert_taking_over(&mut entry.group, socket.as_fd())?,
        };
        let attached = entry.group.attach(socket.as_fd());
        let weighted = weight.map(|w| entry.group.set_weight(slot, w));
        if let Err(e) = attached.and(weighted.unwrap_or(Ok(()))) {
            // Leave nothing half-done: the worker gets the error and no slot.
            if let Err(undo) = entry.group.remove(slot) {
                warn!("slot {slot}: undoing a failed registration: {undo}");
            }
            return Err(e.into());
        }
        let name = name.unwrap_or_else(|| format!("pid-{}", peer.pid));
        entry
            .evicted
            .retain(|e| e.conn != conn && e.peer.pid != peer.pid);
        if let Some(i) = entry.closed_pids.iter().position(|&p| p == peer.pid) {
            // Drained with --close: its new listener stays out of rotation too (once).
            entry.closed_pids.swap_remove(i);
            if let Err(e) = entry.group.set_state(slot, SlotState::Draining) {
                warn!("{}: keeping slot {slot} draining: {e}", entry.listen);
            }
        }
        info!(
            "{}: worker {name} (pid {}, uid {}) registered in slot {slot}",
            entry.listen, peer.pid, peer.uid
        );
        entry.workers.insert(
            slot,
            Worker {
                conn,
                peer,
                name,
                cookie: info.cookie,
                inflight: 0,
                busy_since: None,
                socket,
                health: Health::new(Instant::now()),
                proc_stat: std::fs::File::open(format!("/proc/{}/stat", peer.pid)).ok(),
            },
        );
        Ok((entry.listen.to_string(), slot))
    }

    /// Frees every slot registered over `conn` (its worker went away) and closes the daemon's
    /// copies of its sockets.
    pub fn unregister(&mut self, conn: ConnId) {
        for entry in &mut self.groups {
            entry.evicted.retain(|e| e.conn != conn);
            let slots: Vec<u32> = entry
                .workers
                .iter()
                .filter(|(_, w)| w.conn == conn)
                .map(|(&s, _)| s)
                .collect();
            for slot in slots {
                let Some(worker) = entry.workers.remove(&slot) else {
                    continue;
                };
                // The slot may have been freed (socket closed) and reused meanwhile.
                let same = entry.group.slot(slot).map(|s| s.cookie) == Some(worker.cookie);
                if same {
                    if let Err(e) = entry.group.remove(slot) {
                        warn!("{}: removing slot {slot}: {e}", entry.listen);
                    }
                }
                info!(
                    "{}: worker {} (pid {}) left slot {slot}",
                    entry.listen, worker.name, worker.peer.pid
                );
            }
        }
    }

    /// Records a worker's in-flight request count, and shows the program the new load at once
    /// rather than at the next sample.
    pub fn report_load(&mut self, conn: ConnId, inflight: u32) {
        let now = Instant::now();
        let sample = self.health.sample;
        for entry in &mut self.groups {
            for (&slot, worker) in entry.workers.iter_mut().filter(|(_, w)| w.conn == conn) {
                worker.inflight = inflight;
                worker.busy_since = match (inflight, worker.busy_since) {
                    (0, _) => None,
                    (_, None) => Some(now),
                    (_, since) => since,
                };
                let value = load(
                    worker.health.waiting,
                    inflight,
                    worker.busy_since,
                    now,
                    sample,
                );
                entry.group.set_load(slot, value);
            }
            entry.group.publish_least_loaded();
        }
    }

    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups.iter().map(GroupEntry::status).collect()
    }

    pub fn policy(&self, group: Option<&str>) -> Result<(String, Policy), Refusal> {
        let entry = &self.groups[self.one_group(group)?];
        Ok((entry.listen.to_string(), entry.group.policy()))
    }

    /// Sets the policy of one group, or of all of them when `group` is `None`.
    pub fn set_policy(&mut self, policy: &str, group: Option<&str>) -> Result<(), Refusal> {
        let policy: Policy = policy
            .parse()
            .map_err(|e: reuseport_steer::policy::ParseError| {
                Refusal::new("unknown_policy", e.to_string())
            })?;
        let targets = match group {
            Some(_) => vec![self.one_group(group)?],
            None => (0..self.groups.len()).collect(),
        };
        for i in targets {
            let entry = &mut self.groups[i];
            entry.group.set_policy(policy)?;
            info!("{}: policy set to {policy}", entry.listen);
        }
        Ok(())
    }

    pub fn set_weight(
        &mut self,
        slot: u32,
        weight: u32,
        group: Option<&str>,
    ) -> Result<(), Refusal> {
        let i = self.one_group(group)?;
        let entry = &mut self.groups[i];
        entry.group.set_weight(slot, weight)?;
        info!("{}: slot {slot} weight {weight}", entry.listen);
        Ok(())
    }

    pub fn set_state(
        &mut self,
        slot: u32,
        state: SlotState,
        group: Option<&str>,
    ) -> Result<(), Refusal> {
        let i = self.one_group(group)?;
        let entry = &mut self.groups[i];
        entry.group.set_state(slot, state)?;
        info!("{}: slot {slot} is now {state}", entry.listen);
        Ok(())
    }

    /// Periodic housekeeping: frees taken-over slots whose socket closed before their worker
    /// registered again, and forwards what the program logged.
    pub fn tick(&mut self) {
        for entry in &mut self.groups {
            entry.group.flush_log();
            // A registered worker's socket cannot close under us (the daemon holds a copy;
            // a shutdown shows in the samples): only taken-over slots need the kernel's word.
            if entry.group.occupied_count() == entry.workers.len() {
                continue;
            }
            match entry.group.sync() {
                Ok(gone) => {
                    for slot in gone {
                        if let Some(w) = entry.workers.remove(&slot) {
                            info!(
                                "{}: worker {} (pid {}) closed its socket; slot {slot} freed",
                                entry.listen, w.name, w.peer.pid
                            );
                        }
                    }
                }
                Err(e) => warn!("{}: checking slots: {e}", entry.listen),
            }
        }
    }

    /// One health sample: accept-queue depths from sock_diag, loads into the program's map,
    /// stuck workers out of the active set (evicted if so configured) and recovered ones back.
    pub fn sample(&mut self, diag: &mut ListenerDiag, queues: &mut HashMap<u64, Queue>) {
        let dispatched: u64 = self
            .groups
            .iter()
            .flat_map(|g| g.workers.keys().map(|&slot| g.group.dispatched(slot)))
            .sum();
        let taken_over = self
            .groups
            .iter()
            .any(|g| g.group.occupied_count() > g.workers.len());
        if self.quiet.idle
            && !taken_over
            && dispatched == self.quiet.dispatched
            && self.quiet.skipped < MAX_SKIPPED
        {
            self.quiet.skipped += 1;
            return;
        }
        self.quiet = Quiet {
            idle: false,
            dispatched,
            skipped: 0,
        };
        queues.clear();
        for family in [Family::Ipv4, Family::Ipv6] {
            if self.groups.iter().any(|g| family_of(g.listen) == family) {
                if let Err(e) = diag.listeners(family, queues) {
                    warn!("sock_diag ({family}): {e}");
                    return;
                }
            }
        }
        let now = Instant::now();
        let config = self.health;
        for entry in &mut self.groups {
            let mut evict = Vec::new();
            let mut gone = Vec::new();
            for (&slot, worker) in &mut entry.workers {
                let Some(queue) = queues.get(&worker.cookie) else {
                    // Not listening any more: shut down by its worker.
                    gone.push(slot);
                    continue;
                };
                entry.group.set_load(
                    slot,
                    load(
                        queue.waiting,
                        worker.inflight,
                        worker.busy_since,
                        now,
                        config.sample,
                    ),
                );
                let pid = worker.peer.pid;
                let verdict = worker.health.observe(
                    now,
                    entry.group.dispatched(slot),
                    queue.waiting,
                    config.stuck_after,
                    config.sample,
                    || worker.proc_stat.as_ref().is_some_and(process_stopped),
                );
                let state = entry.group.slot_state(slot);
                match verdict {
                    Verdict::Stuck(why) => {
                        let mark = Mark {
                            at: SystemTime::now(),
                            why,
                        };
                        warn!(
                            "{}: worker {} (pid {pid}, slot {slot}) is stuck: {}",
                            entry.listen, worker.name, mark.why
                        );
                        entry.stuck_events += 1;
                        push_event(&mut entry.events, slot, worker, "stuck", &mark);
                        worker.health.stuck = Some(mark);
                        if state == Some(SlotState::Active) {
                            if let Err(e) = entry.group.set_state(slot, SlotState::Stuck) {
                                warn!("{}: taking slot {slot} out: {e}", entry.listen);
                            }
                        }
                        if config.on_stuck == OnStuck::Evict {
                            evict.push(slot);
                        }
                    }
                    Verdict::Recovered => {
                        let mark = Mark {
                            at: SystemTime::now(),
                            why: "accepting again, queue empty".into(),
                        };
                        info!(
                            "{}: worker {} (pid {pid}, slot {slot}) recovered",
                            entry.listen, worker.name
                        );
                        push_event(&mut entry.events, slot, worker, "recovered", &mark);
                        worker.health.stuck = None;
                        if state == Some(SlotState::Stuck) {
                            if let Err(e) = entry.group.set_state(slot, SlotState::Active) {
                                warn!("{}: putting slot {slot} back: {e}", entry.listen);
                            }
                        }
                    }
                    Verdict::Fine => {}
                }
            }
            // Slots taken over from an earlier daemon whose worker has not registered again yet:
            // their queue is their load, so least-loaded neither favours nor starves them.
            if entry.group.occupied_count() > entry.workers.len() {
                for slot in entry.group.slots() {
                    if !entry.workers.contains_key(&slot.index) {
                        if let Some(queue) = queues.get(&slot.cookie) {
                            entry.group.set_load(slot.index, u64::from(queue.waiting));
                        }
                    }
                }
            }
            entry.group.publish_least_loaded();
            for slot in evict {
                let why = entry
                    .workers
                    .get(&slot)
                    .and_then(|w| w.health.stuck.as_ref())
                    .map_or_else(|| "stuck".to_owned(), |m| m.why.clone());
                entry.shut_down(slot, "evicted", why);
            }
            for slot in gone {
                if let Some(w) = entry.workers.remove(&slot) {
                    info!(
                        "{}: worker {} (pid {}) shut its listener down; slot {slot} freed",
                        entry.listen, w.name, w.peer.pid
                    );
                }
                if let Err(e) = entry.group.remove(slot) {
                    warn!("{}: freeing slot {slot}: {e}", entry.listen);
                }
            }
        }
        self.quiet.idle = self.groups.iter().all(|g| {
            g.workers
                .values()
                .all(|w| w.health.waiting == 0 && w.inflight == 0)
        });
    }

    /// `drain --close`: stop sending new connections to a slot and shut its listener down, so
    /// what waits in its queue moves to the other workers now.
    pub fn drain_and_close(&mut self, slot: u32, group: Option<&str>) -> Result<(), Refusal> {
        let i = self.one_group(group)?;
        let entry = &mut self.groups[i];
        entry.group.set_state(slot, SlotState::Draining)?;
        let Some(worker) = entry.workers.get(&slot) else {
            return Err(Refusal::new(
                "not_registered",
                format!(
                    "slot {slot} has no registered worker (taken over from an earlier daemon): \
                     it is draining; wait for its worker to register again to close it"
                ),
            ));
        };
        let pid = worker.peer.pid;
        entry.closed_pids.push(pid);
        entry.shut_down(slot, "closed", "reuseport drain --close".into());
        Ok(())
    }

    /// The group a socket may join, or why none fits.
    fn group_for(&mut self, info: &SocketInfo) -> Result<&mut GroupEntry, Refusal> {
        if info.protocol != Protocol::Tcp {
            return Err(Error::WrongProtocol {
                want: Protocol::Tcp,
                got: info.protocol,
            }
            .into());
        }
        if let Some(i) = self.groups.iter().position(|g| g.listen == info.local) {
            return Ok(&mut self.groups[i]);
        }
        let same_port = self
            .groups
            .iter()
            .find(|g| g.listen.port() == info.local.port());
        Err(match same_port {
            Some(g) if g.listen.is_ipv4() != info.local.is_ipv4() => Error::WrongFamily {
                want: family_of(g.listen),
                got: info.family,
            }
            .into(),
            Some(g) => Error::WrongAddress {
                want: g.listen,
                got: info.local,
            }
            .into(),
            None => Refusal::new(
                "no_group",
                format!(
                    "no group listens on {}: this daemon serves {}; bind to one of those, or \
                     start the daemon with --listen {}",
                    info.local,
                    self.listen_list(),
                    info.local
                ),
            ),
        })
    }

    fn one_group(&self, group: Option<&str>) -> Result<usize, Refusal> {
        match group {
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    Refusal::new(
                        "bad_request",
                        format!(
                            "{text:?} is not an ADDR:PORT; groups: {}",
                            self.listen_list()
                        ),
                    )
                })?;
                self.groups
                    .iter()
                    .position(|g| g.listen == addr)
                    .ok_or_else(|| {
                        Refusal::new(
                            "unknown_group",
                            format!("no group {addr}; groups: {}", self.listen_list()),
                        )
                    })
            }
            None if self.groups.len() == 1 => Ok(0),
            None => Err(Refusal::new(
                "ambiguous_group",
                format!(
                    "the daemon serves several groups ({}): name one with --group ADDR:PORT",
                    self.listen_list()
                ),
            )),
        }
    }

    fn listen_list(&self) -> String {
        self.groups
            .iter()
            .map(|g| g.listen.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl GroupEntry {
    /// Shuts a worker's listener down: the kernel hands its queued connections to the
    /// migrate program, which moves them to active slots. The slot is freed; the worker is
    /// listed as `what` until it registers a new listener or leaves.
    fn shut_down(&mut self, slot: u32, what: &'static str, why: String) {
        let Some(worker) = self.workers.remove(&slot) else {
            return;
        };
        let mark = Mark {
            at: SystemTime::now(),
            why,
        };
        if let Err(e) =
            nix::sys::socket::shutdown(worker.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        {
            warn!("{}: shutting slot {slot} down: {e}", self.listen);
        }
        if let Err(e) = self.group.remove(slot) {
            warn!("{}: freeing slot {slot}: {e}", self.listen);
        }
        info!(
            "{}: worker {} (pid {}) {what}: {}; its queued connections moved to the others",
            self.listen, worker.name, worker.peer.pid, mark.why
        );
        push_event(&mut self.events, slot, &worker, what, &mark);
        self.evicted.push(Evicted {
            conn: worker.conn,
            peer: worker.peer,
            name: worker.name,
            slot,
            mark,
        });
    }

    fn status(&self) -> GroupStatus {
        let stats = match self.group.stats() {
            Ok(s) => s,
            Err(e) => {
                warn!("{}: reading counters: {e}", self.listen);
                Default::default()
            }
        };
        let (program_runs, program_run_ns) = self
            .group
            .run_stats()
            .map(|(runs, time)| (runs, u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)))
            .unwrap_or_default();
        let mut workers: Vec<WorkerStatus> = self
            .group
            .slots()
            .into_iter()
            .map(|slot| {
                let worker = self.workers.get(&slot.index);
                let counters = stats.slot(slot.index);
                let stuck = worker.and_then(|w| w.health.stuck.as_ref());
                WorkerStatus {
                    slot: slot.index,
                    pid: worker.map_or(0, |w| w.peer.pid),
                    uid: worker.map_or(0, |w| w.peer.uid),
                    name: worker.map_or_else(String::new, |w| w.name.clone()),
                    state: slot.state.to_string(),
                    weight: slot.weight,
                    selected: counters.map_or(0, |c| c.selected),
                    migrated: counters.map_or(0, |c| c.migrated),
                    inflight: worker.map_or(0, |w| w.inflight),
                    queue: worker.map_or(0, |w| w.health.waiting),
                    load: self.group.slot_load(slot.index),
                    since: stuck.map(|m| unix_seconds(m.at)),
                    reason: stuck.map(|m| m.why.clone()),
                }
            })
            .collect();
        workers.extend(self.evicted.iter().map(|e| WorkerStatus {
            slot: e.slot,
            pid: e.peer.pid,
            uid: e.peer.uid,
            name: e.name.clone(),
            state: "evicted".into(),
            since: Some(unix_seconds(e.mark.at)),
            reason: Some(e.mark.why.clone()),
            ..WorkerStatus::default()
        }));
        let events = self
            .events
            .iter()
            .map(|e| EventStatus {
                at: unix_seconds(e.mark.at),
                slot: e.slot,
                pid: e.pid,
                name: e.name.clone(),
                what: e.what.to_owned(),
                why: e.mark.why.clone(),
            })
            .collect();
        GroupStatus {
            listen: self.listen.to_string(),
            proto: "tcp".into(),
            policy: self.group.policy().to_string(),
            on_empty: self.group.on_empty().to_string(),
            mode: self.group.mode().to_string(),
            workers,
            fallbacks: stats.global.fallbacks,
            drops: stats.global.drops,
            stuck_events: self.stuck_events,
            program_runs,
            program_run_ns,
            events,
            select_errors: stats
                .global
                .errors_by_name()
                .map(|(n, c)| (n.to_owned(), c))
                .collect(),
        }
    }
}

/// Inserts a socket; if the socket array of an earlier daemon's program (not pinned, still
/// attached) holds it, attaches ours first so the kernel frees the old array, then retries.
fn insert_taking_over(group: &mut Group, socket: BorrowedFd<'_>) -> Result<u32, Error> {
    match group.insert(socket) {
        Err(Error::HeldElsewhere) => {
            group.attach(socket)?;
            // The old array is freed after an RCU grace period and a workqueue run.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match group.insert(socket) {
                    Err(Error::HeldElsewhere) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    other => return other,
                }
            }
        }
        other => other,
    }
}

/// A slot's load as `least-loaded` and `p2c` compare it: connections waiting, requests in
/// flight, and one more per sample period the worker has been busy without a break. The last
/// term tells a worker stuck in one long request (its load keeps growing) from a fast one that
/// happens to be caught with a request or two in hand.
fn load(
    waiting: u32,
    inflight: u32,
    busy_since: Option<Instant>,
    now: Instant,
    sample: Duration,
) -> u64 {
    let busy_for = busy_since.map_or(0, |since| {
        (now.saturating_duration_since(since).as_micros() / sample.as_micros().max(1)) as u64
    });
    u64::from(waiting) + u64::from(inflight) + busy_for
}

fn push_event(
    events: &mut VecDeque<Event>,
    slot: u32,
    worker: &Worker,
    what: &'static str,
    mark: &Mark,
) {
    if events.len() == EVENTS {
        events.pop_front();
    }
    events.push_back(Event {
        slot,
        pid: worker.peer.pid,
        name: worker.name.clone(),
        what,
        mark: mark.clone(),
    });
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn family_of(addr: SocketAddr) -> Family {
    if addr.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    }
}
