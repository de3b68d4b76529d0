//! The workers: registering a listening socket into its group's slot, and freeing the slot
//! when the worker leaves or the daemon shuts its listener down.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use log::{info, warn};

use super::{monitor::push_event, GroupEntry, LoadCell, Refusal, Registry};
use crate::daemon::{
    access::{Actor, SlotAction},
    health::{Health, Mark},
};
use reuseport_steer::{pidfd::Process, Error, SlotState, SocketInfo};
use reuseport_worker::{
    protocol::{EventKind, GroupRef},
    ErrorCode,
};

/// Identifies one control connection.
pub type ConnId = u64;

/// The connection of an adopted socket: none (sessions count from 1). An adopted slot leaves
/// when no server process holds its socket any more, not when a connection closes.
pub const ADOPTED: ConnId = 0;

/// Who is on the other end of a control connection (SO_PEERCRED).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
}

/// How long a registration waits for an earlier daemon's socket array to let go of its socket.
const TAKE_OVER: Duration = Duration::from_secs(2);

pub(super) struct Worker {
    pub conn: ConnId,
    pub peer: Peer,
    pub name: String,
    pub cookie: u64,
    /// The connection's `load` reports.
    pub load: Arc<LoadCell>,
    /// The daemon's copy of the listening socket, kept while the worker is registered so it
    /// can shut the listener down (eviction, `drain --close`). Closed the moment the worker
    /// goes, so it never keeps a dead worker's queue alive.
    pub socket: OwnedFd,
    pub health: Health,
    /// The serving process by pidfd (`None` if it was gone at registration): tells a stopped
    /// process without ever reading another one that took its pid.
    pub process: Option<Process>,
    /// Set while the daemon keeps the worker's listener out of rotation after shutting it down
    /// and putting it back (eviction, `drain --close`).
    pub out: Option<Out>,
    /// Evictions since the worker last served a while in rotation: each doubles the probation.
    pub evictions: u32,
    /// The accept queue's capacity at the last sample, to listen again with the same backlog.
    pub backlog: u32,
    /// UDP groups: the receive queue across samples.
    pub receive_queue: super::udp::ReceiveQueue,
    /// Since when it has been busy, as its counters map tells (when it publishes one).
    pub busy: super::counters::Busy,
}

/// A listener the daemon shut down (its queue migrated) and made listen again, out of rotation:
/// the server's own descriptor accepts from it again without knowing anything happened.
pub(super) struct Out {
    /// [`EventKind::Evicted`] or [`EventKind::Closed`].
    pub what: EventKind,
    pub mark: Mark,
    /// Evicted: back in rotation once this passed and its process is not stopped. Closed: it
    /// stays draining until `undrain`.
    pub until: Instant,
}

/// The longest probation of a worker evicted again and again.
pub(super) const PROBATION_CAP: Duration = Duration::from_secs(1);

/// How long a worker evicted `evictions` times in a row waits before it gets connections again:
/// `base` (the stuck time), doubled at each repeated eviction, up to [`PROBATION_CAP`].
pub(super) fn probation(base: Duration, evictions: u32) -> Duration {
    base.saturating_mul(1 << evictions.min(10))
        .min(PROBATION_CAP.max(base))
}

/// Listen backlog when the accept queue's capacity was never sampled.
const DEFAULT_BACKLOG: i32 = libc::SOMAXCONN;

/// A worker whose listener the daemon shut down; listed until it registers again or leaves.
pub(super) struct Evicted {
    pub conn: ConnId,
    pub peer: Peer,
    pub name: String,
    pub slot: u32,
    pub mark: Mark,
}

/// A `register` request, its socket inspected once by the session ([`SocketInfo::of`]) and
/// found fit to join a group at all ([`SocketInfo::check_joinable`]).
pub struct NewWorker {
    pub conn: ConnId,
    pub peer: Peer,
    pub socket: OwnedFd,
    pub info: SocketInfo,
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub load: Arc<LoadCell>,
    /// The serving process, when the caller holds it already (adoption); else the registry
    /// opens a pidfd for `peer.pid`.
    pub process: Option<Process>,
}

/// Where a worker was put.
#[derive(Clone, Copy, Debug)]
pub struct Joined {
    pub group: SocketAddr,
    pub slot: u32,
}

/// The outcome of a registration step.
pub enum Registered {
    Done(Result<Joined, Refusal>),
    /// The socket array of an earlier daemon's program still holds the socket: ours is
    /// attached, and the kernel frees the old array after an RCU grace period. The owner
    /// retries ([`Registry::retry`]) on a timer, serving other requests meanwhile.
    Waiting(TakeOver),
}

pub struct TakeOver {
    group: usize,
    worker: NewWorker,
    deadline: Instant,
}

impl TakeOver {
    pub fn conn(&self) -> ConnId {
        self.worker.conn
    }
}

impl Registry {
    /// Puts a worker's listening socket in its group. The received descriptor is kept as the
    /// daemon's copy while the worker is registered (to shut the listener down when evicting)
    /// and closed the moment the worker leaves, after its slot is emptied.
    pub fn register(&mut self, worker: NewWorker) -> Registered {
        let g = match self.group_for(&worker.info) {
            Ok(g) => g,
            Err(refusal) => return Registered::Done(Err(refusal)),
        };
        let entry = &mut self.groups[g];
        match entry.group.slot_of_cookie(worker.info.cookie) {
            // Left in its slot by an earlier daemon (pinned state): take it back as it is.
            Some(slot) if !entry.workers.contains_key(&slot) => {
                // Found stuck by the earlier daemon: this one has no record of it, and the
                // worker has just shown it runs. Back in rotation; the monitor judges afresh.
                if entry.group.slot_state(slot) == Some(SlotState::Stuck) {
                    if let Err(e) = entry.group.set_state(slot, SlotState::Active) {
                        warn!("{}: putting taken-over slot {slot} back: {e}", entry.listen);
                    }
                }
                return Registered::Done(self.finish(g, slot, worker));
            }
            // Adopted, and now registered by its own server (or a launcher): the registration
            // takes the slot over, with its connection and process.
            Some(slot)
                if worker.conn != ADOPTED
                    && entry.workers.get(&slot).is_some_and(|w| w.conn == ADOPTED) =>
            {
                if let Some(old) = entry.workers.remove(&slot) {
                    info!(
                        "{}: slot {slot}, adopted from {} (pid {}), is registered by pid {} now",
                        entry.listen, old.name, old.peer.pid, worker.peer.pid
                    );
                }
                return Registered::Done(self.finish(g, slot, worker));
            }
            Some(slot) => return Registered::Done(Err(Error::AlreadyInGroup(slot).into())),
            None => {}
        }
        match entry.group.insert_inspected(&worker.socket, &worker.info) {
            Ok(slot) => Registered::Done(self.finish(g, slot, worker)),
            Err(Error::HeldElsewhere) => {
                // Attaching ours makes the kernel free the old array (after a grace period).
                if let Err(e) = entry.group.attach_inspected(&worker.socket, &worker.info) {
                    return Registered::Done(Err(e.into()));
                }
                info!(
                    "{}: an earlier daemon's program still holds the socket of pid {}; took the \
                     group over, retrying for up to {} s",
                    entry.listen,
                    worker.peer.pid,
                    TAKE_OVER.as_secs()
                );
                Registered::Waiting(TakeOver {
                    group: g,
                    worker,
                    deadline: Instant::now() + TAKE_OVER,
                })
            }
            Err(e) => Registered::Done(Err(e.into())),
        }
    }

    /// Tries a waiting take-over again; it fails for good once its deadline passed.
    pub fn retry(&mut self, waiting: TakeOver) -> Registered {
        let TakeOver {
            group: g,
            worker,
            deadline,
        } = waiting;
        match self.groups[g]
            .group
            .insert_inspected(&worker.socket, &worker.info)
        {
            Ok(slot) => Registered::Done(self.finish(g, slot, worker)),
            Err(Error::HeldElsewhere) if Instant::now() < deadline => {
                Registered::Waiting(TakeOver {
                    group: g,
                    worker,
                    deadline,
                })
            }
            Err(e) => Registered::Done(Err(e.into())),
        }
    }

    /// Attaches the group's program, applies the weight and records the worker in `slot`.
    fn finish(&mut self, g: usize, slot: u32, worker: NewWorker) -> Result<Joined, Refusal> {
        let entry = &mut self.groups[g];
        let NewWorker {
            conn,
            peer,
            socket,
            info,
            name,
            weight,
            load,
            process,
        } = worker;
        // The file's weight for this name wins over the one the worker asks for.
        let weight = name
            .as_deref()
            .and_then(|n| entry.weights.get(n).copied())
            .or(weight);
        let attached = entry.group.attach_inspected(socket.as_fd(), &info);
        let weighted = weight.map(|w| entry.group.set_weight(slot, w));
        if let Err(e) = attached.and(weighted.unwrap_or(Ok(()))) {
            // Leave nothing half-done: the worker gets the error and no slot.
            if let Err(undo) = entry.group.remove(slot) {
                warn!("slot {slot}: undoing a failed registration: {undo}");
            }
            return Err(e.into());
        }
        let name = name.unwrap_or_else(|| format!("pid-{}", peer.pid));
        // Listed as evicted over this connection: back with a new listener. (Adopted sockets
        // have no connection; an evicted one that comes back is the same socket.)
        entry.evicted.retain(|e| e.conn != conn || conn == ADOPTED);
        // A worker whose accept() ran into the instant its listener was shut down registers a
        // new one on the same connection: its old listener leaves (no orphan stays in the
        // group), and a closed one's replacement stays out of rotation like it. (One that
        // registers on a new connection closed the old one, which freed the old slot.)
        let replaced: Vec<u32> = entry
            .workers
            .iter()
            .filter(|(_, w)| w.out.is_some() && w.conn == conn && conn != ADOPTED)
            .map(|(&s, _)| s)
            .collect();
        let mut was_closed = false;
        for old in replaced {
            if let Some(w) = entry.workers.remove(&old) {
                info!(
                    "{}: worker {} (pid {}) replaced its listener in slot {old} by slot {slot}",
                    entry.listen, w.name, w.peer.pid
                );
                was_closed |= w.out.as_ref().is_some_and(|o| o.what == EventKind::Closed);
                entry.leaving.push((old, w));
            }
        }
        let closed_before = entry.closed_conns.iter().position(|&c| c == conn);
        if let Some(i) = closed_before {
            entry.closed_conns.swap_remove(i);
        }
        if was_closed || closed_before.is_some() {
            // Drained with --close: its new listener stays out of rotation too (once).
            if let Err(e) = entry.group.set_state(slot, SlotState::Draining) {
                warn!("{}: keeping slot {slot} draining: {e}", entry.listen);
            }
        }
        info!(
            "{}: {} {name} (pid {}, uid {}) {} slot {slot}",
            entry.listen,
            if conn == ADOPTED { "server" } else { "worker" },
            peer.pid,
            peer.uid,
            if conn == ADOPTED {
                "adopted into"
            } else {
                "registered in"
            }
        );
        entry.workers.insert(
            slot,
            Worker {
                conn,
                peer,
                name,
                cookie: info.cookie,
                load,
                socket,
                health: Health::new(Instant::now()),
                process: process.or_else(|| Process::open(peer.pid).ok()),
                out: None,
                evictions: 0,
                backlog: 0,
                receive_queue: Default::default(),
                busy: Default::default(),
            },
        );
        Ok(Joined {
            group: entry.listen,
            slot,
        })
    }

    /// Frees every slot registered over `conn` (its worker went away) and closes the daemon's
    /// copies of its sockets, at the next [`Registry::flush`].
    pub fn unregister(&mut self, conn: ConnId) {
        for entry in &mut self.groups {
            entry.evicted.retain(|e| e.conn != conn);
            entry.closed_conns.retain(|&c| c != conn);
            let slots: Vec<u32> = entry
                .workers
                .iter()
                .filter(|(_, w)| w.conn == conn)
                .map(|(&s, _)| s)
                .collect();
            for slot in slots {
                if let Some(worker) = entry.workers.remove(&slot) {
                    info!(
                        "{}: worker {} (pid {}) left slot {slot}",
                        entry.listen, worker.name, worker.peer.pid
                    );
                    entry.leaving.push((slot, worker));
                }
            }
        }
    }

    /// `drain --close`: stop sending new connections to a slot and shut its listener down, so
    /// what waits in its queue moves to the other workers now.
    pub fn drain_and_close(
        &mut self,
        actor: Actor,
        slot: u32,
        group: Option<&GroupRef>,
    ) -> Result<(), Refusal> {
        let i = self.one_group(group)?;
        self.groups[i].may_act(actor, slot, SlotAction::Close)?;
        let entry = &mut self.groups[i];
        if entry.protocol == reuseport_steer::Protocol::Udp {
            // A UDP socket has no queue to hand over and no listen() to come back with: a
            // shutdown would only stop its worker reading.
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "{} is a UDP group: --close applies to TCP listeners only; use `reuseport \
                     drain {slot}` (its flows stay with it until they idle out)",
                    entry.listen
                ),
            ));
        }
        entry.group.set_state(slot, SlotState::Draining)?;
        if !entry.workers.contains_key(&slot) {
            return Err(Refusal::new(
                ErrorCode::NotRegistered,
                format!(
                    "slot {slot} has no registered worker (taken over from an earlier daemon): \
                     it is draining; wait for its worker to register again to close it"
                ),
            ));
        }
        entry.shut_down(
            slot,
            EventKind::Closed,
            "reuseport drain --close".into(),
            Duration::ZERO,
        );
        Ok(())
    }
}

impl GroupEntry {
    /// Shuts a worker's listener down: the kernel hands its queued connections to the
    /// migrate program, which moves them to active slots. Then the daemon's copy listens again
    /// (the same socket rejoins the kernel group on its explicit port) and goes back into the
    /// same slot, still out of rotation (the caller made it stuck or draining): the worker keeps
    /// its record and its server keeps accepting on its own descriptor. An evicted worker comes
    /// back after `probation` (see [`super::monitor`]), a closed one on `undrain`.
    ///
    /// When the socket cannot listen again (bound to port 0, or the kernel refuses), the slot
    /// is freed at the next flush and the worker listed as `what` until it registers a new
    /// listener or leaves, as before.
    pub(super) fn shut_down(
        &mut self,
        slot: u32,
        what: EventKind,
        why: String,
        probation: Duration,
    ) {
        let Some(worker) = self.workers.get_mut(&slot) else {
            return;
        };
        let mark = Mark {
            at: SystemTime::now(),
            why,
        };
        let fd = worker.socket.as_raw_fd();
        if let Err(e) = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both) {
            warn!("{}: shutting slot {slot} down: {e}", self.listen);
        }
        // Listening again first, then the log line: a server's accept() between the two
        // fails with EINVAL, so the window stays as short as two system calls.
        let back = relisten(worker, self.listen).and_then(|()| {
            self.group
                .reinsert(slot, worker.socket.as_fd())
                .map_err(|e| e.to_string())
        });
        push_event(&mut self.events, self.listen, slot, worker, what, &mark);
        match back {
            Ok(()) => {
                if what == EventKind::Evicted {
                    worker.evictions = worker.evictions.saturating_add(1);
                }
                worker.health = Health::new(Instant::now());
                worker.out = Some(Out {
                    what,
                    mark,
                    until: Instant::now() + probation,
                });
                return;
            }
            Err(e) => {
                info!(
                    "{}: slot {slot} not listening again ({e}); freeing it until its worker \
                     registers a new listener",
                    self.listen
                );
                let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            }
        }
        let Some(worker) = self.workers.remove(&slot) else {
            return;
        };
        if what == EventKind::Closed && worker.conn != ADOPTED {
            self.closed_conns.push(worker.conn);
        }
        self.evicted.push(Evicted {
            conn: worker.conn,
            peer: worker.peer,
            name: worker.name.clone(),
            slot,
            mark,
        });
        self.leaving.push((slot, worker));
    }
}

/// Makes a listener the daemon shut down listen again, if it can do so on the group's port:
/// only a socket bound to an explicit port keeps its port across a shutdown.
fn relisten(worker: &Worker, group: SocketAddr) -> Result<(), String> {
    if group.port() == 0 {
        return Err("the group's port is 0".into());
    }
    let backlog = match i32::try_from(worker.backlog) {
        Ok(0) | Err(_) => DEFAULT_BACKLOG,
        Ok(b) => b,
    };
    socket2::SockRef::from(&worker.socket)
        .listen(backlog)
        .map_err(|e| format!("listen: {e}"))?;
    let port = SocketInfo::of(worker.socket.as_fd())
        .map_err(|e| e.to_string())?
        .local
        .port();
    if port != group.port() {
        return Err(format!("it listens on port {port}, not {}", group.port()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probation_starts_at_the_stuck_time_and_doubles_up_to_the_cap() {
        let base = Duration::from_millis(50);
        assert_eq!(probation(base, 0), base);
        assert_eq!(probation(base, 1), Duration::from_millis(100));
        assert_eq!(probation(base, 4), Duration::from_millis(800));
        assert_eq!(probation(base, 5), PROBATION_CAP);
        assert_eq!(probation(base, u32::MAX), PROBATION_CAP);
        // A stuck time above the cap is the probation itself.
        assert_eq!(probation(Duration::from_secs(5), 3), Duration::from_secs(5));
    }
}
