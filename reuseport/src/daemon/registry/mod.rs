//! The daemon's state: one [`Group`] per `--listen` address and the workers registered in it.
//! One task owns it ([`super::owner`]): every control request ends up as one call on it, one
//! at a time, with no lock.
//!
//! By job: [`routing`] decides which group a socket or a request means, [`workers`] registers
//! and unregisters workers, [`monitor`] samples their health and reacts, [`load`] is the load
//! formula, [`status`] renders the `status` reply.

mod adopted;
mod counters;
mod experiments;
mod load;
mod monitor;
mod reconfigure;
mod routing;
mod status;
mod udp;
mod workers;

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
};

use log::{info, warn};

use super::{
    access::{self, Actor, SlotAction},
    health::HealthConfig,
    refusal::Refusal,
};
use reuseport_steer::{
    pin, AttachMode, Error, Group, GroupOptions, OnEmpty, Policy, Protocol, SlotState,
};
use reuseport_worker::protocol::GroupRef;

pub use adopted::AdoptionView;
pub use counters::new_worker_map;
pub use load::LoadCell;
pub use workers::{ConnId, Joined, NewWorker, Peer, Registered, TakeOver, ADOPTED};

use monitor::{Event, Quiet};
use workers::{Evicted, Worker};

/// One group as configured (`--listen` and the flags, or a `[[group]]` of the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub listen: SocketAddr,
    /// TCP (listeners, per connection) or UDP (bound datagram sockets, per datagram).
    pub protocol: Protocol,
    /// UDP groups: how long the flow table keeps an idle flow on its slot; `None`: 30 s. Zero
    /// turns the flow table off (each datagram steered by the policy alone).
    pub flow_idle: Option<std::time::Duration>,
    pub mode: AttachMode,
    /// `None`: keep the pinned group's policy, or round-robin for a new group.
    pub policy: Option<Policy>,
    pub on_empty: OnEmpty,
    /// IPv6 groups: IPv6-only (every socket sets IPV6_V6ONLY=1) rather than dual-stack (the
    /// Linux default, IPv4 clients too). The kernel keeps the two kinds in separate reuseport
    /// groups, so a socket of the other kind is refused. Ignored for IPv4 groups.
    pub v6only: bool,
    /// Weights by worker name, applied when a worker of that name registers (over the weight
    /// it asks for: the operator decides) and on reload.
    pub weights: BTreeMap<String, u32>,
    /// Adopt the SO_REUSEPORT listeners running servers hold on the address (`--adopt`).
    pub adopt: bool,
}

/// Where the groups keep their state.
#[derive(Clone, Debug, Default)]
pub struct Pins {
    /// Pin the maps under this directory (one subdirectory per group).
    pub root: Option<std::path::PathBuf>,
    /// Discard pinned state instead of taking it over.
    pub fresh: bool,
}

struct GroupEntry {
    listen: SocketAddr,
    /// The protocol every socket of the group must have.
    protocol: Protocol,
    group: Group,
    /// The configured weights by worker name.
    weights: BTreeMap<String, u32>,
    workers: BTreeMap<u32, Worker>,
    /// Workers that left (connection closed, listener shut down) whose slots are not freed
    /// yet: [`Registry::flush`] frees them all with one publication. Their sockets stay open
    /// until then, so the program never picks a slot whose socket is gone.
    leaving: Vec<(u32, Worker)>,
    evicted: Vec<Evicted>,
    events: VecDeque<Event>,
    stuck_events: u64,
    /// Connections whose listener was drained with `--close` and could not listen again: the
    /// next listener registered on the same connection starts draining too. (A connection,
    /// not a pid: a pid may be another process's by then.)
    closed_conns: Vec<ConnId>,
    /// Adopt the listeners running servers hold on the address (see [`crate::daemon::adoption`]).
    adopt: bool,
    /// The group's `trace` clients, from the first one on.
    trace: Option<std::sync::Arc<super::trace::TraceHub>>,
}

pub struct Registry {
    groups: Vec<GroupEntry>,
    health: HealthConfig,
    /// Where groups added by a reload pin their state.
    pins: Pins,
    /// What the last full sample saw, to skip the next when nothing can have changed.
    quiet: Quiet,
}

impl Registry {
    /// Loads one program per configured group, taking over the pinned state of an earlier
    /// daemon under the pin root (unless `fresh`). Nothing is attached until a worker
    /// registers: the group only exists once a worker has bound its socket.
    pub fn new(groups: &[GroupConfig], pins: &Pins, health: HealthConfig) -> Result<Self, Error> {
        let groups = groups
            .iter()
            .map(|config| GroupEntry::load(config, pins))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            groups,
            health,
            pins: pins.clone(),
            quiet: Quiet::default(),
        })
    }

    /// Frees the slots of every worker that left since the last call, with one publication
    /// per group, then closes the daemon's copies of their sockets.
    pub fn flush(&mut self) {
        for entry in &mut self.groups {
            if entry.leaving.is_empty() {
                continue;
            }
            let leaving = std::mem::take(&mut entry.leaving);
            // A slot may have been freed (socket closed) and reused meanwhile.
            let slots: Vec<u32> = leaving
                .iter()
                .filter(|(slot, w)| entry.group.slot_of_cookie(w.cookie) == Some(*slot))
                .map(|&(slot, _)| slot)
                .collect();
            if let Err(e) = entry.group.remove_all(&slots) {
                warn!("{}: freeing {} slots: {e}", entry.listen, slots.len());
            }
            // Dropping them closes the daemon's copies, now that no slot points at them.
            drop(leaving);
        }
    }

    pub fn policy(&self, group: Option<&GroupRef>) -> Result<(SocketAddr, Policy), Refusal> {
        let entry = &self.groups[self.one_group(group)?];
        Ok((entry.listen, entry.group.policy()))
    }

    /// Sets the policy of one group, or of all of them when `group` is `None`.
    pub fn set_policy(&mut self, policy: Policy, group: Option<&GroupRef>) -> Result<(), Refusal> {
        let targets = match group {
            Some(_) => vec![self.one_group(group)?],
            None => (0..self.groups.len()).collect(),
        };
        for i in targets {
            let entry = &mut self.groups[i];
            // A built-in policy replaces a policy program too (docs/experiments.md).
            entry.group.remove_policy_program()?;
            entry.group.set_policy(policy)?;
            info!("{}: policy set to {policy}", entry.listen);
        }
        Ok(())
    }

    pub fn set_weight(
        &mut self,
        actor: Actor,
        slot: u32,
        weight: u32,
        group: Option<&GroupRef>,
    ) -> Result<(), Refusal> {
        let i = self.one_group(group)?;
        self.groups[i].may_act(actor, slot, SlotAction::Weight)?;
        let entry = &mut self.groups[i];
        entry.group.set_weight(slot, weight)?;
        info!(
            "{}: slot {slot} weight {weight} (uid {})",
            entry.listen, actor.uid
        );
        Ok(())
    }

    /// `drain` (to `Draining`) or `undrain` (to `Active`).
    pub fn set_state(
        &mut self,
        actor: Actor,
        slot: u32,
        state: SlotState,
        group: Option<&GroupRef>,
    ) -> Result<(), Refusal> {
        let i = self.one_group(group)?;
        let action = match state {
            SlotState::Active => SlotAction::Undrain,
            SlotState::Draining | SlotState::Stuck => SlotAction::Drain,
        };
        self.groups[i].may_act(actor, slot, action)?;
        let entry = &mut self.groups[i];
        entry.group.set_state(slot, state)?;
        if state == SlotState::Active {
            // Undrained (or put back by hand): a listener the daemon shut down and made listen
            // again is in rotation now.
            if let Some(w) = entry.workers.get_mut(&slot) {
                if w.out.take().is_some() {
                    w.health = super::health::Health::new(std::time::Instant::now());
                }
            }
        }
        info!(
            "{}: slot {slot} is now {state} (uid {})",
            entry.listen, actor.uid
        );
        Ok(())
    }

    /// Whether `conn` still holds a worker (registered, or listed as evicted or closed): such a
    /// connection is never closed for being idle.
    pub fn holds(&self, conn: ConnId) -> bool {
        self.groups.iter().any(|g| {
            g.workers.values().any(|w| w.conn == conn) || g.evicted.iter().any(|e| e.conn == conn)
        })
    }
}

impl GroupEntry {
    /// Whether `actor` may act on `slot`: its owner is the uid that registered the worker in
    /// it; a slot taken over from an earlier daemon has none until its worker registers again.
    /// An empty slot is left to the group's own refusal (`slot_empty`, `slot_out_of_range`).
    fn may_act(&self, actor: Actor, slot: u32, action: SlotAction) -> Result<(), Refusal> {
        if self.group.slot(slot).is_none() {
            return Ok(());
        }
        access::may_act(
            actor,
            slot,
            self.workers.get(&slot).map(|w| w.peer.uid),
            action,
        )
    }
}

/// The IPV6_V6ONLY every socket of the group has: `None` for IPv4. Only the unspecified
/// address `[::]` has two kinds, as configured; the kernel makes every socket bound to a
/// specific IPv6 address IPv6-only at bind() (a v4-mapped one stays dual-stack), whatever it
/// set, so there the kind follows from the address.
fn group_kind(listen: SocketAddr, v6only: bool) -> Option<bool> {
    match listen.ip() {
        std::net::IpAddr::V4(_) => None,
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => Some(v6only),
        std::net::IpAddr::V6(ip) => Some(ip.to_ipv4_mapped().is_none()),
    }
}

impl GroupEntry {
    /// Loads the group's program (taking over its pinned state, unless `fresh`).
    fn load(config: &GroupConfig, pins: &Pins) -> Result<Self, Error> {
        let listen = config.listen;
        let pin_dir = pins
            .root
            .as_deref()
            .map(|root| udp::pin_dir(root, listen, config.protocol));
        if let (true, Some(dir)) = (pins.fresh, &pin_dir) {
            // Discarded before loading, so even pins of another layout (an older version)
            // cannot stop the daemon; the old program steers with its last state until a
            // worker registers and ours takes the group over.
            if dir.exists() {
                pin::unpin(dir)?;
                info!("{listen}: discarded the pinned state (--fresh)");
            }
        }
        let mut group = Group::load(GroupOptions {
            mode: config.mode,
            policy: config.policy.unwrap_or_default(),
            on_empty: config.on_empty,
            pin: pin_dir,
            v6only: group_kind(listen, config.v6only),
        })?;
        if let Some(idle) = config.flow_idle {
            group.set_flow_idle(idle)?;
        }
        if group.adopted() {
            if let Some(policy) = config.policy {
                group.set_policy(policy)?;
            }
            group.set_on_empty(config.on_empty)?;
            info!(
                "{listen}: took over the pinned state: {} slots, policy {}; workers \
                 register again on their own",
                group.slots().len(),
                group.policy()
            );
        }
        Ok(Self {
            listen,
            protocol: config.protocol,
            group,
            weights: config.weights.clone(),
            workers: BTreeMap::new(),
            leaving: Vec::new(),
            evicted: Vec::new(),
            events: VecDeque::new(),
            stuck_events: 0,
            closed_conns: Vec::new(),
            adopt: config.adopt,
            trace: None,
        })
    }
}
