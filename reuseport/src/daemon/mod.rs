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
//! commands; [`health`] is the pure stuck/recovered judgement; [`refusal`] the error replies.

mod control_socket;
mod health;
mod metrics_http;
mod owner;
mod refusal;
mod registry;
mod session;

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use log::{info, warn};

pub use health::{HealthConfig, OnStuck};

pub use registry::{ConnId, GroupSetup, Peer, Registry};
use reuseport_steer::diag::ListenerDiag;
use session::Session;

/// Everything `reuseport run` is told.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub listen: Vec<SocketAddr>,
    pub setup: GroupSetup,
    pub control: PathBuf,
    /// Uids besides the daemon's own that may use the control socket.
    pub allow_uids: Vec<u32>,
    /// Sampling and stuck-worker handling.
    pub health: HealthConfig,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<SocketAddr>,
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.listen.is_empty(),
        "nothing to serve: give at least one --listen ADDR:PORT"
    );
    raise_fd_limit();
    let registry = Registry::new(&config.listen, &config.setup, config.health)
        .context("loading the steering program")?;
    let diag = ListenerDiag::new().context("opening a sock_diag netlink socket")?;
    let (owner, owner_thread) = owner::spawn(registry, diag, config.health)
        .context("starting the thread that owns the daemon's state")?;
    let listener = control_socket::bind(&config.control, !config.allow_uids.is_empty())?;
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
    let own_uid = nix::unistd::geteuid().as_raw();
    info!(
        "serving {} ({}); control socket {}",
        config
            .listen
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        config.setup.mode,
        config.control.display()
    );

    let mut next_conn: ConnId = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!("control socket accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
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
                    allowed: peer.uid == own_uid || config.allow_uids.contains(&peer.uid),
                    owner: owner.clone(),
                };
                tokio::spawn(session.serve(stream));
            }
        }
    }
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

/// Each worker costs the daemon two descriptors (its control connection and the copy of its
/// socket): lift the soft limit to the hard one so a full group (1024 workers) fits.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("raising the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => warn!("reading the open-file limit: {e}"),
    }
}

/// Resolves when SIGTERM or SIGINT arrives. SIGHUP, whose default action would kill the daemon
/// and leave its socket file behind, is the conventional reload signal: with nothing to reload
/// yet (no configuration file), it is logged and ignored.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return info!("SIGTERM: stopping"),
            _ = int.recv() => return info!("SIGINT: stopping"),
            _ = hup.recv() => info!("SIGHUP: nothing to reload (no configuration file); ignored"),
        }
    }
}
