//! Workers that publish their own counters (`counters` request, docs/protocol.md), and the
//! sampled part of each slot's load given the slot's live signal
//! ([`reuseport_steer::signals::Signal`]): what the program adds itself is left out of the
//! `LOAD` word, so nothing counts twice.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use reuseport_steer::{
    diag::Queue,
    signals::{Published, Signal, WorkerMap},
    Group,
};
use reuseport_worker::ErrorCode;

use super::{load::load, workers::Worker, ConnId, Refusal, Registry};

/// How long a worker with counters has been busy with the same requests: in flight, and none
/// finished since; and what its counters said when sock_diag last found its queue empty.
#[derive(Debug, Default)]
pub(super) struct Busy {
    finished: u64,
    since: Option<Instant>,
    /// (dispatched to the slot, accepted by the worker), read just before the last dump.
    before_dump: Option<(u64, u64)>,
    /// `before_dump` of the last dump that found the queue empty.
    empty_at: Option<(u64, u64)>,
}

impl Busy {
    /// The last dump found `waiting` connections queued.
    pub(super) fn dumped(&mut self, waiting: u32) {
        self.empty_at = if waiting == 0 { self.before_dump } else { None };
    }

    /// Takes in what the worker published, as of `now`, and returns since when it has been busy.
    fn observe(&mut self, published: Published, now: Instant) -> Option<Instant> {
        if published.inflight == 0 {
            self.since = None;
        } else if self.since.is_none() || published.finished != self.finished {
            self.since = Some(now);
        }
        self.finished = published.finished;
        self.since
    }
}

impl Registry {
    /// A `counters` request on `conn`: gives its worker in `slot` (or its only worker) the
    /// map `map`, which the program reads from then on. Returns the slot.
    pub fn give_counters(
        &mut self,
        conn: ConnId,
        slot: Option<u32>,
        map: Arc<WorkerMap>,
    ) -> Result<u32, Refusal> {
        let mut mine = self.groups.iter_mut().enumerate().flat_map(|(g, entry)| {
            entry
                .workers
                .iter()
                .filter(|(_, w)| w.conn == conn)
                .map(move |(&s, _)| (g, s))
        });
        let (g, slot) = match slot {
            Some(wanted) => mine.find(|&(_, s)| s == wanted).ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NotRegistered,
                    format!(
                        "slot {wanted} holds no worker registered on this connection: a worker \
                         gets the counters of its own slot only"
                    ),
                )
            })?,
            None => {
                let first = mine.next();
                match (first, mine.next()) {
                    (Some(only), None) => only,
                    (None, _) => {
                        return Err(Refusal::new(
                            ErrorCode::NotRegistered,
                            "register first: counters belong to a registered worker",
                        ))
                    }
                    (Some(_), Some(_)) => {
                        return Err(Refusal::new(
                            ErrorCode::BadRequest,
                            "this connection holds several workers: name the slot",
                        ))
                    }
                }
            }
        };
        let entry = &mut self.groups[g];
        entry
            .group
            .put_worker_map(slot, map)
            .map_err(Refusal::from)?;
        if let Some(worker) = entry.workers.get_mut(&slot) {
            worker.busy = Busy::default();
        }
        Ok(slot)
    }
}

impl Registry {
    /// Whether every worker's queue is empty now, by its own counters: since a dump found it
    /// empty, the program dispatched no more connections to its slot than the worker accepted.
    /// Only workers that publish counters and count their accepts can tell; with any other,
    /// sock_diag is asked. (Counters read just before a dump may trail it by an accept, so a
    /// queue can hide one connection until the next dump, at most `MAX_SKIPPED` samples on.)
    pub(super) fn queues_known_empty(&self) -> bool {
        self.groups.iter().all(|g| {
            g.workers.iter().all(|(&slot, w)| {
                let (Signal::Worker(map), Some((d0, a0))) = (g.group.signal(slot), w.busy.empty_at)
                else {
                    return false;
                };
                let dispatched = g.group.dispatched(slot).saturating_sub(d0);
                let accepted = map.read().accepted.saturating_sub(a0);
                dispatched <= accepted
            })
        })
    }

    /// Reads every publishing worker's counters before a dump.
    pub(super) fn before_dump(&mut self) {
        for g in &mut self.groups {
            for (&slot, w) in &mut g.workers {
                w.busy.before_dump = match g.group.signal(slot) {
                    Signal::Worker(map) => Some((g.group.dispatched(slot), map.read().accepted)),
                    _ => None,
                };
            }
        }
    }

    /// The queues of a sample that needs no dump: every one empty.
    pub(super) fn empty_queues(&self, queues: &mut HashMap<u64, Queue>) {
        for g in &self.groups {
            for w in g.workers.values() {
                queues.insert(
                    w.cookie,
                    Queue {
                        waiting: 0,
                        backlog: w.backlog,
                    },
                );
            }
        }
    }

    /// How often the monitor samples: every `--sample-ms` while the policies' loads depend on
    /// the samples; once every slot's load has a live signal in the kernel (its worker's
    /// counters, or open connections counted), the samples only judge health and feed
    /// `status`, and a quarter of `--stuck-ms` is soon enough (never more often than
    /// `--sample-ms`, never less often than 4 × `--sample-ms`, so `status` stays fresh).
    /// With the defaults: 12.5 ms instead of 5.
    pub fn sample_period(&self) -> Duration {
        let sample = self.health.sample;
        let live = self.groups.iter().all(|g| {
            g.group.counts_open()
                || g.workers
                    .keys()
                    .all(|&slot| matches!(g.group.signal(slot), Signal::Worker(_)))
        });
        if live {
            sample.max((self.health.stuck_after / 4).min(sample * 4))
        } else {
            sample
        }
    }
}

/// What the daemon writes into the slot's `LOAD` word: the queue it sampled, and one per sample
/// period the worker has been busy with the same requests; plus, for a worker with no live
/// signal, the in-flight count of its `load` reports. The program adds the live part itself.
pub(super) fn sampled_load(
    group: &Group,
    slot: u32,
    worker: &mut Worker,
    waiting: u32,
    now: Instant,
    sample: Duration,
) -> u64 {
    match group.signal(slot) {
        Signal::Worker(map) => {
            let since = worker.busy.observe(map.read(), now);
            load(waiting, 0, since, now, sample)
        }
        // Open connections include the queued and the served ones.
        Signal::Open => load(0, 0, worker.load.busy_since(), now, sample),
        Signal::Sampled => worker.load.load(waiting, now, sample),
    }
}

/// Requests in flight on the slot, from the worker's counters when it publishes them, else
/// from its `load` reports.
pub(super) fn inflight(group: &Group, slot: u32, worker: &Worker) -> u64 {
    match group.signal(slot) {
        Signal::Worker(map) => map.read().inflight,
        _ => u64::from(worker.load.inflight()),
    }
}

/// A counters map for a new `counters` request (created off the owner: a quick system call).
pub fn new_worker_map() -> Result<Arc<WorkerMap>, Refusal> {
    WorkerMap::create().map(Arc::new).map_err(Refusal::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_counts_from_the_last_finished_request() {
        let t0 = Instant::now();
        let mut busy = Busy::default();
        let p = |inflight, finished| Published {
            inflight,
            finished,
            ..Published::default()
        };
        assert_eq!(busy.observe(p(0, 0), t0), None);
        assert_eq!(busy.observe(p(1, 0), t0), Some(t0));
        let t1 = t0 + Duration::from_millis(7);
        assert_eq!(busy.observe(p(1, 0), t1), Some(t0), "the same request");
        assert_eq!(busy.observe(p(1, 1), t1), Some(t1), "a new one");
        assert_eq!(busy.observe(p(0, 2), t1), None);
    }
}
