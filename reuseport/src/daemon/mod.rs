//! `reuseport run`: owns one steering program per `--listen` group, takes worker registrations
//! and CLI requests on the control socket, and keeps the slots in step with the workers.
//!
//! When the daemon stops (SIGTERM, SIGINT, or a crash) the programs stay attached with their
//! last state, kept in maps pinned under bpffs: the kernel keeps steering between the
//! registered workers by the last policy, a worker that exits simply drops out (its slot empties
//! with its socket), and the group falls back to the kernel's hash once no registered worker is
//! left. A restarted daemon takes the pinned state over (`--fresh` discards it) and the workers
//! register again on their own, each back into its own slot.
//!
//! Inside: [`control_socket`] binds the socket; each connection is a [`session`] (parsing,
//! descriptors, replies); the state ([`registry`]: groups, workers, health, load, status) has
//! one owner, [`owner`], on a thread of its own, to which sessions and [`metrics_http`] send
//! commands; [`health`] is the pure stuck/recovered judgement; [`refusal`] the error replies;
//! [`access`] who may do what (docs/security.md); [`Reloader`] re-reads the configuration
//! file (SIGHUP, `reuseport reload`); [`notify`] tells systemd how the daemon is doing;
//! [`adoption`] finds running servers' listeners and keeps their slots in step with them.

mod access;
pub mod adoption;
mod control_socket;
mod health;
mod metrics_http;
mod notify;
mod owner;
mod refusal;
mod registry;
mod session;
mod trace;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use log::{info, warn};
use tokio::{net::UnixStream, sync::Semaphore};

pub use health::{HealthConfig, OnStuck};

use crate::config::{self, Flags};
use access::Access;
use refusal::Refusal;
pub use registry::{ConnId, GroupConfig, Peer, Pins, Registry};
use reuseport_steer::diag::ListenerDiag;
use reuseport_worker::{ErrorCode, Reply};
pub use session::Deadlines;
use session::Session;

/// Everything `reuseport run` is told: its flags over the configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    pub groups: Vec<GroupConfig>,
    /// Pin the maps under this directory (one subdirectory per group); `None`: no pins.
    pub pin_root: Option<PathBuf>,
    /// Discard pinned state instead of taking it over.
    pub fresh: bool,
    pub control: PathBuf,
    /// Uids besides the daemon's own that may use the control socket.
    pub allow_uids: Vec<u32>,
    /// Uids that may also change group-wide settings and act on every slot, as the daemon's
    /// own uid does (and reload the configuration).
    pub admin_uids: Vec<u32>,
    /// Bounds on the control connections.
    pub limits: ControlLimits,
    /// Sampling and stuck-worker handling.
    pub health: HealthConfig,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<SocketAddr>,
}

/// What a control connection may cost the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlLimits {
    /// Connections served at once (`--max-connections`); one more gets `too_many_connections`.
    pub max_connections: usize,
    /// For the rest of a line, and for the next request of a connection holding no worker.
    pub deadlines: Deadlines,
}

impl Default for ControlLimits {
    fn default() -> Self {
        Self {
            max_connections: Self::MAX_CONNECTIONS as usize,
            deadlines: Deadlines {
                line: Duration::from_millis(Self::LINE_MS),
                idle: Duration::from_millis(Self::IDLE_MS),
            },
        }
    }
}

impl ControlLimits {
    /// A full group (1,024 workers, one connection each) and thousands of CLI clients.
    pub const MAX_CONNECTIONS: u32 = 4096;
    /// For the rest of a line, in milliseconds.
    pub const LINE_MS: u64 = 10_000;
    /// For the next request of a connection holding no worker, in milliseconds.
    pub const IDLE_MS: u64 = 60_000;
    /// Longest deadline accepted (a day), in milliseconds.
    pub const MAX_MS: u64 = 86_400_000;
}

/// Where the configuration came from, to read it again on a reload.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The configuration file, if the daemon has one.
    pub file: Option<PathBuf>,
    /// The flags, which override the file again on every reload.
    pub flags: Flags,
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: DaemonConfig,
    source: Source,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.groups.is_empty(),
        "nothing to serve: give at least one --listen ADDR:PORT, or a [[group]] in the \
         configuration file"
    );
    // SIGHUP reloads; installed first, as its default action would kill the daemon.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    raise_fd_limit(config.limits.max_connections);
    let pins = Pins {
        root: config.pin_root.clone(),
        fresh: config.fresh,
    };
    let registry = Registry::new(&config.groups, &pins, config.health)
        .context("loading the steering program")?;
    let diag = ListenerDiag::new().context("opening a sock_diag netlink socket")?;
    let (owner, owner_thread) =
        owner::spawn(registry, diag).context("starting the thread that owns the daemon's state")?;
    let adoption = adoption::spawn(owner.clone(), config.allow_uids.clone())
        .context("opening a sock_diag netlink socket for adoption")?;
    let access = Access {
        own_uid: nix::unistd::geteuid().as_raw(),
        allow: config.allow_uids.clone(),
        admin: config.admin_uids.clone(),
    };
    let metrics = match config.metrics {
        Some(addr) => {
            let owner = owner.clone();
            Some(tokio::spawn(metrics_http::serve(
                metrics_http::bind(addr).await?,
                move || {
                    let owner = owner.clone();
                    // A daemon shutting down has no state to show: an empty scrape.
                    async move { owner.call(|r| r.status()).await.unwrap_or_default() }
                },
            )))
        }
        None => None,
    };
    let permits = Arc::new(Semaphore::new(config.limits.max_connections));
    let mut last_full_warning: Option<Instant> = None;
    // Last: a client that finds the control socket finds the metrics endpoint too.
    let listener = control_socket::bind(&config.control, access.open_to_others())?;
    info!(
        "serving {}; control socket {}{}",
        config
            .groups
            .iter()
            .map(|g| format!("{} ({})", g.listen, g.mode))
            .collect::<Vec<_>>()
            .join(", "),
        config.control.display(),
        source
            .file
            .as_ref()
            .map_or_else(String::new, |f| format!("; configuration {}", f.display()))
    );
    let reloader = Arc::new(Reloader {
        source,
        running: std::sync::Mutex::new(config.clone()),
        owner: owner.clone(),
        one_at_a_time: tokio::sync::Mutex::new(()),
    });
    notify::notify("READY=1");

    let mut next_conn: ConnId = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => {
                info!("SIGHUP: reloading the configuration");
                let reloader = reloader.clone();
                tokio::spawn(async move {
                    match reloader.reload().await {
                        // Each change is logged as it is applied.
                        Ok(changes) => info!("reloaded: {} changes", changes.len()),
                        Err(refusal) => warn!(
                            "reload refused, the running configuration stays: {}",
                            refusal.message
                        ),
                    }
                });
            }
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!("control socket accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // Refused before anything is spent on it: its reply fits the empty send buffer.
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    refuse_beyond_cap(&stream, config.limits.max_connections);
                    if last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        warn!(
                            "{} control connections open: refusing more (--max-connections)",
                            config.limits.max_connections
                        );
                        last_full_warning = Some(Instant::now());
                    }
                    continue;
                };
                let peer = match stream.peer_cred() {
                    Ok(cred) => Peer {
                        pid: cred.pid().map_or(0, |p| p as u32),
                        uid: cred.uid(),
                    },
                    Err(e) => {
                        warn!("SO_PEERCRED: {e}");
                        continue;
                    }
                };
                next_conn += 1;
                let session = Session {
                    conn: next_conn,
                    peer,
                    actor: access.actor(peer.uid),
                    owner: owner.clone(),
                    deadlines: config.limits.deadlines,
                    permit,
                    reloader: reloader.clone(),
                    adoption: adoption.clone(),
                };
                tokio::spawn(session.serve(stream));
            }
        }
    }
    notify::notify("STOPPING=1");
    owner_thread.stop().await;
    if let Some(m) = metrics {
        m.abort();
    }
    if let Err(e) = std::fs::remove_file(&config.control) {
        warn!("removing {}: {e}", config.control.display());
    }
    info!("stopped; the programs stay attached and keep steering with their last state");
    Ok(())
}

/// Tells a connection beyond `--max-connections` why it is closed, without waiting for it.
fn refuse_beyond_cap(stream: &UnixStream, max: usize) {
    let reply = Reply::error(
        ErrorCode::TooManyConnections,
        format!(
            "the daemon already serves {max} control connections: try again once some close, or \
             start it with a higher --max-connections"
        ),
    );
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
}

/// Each worker costs the daemon three descriptors (its control connection, the copy of its
/// socket and the pidfd of its process): lift the soft limit to the hard one so a full group (1024 workers) fits, and say
/// so when even that cannot hold `max_connections` such connections.
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            warn!("reading the open-file limit: {e}");
            return;
        }
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            warn!("raising the open-file limit from {soft} to {hard}: {e}");
        }
    }
    // Three per connection (with a worker's socket copy and pidfd), and some for the daemon.
    let needed = 3 * max_connections as u64 + 64;
    if hard < needed {
        warn!(
            "the open-file limit ({hard}) is below what --max-connections {max_connections} may \
             need ({needed}): raise it (ulimit -Hn, LimitNOFILE=) or lower --max-connections"
        );
    }
}

/// Resolves when SIGTERM or SIGINT arrives ([`run`] takes SIGHUP: a reload).
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
}

/// Re-reads the configuration file and applies what changed (SIGHUP, the `reload` request).
/// A bad file is refused with every problem and its place; the running configuration stays.
pub struct Reloader {
    source: Source,
    /// What runs now, to name the settings only a restart applies.
    running: std::sync::Mutex<DaemonConfig>,
    owner: owner::Handle,
    /// Reloads arriving together are applied one after the other.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Reloads; returns what changed, one line each.
    pub async fn reload(&self) -> Result<Vec<String>, Refusal> {
        let _turn = self.one_at_a_time.lock().await;
        let Some(path) = &self.source.file else {
            return Err(Refusal::new(
                ErrorCode::NoConfig,
                format!(
                    "the daemon runs without a configuration file (no --config, and {} is \
                     absent): nothing to reload; restart it with --config PATH",
                    config::DEFAULT_PATH
                ),
            ));
        };
        notify::reloading();
        let outcome = self.apply(path).await;
        notify::notify("READY=1");
        outcome
    }

    async fn apply(&self, path: &std::path::Path) -> Result<Vec<String>, Refusal> {
        let file = config::load(path)
            .map_err(|e| Refusal::new(ErrorCode::InvalidConfig, format!("{e:#}")))?;
        let new = self.source.flags.resolve(Some(&file));
        if new.groups.is_empty() {
            return Err(Refusal::new(
                ErrorCode::InvalidConfig,
                format!(
                    "{} has no [[group]] left: a daemon serves at least one group (stop it \
                     instead)",
                    path.display()
                ),
            ));
        }
        let (groups, health) = (new.groups.clone(), new.health);
        let mut changes = self
            .owner
            .call(move |r| r.reconfigure(&groups, health))
            .await
            .map_err(|_| Refusal::new(ErrorCode::Io, "the daemon is stopping"))??;
        let mut running = self
            .running
            .lock()
            .map_err(|_| Refusal::new(ErrorCode::Io, "the reload state is poisoned"))?;
        let restart = [
            ("control", new.control != running.control),
            ("metrics", new.metrics != running.metrics),
            ("pin_dir", new.pin_root != running.pin_root),
            ("allowed_uids", new.allow_uids != running.allow_uids),
            ("admin_uids", new.admin_uids != running.admin_uids),
        ];
        for (setting, changed) in restart {
            if changed {
                changes.push(format!(
                    "{setting} changed: it takes effect when the daemon restarts"
                ));
            }
        }
        running.groups = new.groups;
        running.health = new.health;
        if changes.is_empty() {
            changes.push("nothing changed".into());
        }
        Ok(changes)
    }
}
