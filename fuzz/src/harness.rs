//! The daemon, in-process, and one input run against it as a client would, then the checks.
//!
//! [`Harness::start`] moves the calling thread into a fresh network namespace and runs the real
//! `reuseport run` ([`reuseport::daemon::run`], without pins) on a tokio runtime of its own,
//! with its control socket in a temporary directory. [`Harness::run`] plays an input's script
//! (see [`crate::input`]) on real connections, with real descriptors attached, and then checks
//! what must hold whatever a client sends:
//!
//! - every reply is one JSON line of the protocol, and a refusal says why (`code`, `error`);
//! - once the client ends its side, the daemon closes the connection (no session hangs);
//! - afterwards the daemon still answers `status`, with no worker left registered;
//! - the process holds no more descriptors than before the input (none received is leaked);
//! - nothing panicked, on any thread.

use std::{
    collections::BTreeMap,
    io::{self, Read as _},
    net::{Shutdown, SocketAddr},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use reuseport::daemon::{self, ControlLimits, DaemonConfig, GroupConfig, HealthConfig, Source};
use reuseport_steer::{AttachMode, OnEmpty};
use reuseport_worker::{fdpass, protocol::MAX_LINE, Reply};

use crate::{
    input::{decode, Op, MAX_CONNECTIONS},
    pool::Pool,
};

/// The daemon's groups: an IPv4 and an IPv6 one, so requests must name theirs.
pub const GROUPS: [&str; 2] = ["127.0.0.1:7000", "[::1]:7001"];
/// Ports of the pool's listeners outside every group.
const SPARE_PORTS: [u16; 2] = [7002, 7003];

/// How long an `Await` waits for replies that may never come.
const AWAIT: Duration = Duration::from_millis(10);
/// What sending one input may take in all: a daemon that stops reading holds up no more.
const SEND_BUDGET: Duration = Duration::from_secs(2);
/// How long the daemon gets for each check (generous: the machine may be busy).
const DEADLINE: Duration = Duration::from_secs(5);

/// Panics seen on any thread of the process since the harness started.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// What one input did, for the figures and for the replay test's coverage checks.
#[derive(Debug, Default)]
pub struct Summary {
    /// Replies read.
    pub replies: usize,
    /// Registrations the daemon took.
    pub registered: usize,
    /// Refusals by code.
    pub codes: BTreeMap<String, usize>,
}

impl Summary {
    pub fn add(&mut self, other: &Self) {
        self.replies += other.replies;
        self.registered += other.registered;
        for (code, n) in &other.codes {
            *self.codes.entry(code.clone()).or_default() += n;
        }
    }
}

/// A daemon running in this process, and what an input is checked against.
pub struct Harness {
    dir: PathBuf,
    control: PathBuf,
    groups: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    daemon: Option<JoinHandle<Result<()>>>,
    /// Open descriptors of the process between inputs (none counted yet: `usize::MAX`).
    baseline: usize,
}

impl Harness {
    /// Enters a fresh network namespace (the calling thread: run the inputs from it) and starts
    /// the daemon. Needs root (BPF, namespaces).
    pub fn start() -> Result<Self> {
        reuseport_testing::netns::fresh()?;
        count_panics();
        let groups = GROUPS
            .iter()
            .map(|g| g.parse())
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        remove_left_behind();
        let dir = std::env::temp_dir().join(format!("reuseport-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        remove_at_exit(&dir);
        let control = dir.join("control.sock");
        let config = DaemonConfig {
            groups: groups
                .iter()
                .map(|&listen| GroupConfig {
                    listen,
                    protocol: reuseport_steer::Protocol::Tcp,
                    flow_idle: None,
                    mode: AttachMode::SelectOrMigrate,
                    policy: None,
                    on_empty: OnEmpty::Pass,
                    v6only: false,
                    weights: Default::default(),
                    adopt: false,
                })
                .collect(),
            pin_root: None,
            fresh: true,
            control: control.clone(),
            allow_uids: Vec::new(),
            admin_uids: Vec::new(),
            limits: ControlLimits::default(),
            health: HealthConfig::default(),
            metrics: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Started from this thread, so the daemon's threads are in its namespace too.
        let daemon = std::thread::Builder::new()
            .name("daemon".into())
            .spawn(move || {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?
                    .block_on(daemon::run(config, Source::default(), async {
                        let _ = stopped.await;
                    }))
            })?;
        let mut harness = Self {
            dir,
            control,
            groups,
            stop: Some(stop),
            daemon: Some(daemon),
            baseline: usize::MAX,
        };
        let started = Instant::now();
        while UnixStream::connect(&harness.control).is_err() {
            if harness.daemon.as_ref().is_none_or(JoinHandle::is_finished) {
                let outcome = harness.stop_daemon();
                bail!("the daemon stopped at once: {outcome:?}");
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the daemon's control socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        harness.check().context("the daemon, before any input")?;
        // The least of a few counts: the daemon may have a /proc file open for a moment.
        harness.baseline = (0..5)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                open_fds()
            })
            .min()
            .unwrap_or(usize::MAX);
        Ok(harness)
    }

    /// The daemon's groups.
    pub fn groups(&self) -> &[SocketAddr] {
        &self.groups
    }

    /// Plays one input and checks the invariants; `Err` names the one broken.
    pub fn run(&mut self, data: &[u8]) -> Result<Summary> {
        let mut summary = Summary::default();
        let pool = Pool::new(&self.groups, SPARE_PORTS);
        let budget = Instant::now() + SEND_BUDGET;
        let mut conns: Vec<Conn> = Vec::new();
        let mut current = 0;
        for op in decode(data) {
            if trace() {
                eprintln!("{}", describe(&op));
            }
            if let Op::Connect = op {
                if conns.len() < MAX_CONNECTIONS {
                    conns.push(Conn::open(&self.control)?);
                    current = conns.len() - 1;
                }
                continue;
            }
            let Some(conn) = conns.get_mut(current) else {
                continue;
            };
            match op {
                Op::Connect => {}
                Op::Switch(i) => current = usize::from(i) % conns.len(),
                Op::Send { bytes, fds } => {
                    let fds = pool.pick(&fds, conn.stream.as_raw_fd());
                    conn.send(&bytes, &fds, budget, &mut summary)?;
                }
                Op::Request { template, fds } => {
                    let fds = pool.pick(&fds, conn.stream.as_raw_fd());
                    conn.send(&template.line(&self.groups), &fds, budget, &mut summary)?;
                }
                Op::Flood { len, fill } => {
                    let bytes = vec![fill; len as usize];
                    conn.send(&bytes, &[], budget, &mut summary)?;
                }
                Op::Await(n) => conn.await_replies(usize::from(n), &mut summary)?,
                Op::ShutdownWrite => conn.shutdown_write(),
                Op::Close => {
                    conn.pump(&mut summary)?;
                    conns.remove(current);
                    current = 0;
                }
            }
        }
        let deadline = Instant::now() + DEADLINE;
        for conn in &mut conns {
            conn.finish(deadline, &mut summary)?;
        }
        drop(conns);
        drop(pool);
        self.check()?;
        Ok(summary)
    }

    /// The invariants between inputs, once every connection of the input is closed; also
    /// puts the group-wide settings back for the next input.
    fn check(&mut self) -> Result<()> {
        ensure!(
            PANICS.load(Ordering::Relaxed) == 0,
            "a thread panicked (see its message above)"
        );
        if self.daemon.as_ref().is_none_or(JoinHandle::is_finished) {
            let outcome = self.stop_daemon();
            bail!("the daemon stopped: {outcome:?}");
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let reply = self
                .request(br#"{"op":"status"}"#, deadline)
                .context("the daemon did not answer status")?;
            ensure!(reply.ok, "status refused: {reply:?}");
            let groups = reply.groups.unwrap_or_default();
            ensure!(
                groups.len() == self.groups.len(),
                "status lists {} groups",
                groups.len()
            );
            let left: Vec<_> = groups
                .iter()
                .flat_map(|g| g.workers.iter().map(move |w| (g.listen, w.slot)))
                .collect();
            if left.is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "workers still registered after their connections closed: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let reply = self.request(br#"{"op":"policy_set","policy":"round-robin"}"#, deadline)?;
        ensure!(reply.ok, "resetting the policy was refused: {reply:?}");
        loop {
            let open = open_fds();
            if open <= self.baseline {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "descriptor leak: {open} open, {} before the input",
                self.baseline
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One request on a connection of its own, and its reply.
    fn request(&self, line: &[u8], deadline: Instant) -> Result<Reply> {
        let mut conn = Conn::open(&self.control)?;
        let mut line = line.to_vec();
        line.push(b'\n');
        let mut summary = Summary::default();
        conn.send(&line, &[], deadline, &mut summary)?;
        while conn.replies.is_empty() {
            conn.pump(&mut summary)?;
            ensure!(!conn.eof, "the connection closed without a reply");
            ensure!(Instant::now() < deadline, "no reply in time");
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(conn.replies.remove(0))
    }

    fn stop_daemon(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.daemon.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => bail!("the daemon's thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop_daemon();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One client connection (non-blocking), and the replies read from it.
struct Conn {
    stream: UnixStream,
    inbox: Vec<u8>,
    replies: Vec<Reply>,
    /// The daemon closed it.
    eof: bool,
    /// This side can send no more (shut down, or the daemon is gone).
    write_closed: bool,
}

impl Conn {
    fn open(control: &std::path::Path) -> Result<Self> {
        let stream = UnixStream::connect(control).context("connecting to the control socket")?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            inbox: Vec::new(),
            replies: Vec::new(),
            eof: false,
            write_closed: false,
        })
    }

    /// Sends `bytes` (descriptors with the first), reading replies whenever the daemon is not
    /// reading, until done or `budget` has passed.
    fn send(
        &mut self,
        bytes: &[u8],
        fds: &[i32],
        budget: Instant,
        summary: &mut Summary,
    ) -> Result<()> {
        let mut sent = 0;
        while sent < bytes.len() && !self.write_closed {
            let attached = if sent == 0 { fds } else { &[] };
            match fdpass::send_with_fds(&self.stream, &bytes[sent..], attached) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pump(summary)?;
                    if Instant::now() > budget || self.eof {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                // The daemon closed the connection (after refusing something), or the kernel
                // refused the message (too many descriptors in flight): nothing more to send.
                Err(_) => self.write_closed = true,
            }
        }
        self.pump(summary)
    }

    fn await_replies(&mut self, n: usize, summary: &mut Summary) -> Result<()> {
        let want = self.replies.len() + n;
        let until = Instant::now() + AWAIT;
        loop {
            self.pump(summary)?;
            if self.replies.len() >= want || self.eof || Instant::now() > until {
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        self.write_closed = true;
    }

    /// Ends this side and waits for the daemon to close the connection.
    fn finish(&mut self, deadline: Instant, summary: &mut Summary) -> Result<()> {
        self.shutdown_write();
        while !self.eof {
            self.pump(summary)?;
            ensure!(
                Instant::now() < deadline,
                "the daemon kept a connection open after its client ended its side ({} replies \
                 read)",
                self.replies.len()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Reads what has arrived and checks every complete reply line.
    fn pump(&mut self, summary: &mut Summary) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        while !self.eof {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.inbox.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The daemon closed with data of ours unread: its replies were all delivered.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => self.eof = true,
                Err(e) => return Err(e).context("reading replies"),
            }
        }
        let mut start = 0;
        while let Some(len) = self.inbox[start..].iter().position(|&b| b == b'\n') {
            let line = &self.inbox[start..start + len];
            start += len + 1;
            let reply: Reply = serde_json::from_slice(line).with_context(|| {
                format!(
                    "a reply is not a protocol line: {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )
            })?;
            summary.replies += 1;
            if trace() {
                eprintln!(
                    "  reply: {}",
                    String::from_utf8_lossy(&line[..line.len().min(300)])
                );
            }
            if reply.ok {
                summary.registered += usize::from(reply.slot.is_some());
            } else {
                let code = reply.code.as_ref().map(ToString::to_string);
                ensure!(
                    code.is_some() && reply.error.as_ref().is_some_and(|e| !e.is_empty()),
                    "a refusal without its code or reason: {reply:?}"
                );
                *summary.codes.entry(code.unwrap_or_default()).or_default() += 1;
            }
            self.replies.push(reply);
        }
        self.inbox.drain(..start);
        ensure!(
            !self.eof || self.inbox.is_empty(),
            "the daemon closed the connection in the middle of a reply line"
        );
        // Replies are not limited (a status of many workers is large), but one input's are not
        // that large: anything this big without a newline is a runaway.
        ensure!(
            self.inbox.len() < 64 * MAX_LINE,
            "a reply line of more than {} bytes",
            64 * MAX_LINE
        );
        Ok(())
    }
}

/// `REUSEPORT_FUZZ_TRACE=1`: print every action and reply (to see what a crash input does).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("REUSEPORT_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(usize::MAX, Iterator::count)
}

/// Removes the directories of harnesses whose process is gone (killed, or built before
/// [`remove_at_exit`]).
fn remove_left_behind() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("reuseport-fuzz-"))
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// libFuzzer ends the process with `exit`, never dropping the harness: the temporary directory
/// goes then.
fn remove_at_exit(dir: &std::path::Path) {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    if DIR.set(dir.to_path_buf()).is_ok() {
        // SAFETY: registers a function that takes no arguments and does not unwind.
        unsafe { libc::atexit(remove) };
    }
}

/// Counts panics (then lets the hook that was there report them, or abort under libFuzzer).
fn count_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            previous(info);
        }));
    });
}

/// An action, briefly (long byte strings cut).
fn describe(op: &Op) -> String {
    match op {
        Op::Send { bytes, fds } => format!(
            "send {:?} ({} bytes) with descriptors {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(120)]),
            bytes.len(),
            &fds[..fds.len().min(8)]
        ),
        Op::Request { template, fds } => format!("request {template:?} with descriptors {fds:?}"),
        other => format!("{other:?}"),
    }
}
