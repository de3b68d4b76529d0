//! The load `least-loaded` and `p2c` compare, and the `load` reports it is made of.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::{counters::sampled_load, ConnId, Registry};

/// A connection's latest `load` report. Its session is the only writer and records every
/// report here, without a message; the owner reads it when sampling, and when told that a new
/// report came. At most one such notice per connection waits for the owner at any time, so a
/// worker that floods `load` lines costs its own session, not the other clients.
#[derive(Debug)]
pub struct LoadCell {
    start: Instant,
    inflight: AtomicU32,
    /// Microseconds after `start`, plus one, since when the worker has had requests in flight
    /// without a break; 0 when it has none.
    busy_since: AtomicU64,
    /// A notice of this cell is queued for the owner.
    noticed: AtomicBool,
}

impl Default for LoadCell {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            inflight: AtomicU32::new(0),
            busy_since: AtomicU64::new(0),
            noticed: AtomicBool::new(false),
        }
    }
}

impl LoadCell {
    /// Records a report (the session sees every one, so it tracks the busy period exactly).
    /// True when the owner must be sent a notice: none is queued yet.
    pub fn report(&self, inflight: u32) -> bool {
        if inflight == 0 {
            self.busy_since.store(0, Ordering::Relaxed);
        } else if self.busy_since.load(Ordering::Relaxed) == 0 {
            let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
            self.busy_since.store(micros + 1, Ordering::Relaxed);
        }
        self.inflight.store(inflight, Ordering::Release);
        !self.noticed.swap(true, Ordering::AcqRel)
    }

    /// The owner took the notice: the next report sends a new one.
    fn take_notice(&self) {
        self.noticed.store(false, Ordering::Release);
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn busy_since(&self) -> Option<Instant> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(self.start + Duration::from_micros(micros - 1)),
        }
    }

    /// The load of a worker with `waiting` connections queued, as of `now`.
    pub fn load(&self, waiting: u32, now: Instant, sample: Duration) -> u64 {
        load(waiting, self.inflight(), self.busy_since(), now, sample)
    }
}

/// A slot's load as `least-loaded` and `p2c` compare it: connections waiting, requests in
/// flight, and one more per sample period the worker has been busy without a break. The last
/// term tells a worker stuck in one long request (its load keeps growing) from a fast one that
/// happens to be caught with a request or two in hand.
pub fn load(
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

impl Registry {
    /// A new `load` report on `conn`: shows the program its workers' new load at once rather
    /// than at the next sample.
    pub fn apply_load(&mut self, conn: ConnId, cell: &LoadCell) {
        cell.take_notice();
        let now = Instant::now();
        let sample = self.health.sample;
        for entry in &mut self.groups {
            let mut changed = false;
            for (&slot, worker) in entry.workers.iter_mut().filter(|(_, w)| w.conn == conn) {
                let waiting = worker.health.waiting;
                let load = sampled_load(&entry.group, slot, worker, waiting, now, sample);
                entry.group.set_load(slot, load);
                changed = true;
            }
            if changed {
                entry.group.publish_least_loaded();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Duration = Duration::from_millis(5);

    #[test]
    fn load_adds_one_per_sample_period_busy() {
        let t0 = Instant::now();
        assert_eq!(load(2, 1, None, t0, SAMPLE), 3);
        let now = t0 + Duration::from_millis(12);
        assert_eq!(load(0, 1, Some(t0), now, SAMPLE), 3);
    }

    #[test]
    fn a_cell_tracks_the_busy_period_and_sends_one_notice() {
        let cell = LoadCell::default();
        assert!(cell.report(1), "the first report needs a notice");
        assert!(!cell.report(2), "one is queued already");
        let since = cell.busy_since();
        assert!(since.is_some());
        assert_eq!(cell.inflight(), 2);
        cell.take_notice();
        assert!(cell.report(0));
        assert_eq!((cell.inflight(), cell.busy_since()), (0, None));
        cell.report(1);
        assert!(cell.busy_since() >= since);
    }
}
