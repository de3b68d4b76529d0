//! The `status` reply, rendered from the state: groups, workers, counters and events.

use std::time::SystemTime;

use log::warn;

use super::{counters::inflight, workers::ADOPTED, GroupEntry, Registry};
use reuseport_steer::signals::Signal;
use reuseport_worker::{protocol::WorkerState, EventStatus, GroupStatus, WorkerStatus};

impl Registry {
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups.iter().map(GroupEntry::status).collect()
    }
}

impl GroupEntry {
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
                let out = worker.and_then(|w| w.out.as_ref());
                let stuck = out
                    .map(|o| &o.mark)
                    .or_else(|| worker.and_then(|w| w.health.stuck.as_ref()));
                WorkerStatus {
                    slot: slot.index,
                    pid: worker.map_or(0, |w| w.peer.pid),
                    uid: worker.map_or(0, |w| w.peer.uid),
                    name: worker.map_or_else(String::new, |w| w.name.clone()),
                    state: if out.is_some() {
                        WorkerState::Evicted
                    } else {
                        slot.state.into()
                    },
                    weight: slot.weight,
                    selected: counters.map_or(0, |c| c.selected),
                    migrated: counters.map_or(0, |c| c.migrated),
                    inflight: worker.map_or(0, |w| {
                        u32::try_from(inflight(&self.group, slot.index, w)).unwrap_or(u32::MAX)
                    }),
                    open: self.group.open_connections(slot.index),
                    counters: matches!(self.group.signal(slot.index), Signal::Worker(_)),
                    queue: worker.map_or(0, |w| w.health.waiting),
                    load: self.group.slot_load(slot.index),
                    since: stuck.map(|m| unix_seconds(m.at)),
                    reason: stuck.map(|m| m.why.clone()),
                    adopted: worker.is_some_and(|w| w.conn == ADOPTED),
                }
            })
            .collect();
        workers.extend(self.evicted.iter().map(|e| WorkerStatus {
            slot: e.slot,
            pid: e.peer.pid,
            uid: e.peer.uid,
            name: e.name.clone(),
            state: WorkerState::Evicted,
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
                what: e.what,
                why: e.mark.why.clone(),
            })
            .collect();
        GroupStatus {
            proto: self.protocol,
            v6only: self.group.v6only().unwrap_or(false),
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
            ..GroupStatus::new(
                self.listen,
                self.group.policy(),
                self.group.on_empty(),
                self.group.mode(),
            )
        }
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
