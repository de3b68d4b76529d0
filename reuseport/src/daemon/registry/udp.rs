//! Health of UDP workers. UDP has no accept queue: sock_diag reports the bytes in a socket's
//! receive queue instead, which stand in for the queue the health monitor and the load-aware
//! policies read.

/// What one memory unit of a datagram in the receive queue is taken to be: the kernel counts
/// each skb's true size (about 1 KiB for a small datagram on loopback), so bytes / 1 KiB is the
/// number of datagrams waiting, roughly. At least 1 while anything waits.
const DATAGRAM_BYTES: u32 = 1024;

/// A UDP worker's receive queue across samples.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ReceiveQueue {
    last_bytes: u32,
    /// Samples at which the queue was found shorter than at the one before: the worker read.
    drained: u64,
}

impl ReceiveQueue {
    /// One sample of `bytes` queued; returns (progress counter, datagrams waiting) in the
    /// terms [`Health::observe`](crate::daemon::health::Health::observe) takes (`dispatched`,
    /// `waiting`): a worker that reads makes its queue shrink now and then, one that does not
    /// only lets it grow (until full, when the kernel drops), so a queue that stays non-empty
    /// without ever shrinking for the stuck time is a stuck worker.
    pub(super) fn observe(&mut self, bytes: u32) -> (u64, u32) {
        if bytes < self.last_bytes {
            self.drained += 1;
        }
        self.last_bytes = bytes;
        let waiting = bytes.div_ceil(DATAGRAM_BYTES);
        (self.drained + u64::from(waiting), waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shrinking_queue_counts_as_progress() {
        let mut q = ReceiveQueue::default();
        let accepted = |(dispatched, waiting): (u64, u32)| dispatched - u64::from(waiting);
        assert_eq!(q.observe(0), (0, 0));
        assert_eq!(accepted(q.observe(4096)), 0);
        assert_eq!(accepted(q.observe(8192)), 0, "growing: no progress");
        assert_eq!(accepted(q.observe(8192)), 0, "full: no progress");
        assert_eq!(accepted(q.observe(1)), 1, "shrank: progress");
        assert_eq!(q.observe(1).1, 1, "one byte is one datagram waiting");
    }
}
