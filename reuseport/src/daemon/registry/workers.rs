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
use reuseport_steer::{Error, SlotState, SocketInfo};
use reuseport_worker::{
    protocol::{EventKind, GroupRef},
    ErrorCode,
};

/// Identifies one control connection.
pub type ConnId = u64;

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
    /// /proc/PID/stat, opened once: read again (pread) to tell a stopped process.
    pub proc_stat: Option<std::fs::File>,
}

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
                load,
                socket,
                health: Health::new(Instant::now()),
                proc_stat: std::fs::File::open(format!("/proc/{}/stat", peer.pid)).ok(),
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
        entry.group.set_state(slot, SlotState::Draining)?;
        let Some(worker) = entry.workers.get(&slot) else {
            return Err(Refusal::new(
                ErrorCode::NotRegistered,
                format!(
                    "slot {slot} has no registered worker (taken over from an earlier daemon): \
                     it is draining; wait for its worker to register again to close it"
                ),
            ));
        };
        let pid = worker.peer.pid;
        entry.closed_pids.push(pid);
        entry.shut_down(slot, EventKind::Closed, "reuseport drain --close".into());
        Ok(())
    }
}

impl GroupEntry {
    /// Shuts a worker's listener down: the kernel hands its queued connections to the
    /// migrate program, which moves them to active slots. The slot is freed at the next
    /// flush; the worker is listed as `what` until it registers a new listener or leaves.
    pub(super) fn shut_down(&mut self, slot: u32, what: EventKind, why: String) {
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
        push_event(&mut self.events, self.listen, slot, &worker, what, &mark);
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
