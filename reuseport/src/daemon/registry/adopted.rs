//! The registry's side of adoption ([`crate::daemon::adoption`] finds the sockets, off this
//! thread): what it needs to know of the slots, and the two changes it makes to an adopted slot
//! besides filling it (through [`Registry::register`]): following the socket's new acceptor,
//! and releasing a socket no server holds any more.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use log::info;

use super::{workers::ADOPTED, Registry};
use reuseport_steer::pidfd::Process;

/// A snapshot of what adoption needs, taken on the owner's thread in one call.
#[derive(Debug, Default)]
pub struct AdoptionView {
    /// Every TCP group, and whether it adopts on its own (`--adopt`).
    pub groups: Vec<(SocketAddr, bool)>,
    /// Cookies of the sockets of registered and adopted workers. (A slot taken over from an
    /// earlier daemon is adoptable: adopting its socket takes it back in place.)
    pub slotted: HashSet<u64>,
    /// Adopted sockets by cookie: the pid shown for each.
    pub adopted: HashMap<u64, u32>,
}

impl Registry {
    pub fn adoption_view(&self) -> AdoptionView {
        let mut view = AdoptionView::default();
        for entry in &self.groups {
            // Adoption takes TCP listeners; a UDP group's servers spawn or register.
            if entry.protocol == reuseport_steer::Protocol::Tcp {
                view.groups.push((entry.listen, entry.adopt));
            }
            view.slotted
                .extend(entry.workers.values().map(|w| w.cookie));
            view.adopted.extend(
                entry
                    .workers
                    .values()
                    .filter(|w| w.conn == ADOPTED)
                    .map(|w| (w.cookie, w.peer.pid)),
            );
        }
        view
    }

    /// The adopted socket `cookie` is accepted from by another process now (a respawned worker,
    /// a reload's new workers): the slot shows it, and its health is judged on it.
    pub fn follow(&mut self, cookie: u64, process: Process, uid: u32, name: String) {
        for entry in &mut self.groups {
            let Some((&slot, worker)) = entry
                .workers
                .iter_mut()
                .find(|(_, w)| w.cookie == cookie && w.conn == ADOPTED)
            else {
                continue;
            };
            info!(
                "{}: slot {slot} is accepted from by {name} (pid {}, uid {uid}) now, not {} (pid \
                 {})",
                entry.listen,
                process.pid(),
                worker.name,
                worker.peer.pid
            );
            worker.peer.pid = process.pid();
            worker.peer.uid = uid;
            worker.name = name;
            worker.process = Some(process);
            return;
        }
    }

    /// No server process holds the adopted socket `cookie` any more: its slot is freed and the
    /// daemon's copy closed at once (the socket closes with it, and its queue migrates).
    pub fn release(&mut self, cookie: u64) {
        for entry in &mut self.groups {
            let slots: Vec<u32> = entry
                .workers
                .iter()
                .filter(|(_, w)| w.cookie == cookie && w.conn == ADOPTED)
                .map(|(&slot, _)| slot)
                .collect();
            for slot in slots {
                if let Some(worker) = entry.workers.remove(&slot) {
                    info!(
                        "{}: no server holds the socket of slot {slot} ({}, pid {}) any more: \
                         released",
                        entry.listen, worker.name, worker.peer.pid
                    );
                    entry.leaving.push((slot, worker));
                }
            }
        }
        self.flush();
    }
}
