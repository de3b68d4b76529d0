//! Adoption of running servers (`run --adopt`, `adopt = true` in a group, `reuseport adopt
//! PID`): the daemon finds the SO_REUSEPORT listeners that servers hold on a group's address,
//! takes a copy of each (pidfd_getfd) and puts it in a slot shown with the process that accepts
//! from it, then follows them: new listeners are adopted, a socket's new acceptor (a respawned
//! worker) is followed, and a socket no server holds any more is released at once, so its queue
//! migrates instead of waiting in an orphan.
//!
//! All of it runs here, off the owner's thread: a sock_diag dump every [`TICK`] (cheap: the
//! listeners of the namespace), and the /proc scan that finds holders ([`holders::scan`],
//! which reads every process's descriptors) only when the dump shows a change, when a
//! followed acceptor exits (its pidfd turns readable, which wakes the scanner at once), for
//! [`SETTLE`] after either (servers take a moment to start their workers), and else every
//! [`SLOW`]. The owner gets the outcome as ordinary registrations and two small calls.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    os::fd::AsFd,
    sync::Arc,
    time::{Duration, Instant},
};

use log::{debug, info, warn};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, oneshot, Notify},
    task::JoinHandle,
};

use super::{
    owner::{Gone, Handle},
    refusal::Refusal,
    registry::{AdoptionView, NewWorker, Peer, ADOPTED},
};
use reuseport_steer::{
    diag::{Listener, ListenerDiag},
    holders::{self, Holder, Holdings},
    pidfd::Process,
    procs, Family, SocketInfo,
};
use reuseport_worker::{protocol::SlotRef, ErrorCode};

/// How often the listeners are dumped and the followed acceptors checked.
const TICK: Duration = Duration::from_millis(50);
/// After a change, /proc is scanned at every tick for this long.
const SETTLE: Duration = Duration::from_secs(1);
/// Otherwise /proc is scanned this often, while anything is adopted or adoptable: for an
/// acceptor that changed with no exit nor new listener to tell (rare: a reload's old workers
/// exit, and that triggers a scan).
const SLOW: Duration = Duration::from_secs(5);

/// Sessions' side of the scanner: `adopt PID` requests.
#[derive(Clone)]
pub struct Adoption {
    tx: mpsc::Sender<Ask>,
}

/// What `adopt PID` did.
#[derive(Debug, Default)]
pub struct Adopted {
    pub slots: Vec<SlotRef>,
    /// Listeners of the process not adopted, and why, one sentence each.
    pub skipped: Vec<String>,
}

struct Ask {
    pid: u32,
    reply: oneshot::Sender<Result<Adopted, Refusal>>,
}

impl Adoption {
    /// Adopts the listeners `pid` holds on the daemon's groups (any group, adopting or not).
    pub async fn adopt(&self, pid: u32) -> Result<Adopted, Refusal> {
        let stopping = || Refusal::new(ErrorCode::Io, "the daemon is stopping");
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Ask { pid, reply })
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }
}

/// Starts the scanner on the current runtime.
pub fn spawn(owner: Handle, allowed: Vec<u32>) -> std::io::Result<Adoption> {
    let (tx, rx) = mpsc::channel(16);
    let scanner = Scanner {
        owner,
        own_uid: nix::unistd::geteuid().as_raw(),
        own_pid: std::process::id(),
        allowed,
        diag: Some(ListenerDiag::new()?),
        seen: Vec::new(),
        acceptors: HashMap::new(),
        exits: Arc::new(Notify::new()),
        warned: HashSet::new(),
        unlisted: HashSet::new(),
        settle_until: Instant::now(),
        last_scan: Instant::now(),
    };
    tokio::spawn(scanner.run(rx));
    Ok(Adoption { tx })
}

struct Scanner {
    owner: Handle,
    own_uid: u32,
    own_pid: u32,
    /// `--allow-uid`: uids whose sockets are adopted besides the daemon's.
    allowed: Vec<u32>,
    /// Lent to the blocking pool for each dump.
    diag: Option<ListenerDiag>,
    /// Cookies of the watched listeners at the last dump, sorted: a change triggers a scan.
    seen: Vec<u64>,
    /// The acceptor of each adopted socket, by cookie: its pidfd tells an exit at once.
    acceptors: HashMap<u64, Watched>,
    /// Woken when a watched acceptor exits.
    exits: Arc<Notify>,
    /// Sockets already logged as not adopted (one line each).
    warned: HashSet<u64>,
    /// Adopted sockets missing from the last dump: released if missing from the next one too
    /// (an eviction's shutdown hides a listener for the instant before it listens again).
    unlisted: HashSet<u64>,
    settle_until: Instant,
    last_scan: Instant,
}

/// A followed acceptor, and the task that wakes the scanner when it exits.
struct Watched {
    process: Process,
    task: Option<JoinHandle<()>>,
}

impl Watched {
    /// Watches `process`: its pidfd, registered with the runtime, wakes `exits` once it is
    /// readable. (Without a runtime reactor, the tick still finds the exit.)
    fn new(process: Process, exits: &Arc<Notify>) -> Self {
        let exits = exits.clone();
        let task = process
            .pidfd()
            .try_clone_to_owned()
            .ok()
            // SAFETY: the AsyncFd owns this descriptor, open until the AsyncFd drops it.
            .and_then(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok())
            .map(|fd| {
                tokio::spawn(async move {
                    if fd.readable().await.is_ok() {
                        exits.notify_one();
                    }
                })
            });
        Self { process, task }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One dump, and the holders of its listeners when /proc was scanned.
struct Found {
    listeners: Vec<Listener>,
    holdings: Option<Holdings>,
    /// Processes whose descriptors the scan could not read.
    unreadable: usize,
}

impl Scanner {
    async fn run(mut self, mut asks: mpsc::Receiver<Ask>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ask = asks.recv() => {
                    let Some(Ask { pid, reply }) = ask else { break };
                    let outcome = self.adopt_pid(pid).await;
                    let _ = reply.send(outcome);
                }
                _ = tick.tick() => {
                    if self.round().await.is_err() {
                        break;
                    }
                }
                () = self.exits.notified() => {
                    if self.round().await.is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// One tick: dump, maybe scan, and bring the adopted slots in line with what was found.
    async fn round(&mut self) -> Result<(), Gone> {
        let view = self.owner.call(|r| r.adoption_view()).await?;
        let watched: Vec<SocketAddr> = view
            .groups
            .iter()
            .filter(|(_, adopt)| *adopt)
            .map(|&(listen, _)| listen)
            .collect();
        if watched.is_empty() && view.adopted.is_empty() {
            self.acceptors.clear();
            self.seen.clear();
            return Ok(());
        }
        let now = Instant::now();
        let exited = view.adopted.iter().any(|(cookie, &pid)| {
            self.acceptors
                .get(cookie)
                .is_none_or(|w| w.pid() != pid || w.process.exited())
        });
        let force = exited || now < self.settle_until || now >= self.last_scan + SLOW;
        let adopted: HashSet<u64> = view.adopted.keys().copied().collect();
        let families = families(view.groups.iter().map(|&(listen, _)| listen));
        let seen = self.seen.clone();
        let wanted = move |l: &Listener| watched.contains(&l.local) || adopted.contains(&l.cookie);
        let Some(found) = self
            .dump_and_scan(families, wanted, move |cookies| force || *cookies != seen)
            .await
        else {
            return Ok(());
        };
        let mut cookies: Vec<u64> = found.listeners.iter().map(|l| l.cookie).collect();
        cookies.sort_unstable();
        let changed = cookies != self.seen;
        self.seen = cookies;
        let acted = self.reconcile(&view, found).await?;
        if changed || exited || acted {
            self.settle_until = Instant::now() + SETTLE;
        }
        Ok(())
    }

    /// Dumps the listeners of `families` that `wanted` keeps and, when `scan` says so given
    /// their sorted cookies, finds their holders: on the blocking pool, as /proc reads may
    /// take milliseconds. `None` if the dump failed (logged).
    async fn dump_and_scan(
        &mut self,
        families: Vec<Family>,
        wanted: impl Fn(&Listener) -> bool + Send + 'static,
        scan: impl FnOnce(&Vec<u64>) -> bool + Send + 'static,
    ) -> Option<Found> {
        let mut diag = self.diag.take()?;
        let own_pid = self.own_pid;
        let (diag, found) = tokio::task::spawn_blocking(move || {
            let mut listeners = Vec::new();
            for family in families {
                if let Err(e) = diag.listeners_named(family, &mut listeners) {
                    return (diag, Err(format!("sock_diag ({family}): {e}")));
                }
            }
            listeners.retain(|l| wanted(l));
            let mut cookies: Vec<u64> = listeners.iter().map(|l| l.cookie).collect();
            cookies.sort_unstable();
            if !scan(&cookies) {
                return (
                    diag,
                    Ok(Found {
                        listeners,
                        holdings: None,
                        unreadable: 0,
                    }),
                );
            }
            let inodes = listeners.iter().map(|l| l.inode).collect();
            let started = Instant::now();
            let (holdings, stats) = match holders::scan(&inodes, own_pid, None) {
                Ok((holdings, stats)) => {
                    debug!(
                        "adoption: /proc scanned for {} listeners: {} processes, {} \
                         descriptors in {} us",
                        listeners.len(),
                        stats.processes,
                        stats.descriptors,
                        started.elapsed().as_micros()
                    );
                    (holdings, stats)
                }
                Err(e) => return (diag, Err(format!("reading /proc: {e}"))),
            };
            (
                diag,
                Ok(Found {
                    listeners,
                    holdings: Some(holdings),
                    unreadable: stats.unreadable,
                }),
            )
        })
        .await
        .ok()?;
        self.diag = Some(diag);
        match found {
            Ok(found) => {
                if found.holdings.is_some() {
                    self.last_scan = Instant::now();
                }
                Some(found)
            }
            Err(e) => {
                warn!("adoption: {e}");
                None
            }
        }
    }

    /// Releases adopted sockets that closed or that no server holds, follows new acceptors,
    /// and adopts new listeners on adopting groups. Whether anything changed.
    async fn reconcile(&mut self, view: &AdoptionView, found: Found) -> Result<bool, Gone> {
        let mut acted = false;
        let listed: HashSet<u64> = found.listeners.iter().map(|l| l.cookie).collect();
        for (&cookie, _) in view.adopted.iter().filter(|(c, _)| !listed.contains(c)) {
            // Not listening any more (shut down by its server), twice in a row.
            if self.unlisted.insert(cookie) {
                continue;
            }
            self.owner.call(move |r| r.release(cookie)).await?;
            self.acceptors.remove(&cookie);
            acted = true;
        }
        self.unlisted
            .retain(|c| !listed.contains(c) && view.adopted.contains_key(c));
        let Some(holdings) = found.holdings else {
            return Ok(acted);
        };
        let mut adopted_now = HashSet::new();
        let adopting: HashSet<SocketAddr> = view
            .groups
            .iter()
            .filter(|(_, adopt)| *adopt)
            .map(|&(listen, _)| listen)
            .collect();
        for listener in &found.listeners {
            let cookie = listener.cookie;
            let acceptor = holdings
                .get(&listener.inode)
                .and_then(|h| holders::acceptor(h));
            match (view.adopted.get(&cookie), acceptor) {
                (Some(_), None) => {
                    self.owner.call(move |r| r.release(cookie)).await?;
                    self.acceptors.remove(&cookie);
                    acted = true;
                }
                (Some(&shown), Some(holder)) => {
                    let tracked = self.acceptors.get(&cookie).map(Watched::pid);
                    if holder.pid == shown && tracked == Some(shown) {
                        continue;
                    }
                    let (Ok(process), Ok(ours)) =
                        (Process::open(holder.pid), Process::open(holder.pid))
                    else {
                        continue;
                    };
                    self.acceptors
                        .insert(cookie, Watched::new(ours, &self.exits));
                    if holder.pid != shown {
                        let uid = procs::effective_uid(holder.pid).unwrap_or(listener.uid);
                        let name = holders::command_name(holder.pid);
                        self.owner
                            .call(move |r| r.follow(cookie, process, uid, name))
                            .await?;
                        acted = true;
                    }
                }
                (None, Some(holder))
                    if adopting.contains(&listener.local) && !view.slotted.contains(&cookie) =>
                {
                    match self.adopt_one(listener, holder).await? {
                        Ok(slot) => {
                            adopted_now.insert(cookie);
                            info!(
                                "adoption: {} adopted into slot {} of {}",
                                holders::command_name(holder.pid),
                                slot.slot,
                                slot.group
                            );
                            acted = true;
                        }
                        Err(why) => {
                            if self.warned.insert(cookie) {
                                warn!("adoption: {why}");
                            }
                        }
                    }
                }
                (None, None)
                    if found.unreadable > 0
                        && adopting.contains(&listener.local)
                        && !view.slotted.contains(&cookie)
                        && self.warned.insert(cookie) =>
                {
                    warn!(
                        "adoption: {}: found no process holding the listener (socket {}), and \
                         the descriptors of {} processes could not be read: the daemon needs \
                         ptrace rights over the servers it adopts (CAP_SYS_PTRACE)",
                        listener.local, listener.inode, found.unreadable
                    );
                }
                _ => {}
            }
        }
        // Only adopted sockets are watched (one a server registered itself is not any more).
        self.acceptors.retain(|c, _| {
            listed.contains(c) && (view.adopted.contains_key(c) || adopted_now.contains(c))
        });
        self.warned.retain(|c| listed.contains(c));
        Ok(acted)
    }

    /// Takes a copy of `listener` from `holder` and registers it as an adopted worker. `Err`:
    /// why it was not adopted (a sentence for the log or the reply).
    async fn adopt_one(
        &mut self,
        listener: &Listener,
        holder: &Holder,
    ) -> Result<Result<SlotRef, String>, Gone> {
        let (pid, local) = (holder.pid, listener.local);
        let name = holders::command_name(pid);
        if listener.uid != self.own_uid && !self.allowed.contains(&listener.uid) {
            return Ok(Err(format!(
                "{local}: the listener of {name} (pid {pid}) belongs to uid {uid}: not adopted; \
                 only the daemon's uid and --allow-uid uids are (start the daemon with \
                 --allow-uid {uid} to adopt it)",
                uid = listener.uid
            )));
        }
        let copied = Process::open(pid).and_then(|process| {
            let socket = process.copy_fd(holder.fd)?;
            Ok((process, socket, Process::open(pid)?))
        });
        let (process, socket, ours) = match copied {
            Ok(c) => c,
            Err(e) => {
                let hint = if e.raw_os_error() == Some(libc::EPERM) {
                    " (the daemon needs ptrace rights over the server: CAP_SYS_PTRACE)"
                } else {
                    ""
                };
                return Ok(Err(format!(
                    "{local}: copying descriptor {} of {name} (pid {pid}): {e}{hint}",
                    holder.fd
                )));
            }
        };
        let info = match SocketInfo::of(socket.as_fd()) {
            Ok(info) if info.cookie != listener.cookie => {
                return Ok(Err(format!(
                    "{local}: descriptor {} of {name} (pid {pid}) changed while it was copied",
                    holder.fd
                )))
            }
            Ok(info) => info,
            Err(e) => return Ok(Err(format!("{local}: {name} (pid {pid}): {e}"))),
        };
        if let Err(e) = info.check_joinable() {
            return Ok(Err(format!(
                "{local}: the listener of {name} (pid {pid}) cannot join the group: {e}"
            )));
        }
        let worker = NewWorker {
            conn: ADOPTED,
            peer: Peer {
                pid,
                uid: procs::effective_uid(pid).unwrap_or(listener.uid),
            },
            socket,
            info,
            name: Some(name.clone()),
            weight: None,
            load: Default::default(),
            process: Some(process),
        };
        Ok(match self.owner.register(worker).await? {
            Ok(joined) => {
                self.acceptors
                    .insert(listener.cookie, Watched::new(ours, &self.exits));
                Ok(SlotRef {
                    group: joined.group,
                    slot: joined.slot,
                })
            }
            Err(refusal) => Err(format!(
                "{local}: the listener of {name} (pid {pid}) was refused: {}",
                refusal.message
            )),
        })
    }

    /// `adopt PID`: the listeners `pid` holds on any group's address, each adopted from the
    /// process that accepts from it (one of `pid`'s workers, for a master).
    async fn adopt_pid(&mut self, pid: u32) -> Result<Adopted, Refusal> {
        let gone = |_| Refusal::new(ErrorCode::Io, "the daemon is stopping");
        let view = self.owner.call(|r| r.adoption_view()).await.map_err(gone)?;
        let groups: Vec<SocketAddr> = view.groups.iter().map(|&(listen, _)| listen).collect();
        if Process::open(pid).is_err() {
            return Err(Refusal::new(
                ErrorCode::NoListener,
                format!("no process {pid}: give the pid of a running server"),
            ));
        }
        let families = families(groups.iter().copied());
        let on_groups = groups.clone();
        let own_pid = self.own_pid;
        let found = self
            .dump_and_scan(
                families,
                move |l: &Listener| on_groups.contains(&l.local),
                |_| true,
            )
            .await
            .ok_or_else(|| Refusal::new(ErrorCode::Io, "sock_diag failed: see the daemon's log"))?;
        let holdings = found.holdings.unwrap_or_default();
        let held: Vec<&Listener> = found
            .listeners
            .iter()
            .filter(|l| {
                holdings
                    .get(&l.inode)
                    .is_some_and(|h| h.iter().any(|h| h.pid == pid))
            })
            .collect();
        if held.is_empty() || pid == own_pid {
            return Err(Refusal::new(
                ErrorCode::NoListener,
                format!(
                    "process {pid} ({}) holds no listening socket on the daemon's groups ({}): \
                     give the pid of a server that listens on one of them",
                    holders::command_name(pid),
                    groups
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let mut adopted = Adopted::default();
        for listener in held {
            if view.slotted.contains(&listener.cookie) {
                adopted.skipped.push(format!(
                    "{}: socket {} is in a slot already",
                    listener.local, listener.inode
                ));
                continue;
            }
            let holders = &holdings[&listener.inode];
            let Some(holder) = holders::acceptor(holders) else {
                continue;
            };
            match self.adopt_one(listener, holder).await.map_err(gone)? {
                Ok(slot) => adopted.slots.push(slot),
                Err(why) => adopted.skipped.push(why),
            }
        }
        info!(
            "adoption: adopt {pid}: {} slots filled, {} listeners skipped",
            adopted.slots.len(),
            adopted.skipped.len()
        );
        Ok(adopted)
    }
}

/// The families of `groups`, each once.
fn families(groups: impl Iterator<Item = SocketAddr>) -> Vec<Family> {
    let mut families = Vec::new();
    for listen in groups {
        let family = if listen.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        };
        if !families.contains(&family) {
            families.push(family);
        }
    }
    families
}
