//! A reload: the registry brought to a new configuration, changing only what differs. Every
//! change is a live map update (or a program loaded or detached), so connections keep flowing.

use log::{info, warn};

use super::{GroupConfig, GroupEntry, Pins, Refusal, Registry};
use crate::daemon::health::HealthConfig;
use reuseport_steer::pin;

impl Registry {
    /// Applies `groups` and `health`; returns what changed, one line each. The new groups are
    /// loaded first, the only step that can fail for good: a failure leaves everything as it
    /// was.
    pub fn reconfigure(
        &mut self,
        groups: &[GroupConfig],
        health: HealthConfig,
    ) -> Result<Vec<String>, Refusal> {
        let mut added = Vec::new();
        for config in groups
            .iter()
            .filter(|c| !self.groups.iter().any(|e| e.is(c)))
        {
            added.push(GroupEntry::load(config, &self.pins)?);
        }
        let mut changes = Vec::new();
        let (kept, removed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.groups)
            .into_iter()
            .partition(|e| groups.iter().any(|c| e.is(c)));
        self.groups = kept;
        for entry in removed {
            changes.push(entry.remove(&self.pins));
        }
        for config in groups {
            if let Some(entry) = self.groups.iter_mut().find(|e| e.is(config)) {
                changes.extend(entry.apply(config));
            }
        }
        for entry in added {
            changes.push(format!(
                "{}: group added (policy {}, mode {}, on-empty {}); workers can register",
                entry.listen,
                entry.group.policy(),
                entry.group.mode(),
                entry.group.on_empty()
            ));
            self.groups.push(entry);
        }
        if health != self.health {
            changes.push(format!(
                "health: sample every {} ms, stuck after {} ms, on-stuck {}",
                health.sample.as_millis(),
                health.stuck_after.as_millis(),
                health.on_stuck
            ));
            self.health = health;
        }
        for change in &changes {
            info!("reload: {change}");
        }
        Ok(changes)
    }

    /// How health is judged now (a reload may change it).
    pub fn health(&self) -> HealthConfig {
        self.health
    }
}

impl GroupEntry {
    /// Whether `config` describes this group: same address and protocol.
    fn is(&self, config: &GroupConfig) -> bool {
        self.listen == config.listen && self.protocol == config.protocol
    }

    /// A group that left the configuration: its program is detached, so the kernel hashes
    /// over the group's sockets again; its workers are no longer registered (they keep
    /// serving, and their control connections stay open); its pins are removed, so a restart
    /// does not take it back.
    fn remove(mut self, pins: &Pins) -> String {
        let listen = self.listen;
        let socket = self.workers.values().map(|w| &w.socket).next();
        let detached = match socket {
            Some(socket) => match self.group.detach(socket) {
                Ok(()) => "program detached, the kernel hashes again".to_owned(),
                Err(e) => {
                    warn!("{listen}: detaching the program: {e}");
                    format!("detaching the program failed ({e})")
                }
            },
            None if self.group.occupied_count() > 0 => {
                "no registered worker to detach the program through: it steers between the \
                 taken-over sockets until they close"
                    .to_owned()
            }
            None => "no worker had joined".to_owned(),
        };
        if let Some(root) = &pins.root {
            if let Err(e) = pin::unpin(&super::udp::pin_dir(root, listen, self.protocol)) {
                warn!("{listen}: removing the pins: {e}");
            }
        }
        let workers = self.workers.len();
        // Dropping the entry closes the daemon's copies of the workers' sockets and the maps.
        format!("{listen}: group removed ({workers} workers unregistered; {detached})")
    }

    /// Brings an existing group to `config`; what changed, one line each.
    fn apply(&mut self, config: &GroupConfig) -> Vec<String> {
        let listen = self.listen;
        let mut changes = Vec::new();
        if config.mode != self.group.mode() {
            changes.push(format!(
                "{listen}: mode stays {} (the file says {}): a mode change needs a restart",
                self.group.mode(),
                config.mode
            ));
        }
        if listen.ip().is_unspecified()
            && listen.is_ipv6()
            && Some(config.v6only) != self.group.v6only()
        {
            changes.push(format!(
                "{listen}: stays {} (the file says {}): changing the kind of an IPv6 group needs \
                 a restart, and its workers' sockets made again",
                stack_name(self.group.v6only().unwrap_or(false)),
                stack_name(config.v6only)
            ));
        }
        if let Some(policy) = config.policy.filter(|&p| p != self.group.policy()) {
            changes.push(match self.group.set_policy(policy) {
                Ok(()) => format!("{listen}: policy {policy}"),
                Err(e) => format!("{listen}: error: setting the policy {policy}: {e}"),
            });
        }
        if config.on_empty != self.group.on_empty() {
            changes.push(match self.group.set_on_empty(config.on_empty) {
                Ok(()) => format!("{listen}: on-empty {}", config.on_empty),
                Err(e) => format!("{listen}: error: setting on-empty {}: {e}", config.on_empty),
            });
        }
        if config.adopt != self.adopt {
            self.adopt = config.adopt;
            changes.push(if config.adopt {
                format!("{listen}: adopts the listeners of running servers")
            } else {
                format!(
                    "{listen}: adopts no new listeners (the adopted ones stay until their \
                     servers close them)"
                )
            });
        }
        if let Some(idle) = config.flow_idle {
            if let Err(e) = self.group.set_flow_idle(idle) {
                changes.push(format!("{listen}: error: setting the flow idle time: {e}"));
            }
        }
        if config.weights != self.weights {
            self.weights = config.weights.clone();
        }
        let reweigh: Vec<(u32, u32, String)> = self
            .workers
            .iter()
            .filter_map(|(&slot, w)| {
                let want = *self.weights.get(&w.name)?;
                let now = self.group.slot(slot).map(|s| s.weight);
                (now != Some(want)).then(|| (slot, want, w.name.clone()))
            })
            .collect();
        if !reweigh.is_empty() {
            let pairs: Vec<(u32, u32)> = reweigh.iter().map(|&(s, w, _)| (s, w)).collect();
            match self.group.set_weights(&pairs) {
                Ok(()) => {
                    changes.extend(reweigh.iter().map(|(slot, w, name)| {
                        format!("{listen}: {name} (slot {slot}) weight {w}")
                    }))
                }
                Err(e) => changes.push(format!("{listen}: error: setting weights: {e}")),
            }
        }
        changes
    }
}

/// How the status and the log name the kind of an IPv6 group.
pub(super) fn stack_name(v6only: bool) -> &'static str {
    if v6only {
        "IPv6-only"
    } else {
        "dual-stack"
    }
}
