//! TCP counters of this thread's network namespace (`/proc/net/netstat`): a bench cell whose SYNs
//! were dropped or retransmitted measured a one-second timer, not the program, and should say so;
//! a test's exact count of program runs allows one run more per SYN sent again.

use std::fs;

/// Where this thread's namespace exposes its counters (`/proc/self` would be the main thread's).
const NETSTAT: &str = "/proc/thread-self/net/netstat";

/// The counters that reveal a disturbed cell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// SYNs and SYN-ACKs retransmitted (each a 1 s timer: a stalled handshake).
    pub syn_retrans: u64,
    /// SYNs or ACKs a listener dropped (accept queue full, ...).
    pub listen_drops: u64,
    /// SYN cookies sent: then the program also runs on the handshake's last ACK.
    pub syncookies_sent: u64,
}

impl TcpCounters {
    /// Reads the counters; all zero if the file cannot be read (the figures are advisory).
    pub fn read() -> Self {
        fs::read_to_string(NETSTAT)
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// Parses the `TcpExt:` header and value lines.
    pub fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        let mut out = Self::default();
        while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            if !names.starts_with("TcpExt:") {
                continue;
            }
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                let value = value.parse().unwrap_or(0);
                match name {
                    "TCPSynRetrans" => out.syn_retrans = value,
                    "ListenDrops" => out.listen_drops = value,
                    "SyncookiesSent" => out.syncookies_sent = value,
                    _ => {}
                }
            }
        }
        out
    }

    pub fn since(self, earlier: Self) -> Self {
        Self {
            syn_retrans: self.syn_retrans.saturating_sub(earlier.syn_retrans),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
            syncookies_sent: self.syncookies_sent.saturating_sub(earlier.syncookies_sent),
        }
    }

    pub fn add(&mut self, other: Self) {
        self.syn_retrans += other.syn_retrans;
        self.listen_drops += other.listen_drops;
        self.syncookies_sent += other.syncookies_sent;
    }

    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} SYN/SYN-ACK retransmits, {} listen drops, {} SYN cookies",
            self.syn_retrans, self.listen_drops, self.syncookies_sent
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tcpext_block() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenDrops TCPSynRetrans\n\
                    TcpExt: 3 0 7 2\n\
                    IpExt: InNoRoutes InTruncatedPkts\n\
                    IpExt: 1 1\n";
        let c = TcpCounters::parse(text);
        assert_eq!(
            c,
            TcpCounters {
                syn_retrans: 2,
                listen_drops: 7,
                syncookies_sent: 3
            }
        );
        assert!(c.since(c).is_clean());
    }

    #[test]
    fn this_namespace_has_counters() {
        assert!(std::fs::read_to_string(NETSTAT)
            .unwrap()
            .contains("TCPSynRetrans"));
    }
}
