//! The worker side: a SO_REUSEPORT listener registered with the daemon in one call, for Rust
//! servers (std or tokio). The registration lives in a small background thread that registers
//! again whenever the daemon restarts; dropping it unregisters. In-flight reports are written
//! into the worker's own counters map ([`Counters`]), which the steering program reads with no
//! system call; a daemon that does not hand one out gets `load` lines, as before.

use std::{
    io,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use log::{info, warn};
use socket2::{Domain, Socket, Type};

use crate::{
    client::{control_path, ClientError, ControlClient},
    counters::Counters,
    protocol::{ErrorCode, Request},
};

/// How a worker joins.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Control socket; `None` means `REUSEPORT_CONTROL` or the default path.
    pub control: Option<PathBuf>,
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub backlog: i32,
    /// IPv6 listeners: IPV6_V6ONLY=1, for a group the daemon serves IPv6-only (`run
    /// --v6only`). Default: dual-stack, the Linux default and the daemon's (see
    /// [`group_v6only`] to ask the daemon). Ignored for IPv4.
    pub v6only: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            control: None,
            name: None,
            weight: None,
            backlog: 1024,
            v6only: false,
        }
    }
}

/// Binds a listening TCP socket with SO_REUSEPORT (set before bind, as the kernel requires);
/// an IPv6 one is dual-stack (IPV6_V6ONLY=0, the Linux default), as the daemon's IPv6 groups
/// are unless it runs with `--v6only`.
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    bind_listener_with(addr, backlog, false)
}

/// [`bind_listener`] choosing IPV6_V6ONLY for an IPv6 address: `true` for an IPv6-only
/// group. The flag is set explicitly either way (before bind, where it decides the kernel
/// group), so a changed `net.ipv6.bindv6only` sysctl does not change the socket's kind.
pub fn bind_listener_with(addr: SocketAddr, backlog: i32, v6only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6only)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// A bound UDP socket with SO_REUSEPORT, for a UDP group (`reuseport run --listen
/// udp://ADDR:PORT`): set before bind, as the kernel requires; IPV6_V6ONLY as for
/// [`bind_listener_with`].
pub fn bind_udp_with(addr: SocketAddr, v6only: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6only)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// [`listen`] for a UDP group: a registered UDP socket in one call.
pub fn listen_udp(
    addr: SocketAddr,
    options: &WorkerOptions,
) -> Result<(UdpSocket, Registration), ClientError> {
    let socket = bind_udp_with(addr, options.v6only).map_err(|cause| ClientError::Io {
        path: PathBuf::from(addr.to_string()),
        cause,
    })?;
    let registration = Registration::start(&socket, options)?;
    Ok((socket, registration))
}

/// A registered listener in one call: binds, registers, and keeps the registration alive.
pub fn listen(
    addr: SocketAddr,
    options: &WorkerOptions,
) -> Result<(TcpListener, Registration), ClientError> {
    let listener = bind_listener_with(addr, options.backlog, options.v6only).map_err(|cause| {
        ClientError::Io {
            path: PathBuf::from(addr.to_string()),
            cause,
        }
    })?;
    let registration = Registration::start(&listener, options)?;
    Ok((listener, registration))
}

/// Whether the running daemon serves its group on `addr` IPv6-only (`Some(true)`) or
/// dual-stack (`Some(false)`); `None` when no daemon answers on `control` or it has no such
/// group. Lets a worker make the socket the group needs without being told.
pub fn group_v6only(control: &std::path::Path, addr: SocketAddr) -> Option<bool> {
    let reply = ControlClient::connect(control)
        .and_then(|mut c| c.request(&Request::Status))
        .ok()?;
    reply
        .groups?
        .into_iter()
        .find(|g| g.listen == addr)
        .map(|g| g.v6only)
}

/// The tokio flavour of [`listen`].
#[cfg(feature = "tokio")]
pub fn listen_tokio(
    addr: SocketAddr,
    options: &WorkerOptions,
) -> Result<(tokio::net::TcpListener, Registration), ClientError> {
    let (listener, registration) = listen(addr, options)?;
    let io = |cause| ClientError::Io {
        path: PathBuf::from(addr.to_string()),
        cause,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io)?;
    Ok((listener, registration))
}

struct Shared {
    stop: AtomicBool,
    /// Slot + 1, or 0 while not registered.
    slot: AtomicU64,
    inflight: AtomicU32,
    /// The counters map of the current registration, when the daemon gave one.
    counters: Mutex<Option<Arc<Counters>>>,
    /// The daemon did not know the `counters` request: not asked again.
    no_counters: AtomicBool,
}

impl Shared {
    fn counters(&self) -> Option<Arc<Counters>> {
        self.counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_counters(&self, counters: Option<Arc<Counters>>) {
        *self.counters.lock().unwrap_or_else(PoisonError::into_inner) = counters;
    }
}

/// Keeps one listener registered. Dropping it closes the control connection, which removes
/// the slot at once.
pub struct Registration {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Registration {
    /// Registers `listener` now if the daemon is up (a refusal is returned as an error), or
    /// as soon as it comes up; and again after every daemon restart.
    pub fn start(listener: &impl AsFd, options: &WorkerOptions) -> Result<Self, ClientError> {
        Self::start_for(listener, options, std::process::id())
    }

    /// [`Registration::start`] on behalf of process `pid`, which serves the listener: a
    /// launcher (`reuseport spawn`) names the server it started, its own child.
    pub fn start_for(
        listener: &impl AsFd,
        options: &WorkerOptions,
        pid: u32,
    ) -> Result<Self, ClientError> {
        let socket = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|cause| ClientError::Io {
                path: PathBuf::from("listener"),
                cause,
            })?;
        let path = control_path(options.control.as_deref());
        let request = Request::Register {
            name: options.name.clone(),
            weight: options.weight,
            pid: Some(pid),
        };
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            slot: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
            counters: Mutex::new(None),
            no_counters: AtomicBool::new(false),
        });
        // First attempt in the caller, so a refusal reaches it.
        let first = match register_once(&path, &request, &socket) {
            Ok((mut client, slot)) => {
                shared.set_counters(take_counters(&mut client, slot, &shared));
                shared.slot.store(u64::from(slot) + 1, Ordering::SeqCst);
                Some(client)
            }
            Err(ClientError::NotRunning(p)) => {
                warn!(
                    "daemon not running at {}: will register when it starts",
                    p.display()
                );
                None
            }
            Err(e) => return Err(e),
        };
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("reuseport-registration".into())
                .spawn(move || keep_registered(path, request, socket, shared, first))
                .map_err(|cause| ClientError::Io {
                    path: PathBuf::from("registration thread"),
                    cause,
                })?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The slot the daemon gave, while registered.
    pub fn slot(&self) -> Option<u32> {
        match self.shared.slot.load(Ordering::SeqCst) {
            0 => None,
            s => Some((s - 1) as u32),
        }
    }

    /// Waits until registered (or `timeout`), returning the slot.
    pub fn wait_registered(&self, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(slot) = self.slot() {
                return Some(slot);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Tells the daemon how many requests the worker is serving: written into the worker's
    /// counters map (no system call) when it has one, else sent as a `load` line by the
    /// registration's thread. A drop counts the requests as finished.
    pub fn report_inflight(&self, inflight: u32) {
        let before = self.shared.inflight.swap(inflight, Ordering::Relaxed);
        if let Some(counters) = self.shared.counters() {
            counters.set_inflight(u64::from(inflight));
            if inflight < before {
                counters.finished(u64::from(before - inflight));
            }
        }
    }

    /// Counts a connection the worker accepted (shown by the daemon; no system call).
    pub fn report_accepted(&self) {
        if let Some(counters) = self.shared.counters() {
            counters.accepted();
        }
    }

    /// Whether the worker publishes through its own counters map (else through `load` lines).
    pub fn publishes_counters(&self) -> bool {
        self.shared.counters().is_some()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const RETRY: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(20);

fn register_once(
    path: &std::path::Path,
    request: &Request,
    socket: &OwnedFd,
) -> Result<(ControlClient, u32), ClientError> {
    let mut client = ControlClient::connect(path)?;
    let reply = client.request_with_fd(request, socket.as_fd())?;
    let slot = reply
        .slot
        .ok_or_else(|| ClientError::BadReply("register reply without a slot".into()))?;
    info!(
        "registered with {} in slot {slot} of {}",
        path.display(),
        reply.group.map(|g| g.to_string()).unwrap_or_default()
    );
    Ok((client, slot))
}

fn keep_registered(
    path: PathBuf,
    request: Request,
    socket: OwnedFd,
    shared: Arc<Shared>,
    mut client: Option<ControlClient>,
) {
    let mut reported = 0u32;
    let mut logged_refusal = false;
    while !shared.stop.load(Ordering::SeqCst) {
        let Some(c) = client.as_mut() else {
            match register_once(&path, &request, &socket) {
                Ok((mut c, slot)) => {
                    shared.set_counters(take_counters(&mut c, slot, &shared));
                    shared.slot.store(u64::from(slot) + 1, Ordering::SeqCst);
                    reported = 0;
                    logged_refusal = false;
                    client = Some(c);
                }
                Err(ClientError::NotRunning(_)) => std::thread::sleep(RETRY),
                Err(e) => {
                    if !logged_refusal {
                        warn!("registering with {}: {e}", path.display());
                        logged_refusal = true;
                    }
                    std::thread::sleep(RETRY * 10);
                }
            }
            continue;
        };
        let inflight = shared.inflight.load(Ordering::Relaxed);
        if inflight != reported && shared.counters().is_none() {
            if c.notify(&Request::Load { inflight }).is_err() {
                lost(&shared, &mut client);
                continue;
            }
            reported = inflight;
        }
        if daemon_gone(c, POLL) {
            lost(&shared, &mut client);
        }
    }
}

/// Asks the daemon for the worker's counters map and maps it, starting from the current
/// in-flight count. `None` when the daemon has none to give (an older daemon refuses the
/// request and closes the connection: the registration then goes on with `load` lines, after
/// registering again).
fn take_counters(client: &mut ControlClient, slot: u32, shared: &Shared) -> Option<Arc<Counters>> {
    if shared.no_counters.load(Ordering::Relaxed) {
        return None;
    }
    let request = Request::Counters { slot: Some(slot) };
    let counters = match client.request_returning_fd(&request) {
        Ok((reply, Some(fd))) => reply
            .counters
            .ok_or_else(|| "no layout in the reply".to_owned())
            .and_then(|layout| Counters::map(fd, layout).map_err(|e| e.to_string())),
        Ok((_, None)) => Err("no descriptor came with the reply".to_owned()),
        Err(ClientError::Rejected {
            code: ErrorCode::BadRequest,
            ..
        }) => {
            info!("the daemon hands out no counters map: reporting with load lines");
            shared.no_counters.store(true, Ordering::Relaxed);
            return None;
        }
        Err(e) => Err(e.to_string()),
    };
    match counters {
        Ok(counters) => {
            counters.set_inflight(u64::from(shared.inflight.load(Ordering::Relaxed)));
            Some(Arc::new(counters))
        }
        Err(e) => {
            warn!("no counters map for slot {slot} ({e}): reporting with load lines");
            None
        }
    }
}

fn lost(shared: &Shared, client: &mut Option<ControlClient>) {
    warn!("lost the daemon; registering again when it is back");
    shared.set_counters(None);
    shared.slot.store(0, Ordering::SeqCst);
    *client = None;
}

/// Waits up to `timeout` for the control connection to close (the daemon never writes
/// unprompted, so readability means end of stream or an error).
fn daemon_gone(client: &ControlClient, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: client.stream().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}
