//! Per-slot health: from the connections the program sent to a slot and the depth of its
//! accept queue, tells whether its worker still accepts. A worker with connections waiting that
//! accepted nothing for `stuck_after` (or whose process is stopped) is stuck; it recovers once
//! it has accepted again and emptied its queue.

use std::time::{Duration, Instant, SystemTime};

/// What the daemon does with a stuck worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStuck {
    /// Take it out of the active set: no new connection until it recovers. The connections
    /// queued before detection wait for it.
    Skip,
    /// Also shut its listener down, so the queued connections migrate to healthy workers, and
    /// make the same socket listen again out of rotation until the worker runs again: servers
    /// keep accepting on their own descriptor (nginx, gunicorn, uvicorn are tested to).
    #[default]
    Evict,
}

impl std::str::FromStr for OnStuck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Self::Skip),
            "evict" => Ok(Self::Evict),
            _ => Err(format!("unknown --on-stuck {s:?}: expected skip or evict")),
        }
    }
}

impl std::fmt::Display for OnStuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Skip => "skip",
            Self::Evict => "evict",
        })
    }
}

/// How health is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub sample: Duration,
    pub stuck_after: Duration,
    pub on_stuck: OnStuck,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            sample: Duration::from_millis(5),
            stuck_after: Duration::from_millis(50),
            on_stuck: OnStuck::Evict,
        }
    }
}

/// When and why something happened to a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub at: SystemTime,
    pub why: String,
}

/// The outcome of one observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    Stuck(String),
    Recovered,
}

/// The health record of one slot.
#[derive(Debug)]
pub struct Health {
    /// Connections the worker has taken off its queue, as far as we know.
    accepted: Option<u64>,
    last_progress: Instant,
    /// Set while the slot is stuck.
    pub stuck: Option<Mark>,
    /// The queue seen at the last sample.
    pub waiting: u32,
    /// When this record started (the worker registered, or came back after an eviction).
    pub since: Instant,
}

impl Health {
    pub fn new(now: Instant) -> Self {
        Self {
            accepted: None,
            last_progress: now,
            stuck: None,
            waiting: 0,
            since: now,
        }
    }

    /// One sample: `dispatched` connections were sent to the slot so far and `waiting` sit in
    /// its accept queue. `stopped` is asked (it reads /proc) only once the queue has not moved
    /// for `check_stopped_after`, so a queue caught between two accepts costs nothing.
    pub fn observe(
        &mut self,
        now: Instant,
        dispatched: u64,
        waiting: u32,
        stuck_after: Duration,
        check_stopped_after: Duration,
        stopped: impl FnOnce() -> bool,
    ) -> Verdict {
        let accepted = dispatched.saturating_sub(u64::from(waiting));
        let progressed = self.accepted.is_some_and(|before| accepted > before);
        self.accepted = Some(
            self.accepted
                .map_or(accepted, |before| before.max(accepted)),
        );
        self.waiting = waiting;
        if waiting == 0 || progressed {
            self.last_progress = now;
        }
        let idle = now.saturating_duration_since(self.last_progress);
        if self.stuck.is_some() {
            return if progressed && waiting == 0 {
                Verdict::Recovered
            } else {
                Verdict::Fine
            };
        }
        if waiting == 0 || idle.is_zero() {
            return Verdict::Fine;
        }
        if idle >= stuck_after {
            return Verdict::Stuck(format!(
                "{waiting} connections queued, none accepted for {} ms",
                idle.as_millis()
            ));
        }
        if idle >= check_stopped_after && stopped() {
            return Verdict::Stuck(format!("process stopped with {waiting} connections queued"));
        }
        Verdict::Fine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUCK: Duration = Duration::from_millis(50);
    const CHECK: Duration = Duration::from_millis(10);

    #[test]
    fn a_worker_that_accepts_is_fine() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(5 * i);
            // Always a couple waiting, but the count of accepted ones grows.
            assert_eq!(
                h.observe(now, 10 * i + 2, 2, STUCK, CHECK, || false),
                Verdict::Fine
            );
        }
    }

    #[test]
    fn a_queue_that_does_not_move_is_stuck_after_the_limit() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        assert_eq!(h.observe(t0, 10, 0, STUCK, CHECK, || false), Verdict::Fine);
        let mut verdict = Verdict::Fine;
        let mut at = 0;
        for i in 1..=20u64 {
            verdict = h.observe(
                t0 + Duration::from_millis(5 * i),
                10 + i,
                i as u32,
                STUCK,
                CHECK,
                || false,
            );
            if verdict != Verdict::Fine {
                at = 5 * i;
                break;
            }
        }
        assert!(matches!(verdict, Verdict::Stuck(_)), "{verdict:?}");
        assert_eq!(at, 50);
    }

    #[test]
    fn a_stopped_process_is_stuck_at_once() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        h.observe(t0, 10, 0, STUCK, CHECK, || true);
        let queued = h.observe(t0 + Duration::from_millis(5), 11, 1, STUCK, CHECK, || true);
        assert_eq!(
            queued,
            Verdict::Fine,
            "one sample of a full queue is not enough"
        );
        let v = h.observe(t0 + Duration::from_millis(10), 11, 1, STUCK, CHECK, || true);
        assert!(
            matches!(v, Verdict::Stuck(ref why) if why.contains("stopped")),
            "{v:?}"
        );
    }

    #[test]
    fn recovery_needs_progress_and_an_empty_queue() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        h.observe(t0, 10, 0, STUCK, CHECK, || false);
        h.stuck = Some(Mark {
            at: SystemTime::now(),
            why: "test".into(),
        });
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(
            h.observe(ms(5), 13, 3, STUCK, CHECK, || false),
            Verdict::Fine
        );
        // Accepting, but not empty yet.
        assert_eq!(
            h.observe(ms(10), 13, 1, STUCK, CHECK, || false),
            Verdict::Fine
        );
        assert_eq!(
            h.observe(ms(15), 13, 0, STUCK, CHECK, || false),
            Verdict::Recovered
        );
    }
}
