//! Health of UDP workers. UDP has no accept queue: sock_diag reports the bytes in a socket's
//! receive queue instead, which stand in for the queue the health monitor and the load-aware
//! policies read.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use reuseport_steer::{pin, Protocol};

/// Where a group pins its state: a TCP group in the directory named after its address, as
/// ever; a UDP group beside it with a `udp-` prefix, so a TCP and a UDP group can share an
/// address.
pub(super) fn pin_dir(root: &Path, listen: SocketAddr, protocol: Protocol) -> PathBuf {
    let dir = pin::group_dir(root, listen);
    match (protocol, dir.file_name()) {
        (Protocol::Udp, Some(name)) => {
            dir.with_file_name(format!("udp-{}", name.to_string_lossy()))
        }
        _ => dir,
    }
}

/// What one datagram in the receive queue is taken to weigh: the kernel counts each skb's true
/// size (about 1 KiB for a small datagram on loopback), so bytes / 1 KiB is the number of
/// datagrams waiting, roughly. At least 1 while anything waits.
const DATAGRAM_BYTES: u32 = 1024;

/// A UDP worker's receive queue across samples.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ReceiveQueue {
    last_bytes: u32,
    last_dispatched: u64,
    /// Samples at which the worker was seen reading.
    reads: u64,
}

impl ReceiveQueue {
    /// One sample: `bytes` queued, `dispatched` datagrams sent to the slot so far, and
    /// `capacity` (the socket's receive buffer, asked only when needed). Returns (progress
    /// counter, datagrams waiting) in the terms
    /// [`Health::observe`](crate::daemon::health::Health::observe) takes (`dispatched`,
    /// `waiting`).
    ///
    /// The worker read since the last sample if its queue shrank, or if datagrams came and the
    /// queue did not grow while it had room. A full queue that stays the same size means the
    /// kernel drops what comes (the program still counts it sent), not that the worker reads:
    /// no progress then. So a queue that stays non-empty with no read seen for the stuck time
    /// is a stuck worker.
    pub(super) fn observe(
        &mut self,
        bytes: u32,
        dispatched: u64,
        capacity: impl FnOnce() -> u32,
    ) -> (u64, u32) {
        let came = dispatched > self.last_dispatched;
        let read = bytes < self.last_bytes
            || (came && bytes == self.last_bytes && bytes.saturating_mul(2) < capacity());
        if read {
            self.reads += 1;
        }
        self.last_bytes = bytes;
        self.last_dispatched = dispatched;
        let waiting = bytes.div_ceil(DATAGRAM_BYTES);
        (self.reads + u64::from(waiting), waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_count_as_progress() {
        let mut q = ReceiveQueue::default();
        let room = || 200_000;
        let accepted = |(dispatched, waiting): (u64, u32)| dispatched - u64::from(waiting);
        assert_eq!(q.observe(0, 0, room), (0, 0));
        assert_eq!(accepted(q.observe(4096, 4, room)), 0);
        assert_eq!(accepted(q.observe(8192, 8, room)), 0, "growing: no read");
        assert_eq!(
            accepted(q.observe(8192, 8, room)),
            0,
            "nothing came, nothing read"
        );
        assert_eq!(
            accepted(q.observe(8192, 12, room)),
            1,
            "came and read as much"
        );
        assert_eq!(accepted(q.observe(1, 12, room)), 2, "shrank");
        assert_eq!(
            q.observe(1, 12, room).1,
            1,
            "one byte is one datagram waiting"
        );
        // A full queue of the same size while datagrams come: dropped, not read.
        let mut full = ReceiveQueue::default();
        assert_eq!(accepted(full.observe(150_000, 100, room)), 0);
        assert_eq!(accepted(full.observe(150_000, 200, room)), 0);
    }
}
