//! Which processes hold a listening socket, and which of them accepts from it, from /proc: for
//! adopting running servers. A socket is named by its inode (`socket:[INODE]` links in
//! /proc/PID/fd, the inode sock_diag reports). A prefork server's master and workers may all
//! hold a listener while one worker accepts from it: that one has it in its epoll set (the
//! `tfd: ... ino:HEX` lines of /proc/PID/fdinfo of an eventpoll descriptor). A server that
//! polls without epoll (select, poll, a blocking accept) shows no such line: then the holder
//! that none of the other holders descends from (the worker, not its master) is taken.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::{fd::RawFd, unix::fs::MetadataExt},
};

/// One process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// The process's descriptor for the socket (its lowest, if several).
    pub fd: RawFd,
    /// The socket is in one of the process's epoll sets: it accepts from it.
    pub polls: bool,
    /// Another of the wanted sockets is in its epoll sets, this one not: it accepts from that
    /// one (an nginx worker holds every worker's listener).
    pub polls_another: bool,
    pub parent: u32,
}

/// The holders of each wanted socket, by inode.
pub type Holdings = HashMap<u64, Vec<Holder>>;

/// What one scan cost, for the log and the measurements.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanStats {
    /// Processes of the namespace whose descriptors were read.
    pub processes: usize,
    pub descriptors: usize,
    /// Processes whose descriptors could not be read (EACCES: no ptrace rights over them).
    pub unreadable: usize,
}

/// Finds the holders of the sockets `inodes` among every process of /proc in this process's
/// network namespace but `exclude` (the daemon, whose copies are not servers), or only among
/// `only` when given. Processes that exit meanwhile, or whose descriptors cannot be read, are
/// skipped. Reading every descriptor link is what a scan costs, so processes of other network
/// namespaces (other containers, which could only hold one of our sockets if it was passed to
/// them) are left out after one stat each.
pub fn scan(
    inodes: &HashSet<u64>,
    exclude: u32,
    only: Option<u32>,
) -> io::Result<(Holdings, ScanStats)> {
    let mut holdings = Holdings::new();
    let mut stats = ScanStats::default();
    if inodes.is_empty() {
        return Ok((holdings, stats));
    }
    let own_netns = fs::metadata("/proc/self/ns/net")?.ino();
    let pids: Vec<u32> = match only {
        Some(pid) => vec![pid],
        None => fs::read_dir("/proc")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
    };
    for pid in pids {
        if pid == exclude {
            continue;
        }
        if only.is_none()
            && fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() != own_netns)
        {
            continue;
        }
        stats.processes += 1;
        let entries = match fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(entries) => entries,
            Err(e) => {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    stats.unreadable += 1;
                }
                continue;
            }
        };
        let mut held: Vec<(u64, RawFd)> = Vec::new();
        let mut epolls: Vec<RawFd> = Vec::new();
        for entry in entries.flatten() {
            stats.descriptors += 1;
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let target = match fs::read_link(entry.path()) {
                Ok(target) => target,
                // Listing is allowed, reading the links needs ptrace rights: none to read.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    stats.unreadable += 1;
                    break;
                }
                Err(_) => continue,
            };
            let Some(target) = target.to_str() else {
                continue;
            };
            if let Some(inode) = socket_inode(target) {
                if inodes.contains(&inode) {
                    held.push((inode, fd));
                }
            } else if target == "anon_inode:[eventpoll]" {
                epolls.push(fd);
            }
        }
        if held.is_empty() {
            continue;
        }
        let mut polled = HashSet::new();
        for epoll in epolls {
            if let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}")) {
                polled.extend(polled_inodes(&info));
            }
        }
        let parent = crate::procs::parent(pid).unwrap_or(0);
        let polls_any = held.iter().any(|(inode, _)| polled.contains(inode));
        held.sort_unstable();
        held.dedup_by_key(|(inode, _)| *inode);
        for (inode, fd) in held {
            holdings.entry(inode).or_default().push(Holder {
                pid,
                fd,
                polls: polled.contains(&inode),
                polls_another: polls_any && !polled.contains(&inode),
                parent,
            });
        }
    }
    Ok((holdings, stats))
}

/// The holder that accepts from a socket: the only one with it in an epoll set (the lowest
/// pid when several are), else one that no other holder descends from and that accepts from no
/// other wanted socket (lowest pid first), else the lowest pid. `None` when nobody holds it.
pub fn acceptor(holders: &[Holder]) -> Option<&Holder> {
    let pollers = holders.iter().filter(|h| h.polls);
    let leaves = holders
        .iter()
        .filter(|h| !h.polls_another && !holders.iter().any(|other| other.parent == h.pid));
    pollers
        .min_by_key(|h| h.pid)
        .or_else(|| leaves.min_by_key(|h| h.pid))
        .or_else(|| holders.iter().min_by_key(|h| h.pid))
}

/// The inode of a `socket:[INODE]` link.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inodes (hexadecimal after `ino:`) of the `tfd:` lines of an epoll descriptor's fdinfo.
fn polled_inodes(fdinfo: &str) -> impl Iterator<Item = u64> + '_ {
    fdinfo
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .filter_map(|l| {
            let hex = l.split_whitespace().find_map(|f| f.strip_prefix("ino:"))?;
            u64::from_str_radix(hex, 16).ok()
        })
}

/// The command name of `pid` (/proc/PID/comm), or `pid-PID` when it cannot be read.
pub fn command_name(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("pid-{pid}"))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd};

    use super::*;

    fn holder(pid: u32, parent: u32, polls: bool) -> Holder {
        Holder {
            pid,
            fd: 3,
            polls,
            polls_another: false,
            parent,
        }
    }

    #[test]
    fn epoll_lines_give_the_polled_inodes() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n\
                    tfd:        6 events:       19 data:                6  pos:0 ino:3b8a1 sdev:8\n\
                    tfd:        7 events:       19 data:                7  pos:0 ino:10 sdev:8\n";
        assert_eq!(polled_inodes(info).collect::<Vec<_>>(), [0x3b8a1, 0x10]);
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
    }

    #[test]
    fn the_acceptor_is_the_poller_else_the_worker_else_the_sole_holder() {
        // nginx: the master (10) and workers (11, 12) hold it; 12 polls it.
        let nginx = [
            holder(10, 1, false),
            holder(11, 10, false),
            holder(12, 10, true),
        ];
        assert_eq!(acceptor(&nginx).map(|h| h.pid), Some(12));
        // Its acceptor killed: not the worker that accepts from another socket, the master
        // until a new worker polls it.
        let mut respawning = [holder(10, 1, false), holder(11, 10, false)];
        respawning[1].polls_another = true;
        assert_eq!(acceptor(&respawning).map(|h| h.pid), Some(10));
        // gunicorn 20: the master and its worker hold it, the worker selects on it.
        let gunicorn = [holder(20, 1, false), holder(21, 20, false)];
        assert_eq!(acceptor(&gunicorn).map(|h| h.pid), Some(21));
        assert_eq!(acceptor(&gunicorn[..1]).map(|h| h.pid), Some(20));
        assert_eq!(acceptor(&[]), None);
    }

    #[test]
    fn a_scan_finds_this_process_holding_its_listener_and_its_epoll() -> io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let inode = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))?.ino();
        let me = std::process::id();
        let wanted = HashSet::from([inode]);
        let (found, _) = scan(&wanted, 0, Some(me))?;
        let holders = found.get(&inode).cloned().unwrap_or_default();
        assert_eq!(holders.len(), 1, "{found:?}");
        assert_eq!((holders[0].pid, holders[0].fd), (me, listener.as_raw_fd()));
        assert!(!holders[0].polls);

        // In an epoll set, it is polled.
        // SAFETY: a new epoll descriptor, owned below.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epoll >= 0);
        // SAFETY: it is ours.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(epoll) };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        // SAFETY: both descriptors are open; the event is read during the call only.
        let added = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                listener.as_raw_fd(),
                &mut event,
            )
        };
        assert_eq!(added, 0);
        let started = std::time::Instant::now();
        let (found, stats) = scan(&wanted, 0, None)?;
        // What a scan of this namespace costs (printed with --nocapture).
        eprintln!("scan: {stats:?} in {:?}", started.elapsed());
        let mine: Vec<_> = found[&inode].iter().filter(|h| h.pid == me).collect();
        assert!(mine.len() == 1 && mine[0].polls, "{found:?}");
        assert!(stats.processes > 1);
        // The excluded process is not a holder.
        let (found, _) = scan(&wanted, me, None)?;
        assert!(!found.contains_key(&inode), "{found:?}");
        Ok(())
    }
}
