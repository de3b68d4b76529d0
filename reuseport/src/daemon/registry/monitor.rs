//! The health monitor: every sample reads the accept queues (sock_diag), feeds the loads to
//! the program and reacts to what [`Health::observe`](crate::daemon::health::Health::observe) concludes: a stuck worker leaves the
//! active set (and is evicted if so configured), a recovered one comes back, a listener shut
//! down by its worker frees its slot. Housekeeping ([`Registry::tick`]) frees taken-over slots
//! whose socket closed.

use std::{
    collections::{HashMap, VecDeque},
    time::{Instant, SystemTime},
};

use log::{info, warn};

use super::{
    counters::{inflight, sampled_load},
    routing::family_of,
    workers::{probation, Worker, PROBATION_CAP},
    Registry,
};
use crate::daemon::health::{Health, Mark, OnStuck, Verdict};
use reuseport_steer::{
    diag::{ListenerDiag, Queue},
    pidfd::Process,
    Family, Protocol, SlotState,
};
use reuseport_worker::protocol::EventKind;

/// Something that happened to a slot, kept for `status`.
#[derive(Clone, Debug)]
pub(super) struct Event {
    pub slot: u32,
    pub pid: u32,
    pub name: String,
    pub what: EventKind,
    pub mark: Mark,
}

/// How many events a group remembers.
const EVENTS: usize = 32;

/// Enough of the last sample to know that a group is idle: nothing was queued or in flight,
/// and the program has sent nothing since (queues only grow by what it sends).
#[derive(Default)]
pub(super) struct Quiet {
    idle: bool,
    dispatched: u64,
    skipped: u32,
}

/// Even when idle, a full sample at least this often (in samples).
const MAX_SKIPPED: u32 = 20;

impl Registry {
    /// Periodic housekeeping: frees taken-over slots whose socket closed before their worker
    /// registered again, and forwards what the program logged.
    pub fn tick(&mut self) {
        for entry in &mut self.groups {
            entry.group.flush_log();
            // A registered worker's socket cannot close under us (the daemon holds a copy;
            // a shutdown shows in the samples): only taken-over slots need the kernel's word.
            if entry.group.occupied_count() == entry.workers.len() + entry.leaving.len() {
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
    /// Slots freed meanwhile are published once, at the end.
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
        // Every worker's counters say its queue is empty: a sample without sock_diag.
        let known_empty =
            !taken_over && self.quiet.skipped < MAX_SKIPPED && self.queues_known_empty();
        self.quiet = Quiet {
            idle: false,
            dispatched,
            skipped: if known_empty {
                self.quiet.skipped + 1
            } else {
                0
            },
        };
        queues.clear();
        if known_empty {
            self.empty_queues(queues);
        } else {
            self.before_dump();
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            if known_empty {
                break;
            }
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                if !self
                    .groups
                    .iter()
                    .any(|g| family_of(g.listen) == family && g.protocol == protocol)
                {
                    continue;
                }
                let dumped = match protocol {
                    Protocol::Tcp => diag.listeners(family, queues),
                    Protocol::Udp => diag.udp_sockets(family, queues),
                };
                if let Err(e) = dumped {
                    warn!("sock_diag ({family} {protocol}): {e}");
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
                let Some(&queue) = queues.get(&worker.cookie) else {
                    // Not listening any more: shut down by its worker.
                    gone.push(slot);
                    continue;
                };
                // UDP: the receive queue, in datagrams, and whether it shrank (udp.rs).
                let (dispatched, queue) = match entry.protocol {
                    Protocol::Tcp => (entry.group.dispatched(slot), queue),
                    Protocol::Udp => {
                        let socket = &worker.socket;
                        let (progress, waiting) = worker.receive_queue.observe(
                            queue.waiting,
                            entry.group.dispatched(slot),
                            || {
                                socket2::SockRef::from(socket)
                                    .recv_buffer_size()
                                    .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX))
                            },
                        );
                        (progress, Queue { waiting, ..queue })
                    }
                };
                let load = sampled_load(
                    &entry.group,
                    slot,
                    worker,
                    queue.waiting,
                    now,
                    config.sample,
                );
                entry.group.set_load(slot, load);
                worker.backlog = queue.backlog;
                if !known_empty {
                    worker.busy.dumped(queue.waiting);
                }
                if let Some(out) = &worker.out {
                    // Shut down and listening again, out of rotation: an evicted worker comes
                    // back once its probation passed and its process runs (if it is still
                    // stuck, it is found stuck and evicted again: its queue migrates again).
                    // A closed one waits for `undrain`.
                    if out.what != EventKind::Evicted
                        || now < out.until
                        || worker.process.as_ref().is_some_and(Process::stopped)
                    {
                        continue;
                    }
                    let mark = Mark {
                        at: SystemTime::now(),
                        why: "running again after its eviction: back in rotation".into(),
                    };
                    push_event(
                        &mut entry.events,
                        entry.listen,
                        slot,
                        worker,
                        EventKind::Recovered,
                        &mark,
                    );
                    worker.out = None;
                    worker.health = Health::new(now);
                    if entry.group.slot_state(slot) == Some(SlotState::Stuck) {
                        if let Err(e) = entry.group.set_state(slot, SlotState::Active) {
                            warn!("{}: putting slot {slot} back: {e}", entry.listen);
                        }
                    }
                    continue;
                }
                if worker.evictions > 0
                    && worker.health.stuck.is_none()
                    && now.saturating_duration_since(worker.health.since) > 2 * PROBATION_CAP
                {
                    // Served a while since it came back: the next eviction starts afresh.
                    worker.evictions = 0;
                }
                let verdict = worker.health.observe(
                    now,
                    dispatched,
                    queue.waiting,
                    config.stuck_after,
                    config.sample,
                    || worker.process.as_ref().is_some_and(Process::stopped),
                );
                let state = entry.group.slot_state(slot);
                match verdict {
                    Verdict::Stuck(why) => {
                        let mark = Mark {
                            at: SystemTime::now(),
                            why,
                        };
                        entry.stuck_events += 1;
                        push_event(
                            &mut entry.events,
                            entry.listen,
                            slot,
                            worker,
                            EventKind::Stuck,
                            &mark,
                        );
                        worker.health.stuck = Some(mark);
                        if state == Some(SlotState::Active) {
                            if let Err(e) = entry.group.set_state(slot, SlotState::Stuck) {
                                warn!("{}: taking slot {slot} out: {e}", entry.listen);
                            }
                        }
                        // A UDP socket has no queue to hand over: out of rotation is all.
                        if config.on_stuck == OnStuck::Evict && entry.protocol == Protocol::Tcp {
                            evict.push(slot);
                        }
                    }
                    Verdict::Recovered => {
                        let mark = Mark {
                            at: SystemTime::now(),
                            why: "accepting again, queue empty".into(),
                        };
                        push_event(
                            &mut entry.events,
                            entry.listen,
                            slot,
                            worker,
                            EventKind::Recovered,
                            &mark,
                        );
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
                let Some(worker) = entry.workers.get(&slot) else {
                    continue;
                };
                let why = worker
                    .health
                    .stuck
                    .as_ref()
                    .map_or_else(|| "stuck".to_owned(), |m| m.why.clone());
                let wait = probation(config.stuck_after, worker.evictions);
                entry.shut_down(slot, EventKind::Evicted, why, wait);
            }
            for slot in gone {
                if let Some(w) = entry.workers.remove(&slot) {
                    info!(
                        "{}: worker {} (pid {}) shut its listener down; slot {slot} freed",
                        entry.listen, w.name, w.peer.pid
                    );
                    entry.leaving.push((slot, w));
                }
            }
        }
        self.flush();
        self.quiet.idle = self.groups.iter().all(|g| {
            g.workers
                .iter()
                .all(|(&slot, w)| w.health.waiting == 0 && inflight(&g.group, slot, w) == 0)
        });
    }
}

/// Records an event for `status` and writes it as one log line with the same fields (target
/// `reuseport::event`), so a log search and `status` tell the same story.
pub(super) fn push_event(
    events: &mut VecDeque<Event>,
    group: std::net::SocketAddr,
    slot: u32,
    worker: &Worker,
    what: EventKind,
    mark: &Mark,
) {
    let name = reuseport_worker::names::printable(&worker.name);
    let pid = worker.peer.pid;
    let why = mark.why.as_str();
    match what {
        EventKind::Stuck => tracing::warn!(
            target: "reuseport::event", event = %what, %group, slot, pid, %name, why,
            "worker {name} (pid {pid}) in slot {slot} of {group} is stuck: {why}"
        ),
        _ => tracing::info!(
            target: "reuseport::event", event = %what, %group, slot, pid, %name, why,
            "worker {name} (pid {pid}) in slot {slot} of {group}: {what}: {why}"
        ),
    }
    if events.len() == EVENTS {
        events.pop_front();
    }
    events.push_back(Event {
        slot,
        pid,
        name: worker.name.clone(),
        what,
        mark: mark.clone(),
    });
}
