//! The one task, on a thread of its own, that owns the daemon's state ([`Registry`]: groups, workers, health, the
//! sock_diag socket). Sessions and the metrics endpoint send it [`Command`]s through a
//! [`Handle`] and wait for the reply on a oneshot channel, so there is no lock: a slow step
//! delays only the commands queued behind it, never a client's reading or writing.
//!
//! Nothing here sleeps. A registration that must wait for an earlier daemon's socket array to
//! let go of its socket is retried on a timer while other commands keep flowing. Commands are
//! handled in batches: every queued one, then one publication of what they changed, so a
//! thousand workers leaving at once cost one rewrite of the active list.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};

use super::{
    refusal::Refusal,
    registry::{ConnId, Joined, LoadCell, NewWorker, Registered, Registry, TakeOver},
};
use reuseport_steer::diag::ListenerDiag;

/// A registry call: carries its own reply channel.
type Call = Box<dyn FnOnce(&mut Registry) + Send>;

pub enum Command {
    /// `register`: answered when the worker holds a slot, or why not (possibly after a
    /// take-over retry).
    Register {
        worker: NewWorker,
        reply: oneshot::Sender<Result<Joined, Refusal>>,
    },
    /// The connection closed: its workers leave.
    Unregister(ConnId),
    /// The connection's [`LoadCell`] has a new report (at most one such command per
    /// connection is queued at a time).
    Load(ConnId, Arc<LoadCell>),
    /// Any other request: a function of the registry that sends its own reply.
    Call(Call),
}

/// How many commands one batch takes at most before the samples get their turn.
const BATCH: usize = 4096;
/// How many commands may wait; senders wait beyond that. Every session has at most one
/// request, one load notice and its goodbye queued, so this is reached only by thousands of
/// connections at once.
const QUEUE: usize = 8192;
/// How often a take-over is retried.
const RETRY: Duration = Duration::from_millis(5);

/// A sender's side of the owner.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

/// The owner stopped (the daemon is shutting down).
#[derive(Debug)]
pub struct Gone;

impl Handle {
    pub async fn send(&self, command: Command) -> Result<(), Gone> {
        self.tx.send(command).await.map_err(|_| Gone)
    }

    /// Runs `f` on the registry and returns what it returns.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Registry) -> T + Send + 'static,
    ) -> Result<T, Gone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Call(Box::new(move |registry| {
            let _ = reply.send(f(registry));
        })))
        .await?;
        answer.await.map_err(|_| Gone)
    }

    pub async fn register(&self, worker: NewWorker) -> Result<Result<Joined, Refusal>, Gone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Register { worker, reply }).await?;
        answer.await.map_err(|_| Gone)
    }
}

/// The running owner: its thread, and how to stop it.
pub struct Owner {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Owner {
    /// Stops the owner and waits for its thread (the state is dropped: the programs stay
    /// attached with their last state).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Starts the owner on a thread of its own, with a single-threaded runtime for its timers.
/// Its system calls (map updates, sock_diag) then never take a turn from a session, and a
/// session flooding its connection never takes one from the owner: a thread shared with the
/// sessions would make either wait for the other.
pub fn spawn(registry: Registry, diag: ListenerDiag) -> std::io::Result<(Handle, Owner)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("registry-owner".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = own(registry, diag, rx) => {}
                    _ = stopped => {}
                }
            });
        })?;
    Ok((Handle { tx }, Owner { stop, thread }))
}

/// Registrations waiting for a take-over, with their reply channels.
type Waiting = Vec<(TakeOver, oneshot::Sender<Result<Joined, Refusal>>)>;

async fn own(mut registry: Registry, mut diag: ListenerDiag, mut rx: mpsc::Receiver<Command>) {
    let mut period = registry.sample_period().max(Duration::from_millis(1));
    let (mut sampler, mut housekeeping_every) = sampler(period);
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queues = HashMap::new();
    let mut samples: u128 = 0;
    let mut waiting: Waiting = Vec::new();
    loop {
        tokio::select! {
            command = rx.recv() => {
                let Some(command) = command else { break };
                handle(&mut registry, command, &mut waiting);
                for _ in 1..BATCH {
                    let Ok(command) = rx.try_recv() else { break };
                    handle(&mut registry, command, &mut waiting);
                }
                registry.flush();
                // A reload may have changed the sample period, and workers the signals.
                if registry.sample_period().max(Duration::from_millis(1)) != period {
                    period = registry.sample_period().max(Duration::from_millis(1));
                    (sampler, housekeeping_every) = self::sampler(period);
                }
            }
            _ = sampler.tick() => {
                registry.sample(&mut diag, &mut queues);
                samples += 1;
                if samples.is_multiple_of(housekeeping_every) {
                    registry.tick();
                    // A worker's counters map went in (in the background) since.
                    if registry.sample_period().max(Duration::from_millis(1)) != period {
                        period = registry.sample_period().max(Duration::from_millis(1));
                        (sampler, housekeeping_every) = self::sampler(period);
                    }
                }
            }
            _ = retry.tick(), if !waiting.is_empty() => {
                for (take_over, reply) in std::mem::take(&mut waiting) {
                    settle(registry.retry(take_over), reply, &mut waiting);
                }
            }
        }
    }
}

/// The sample timer for `period`, and every how many samples housekeeping runs (sockets
/// closed behind our back, program logs: every ~20 ms).
fn sampler(period: Duration) -> (tokio::time::Interval, u128) {
    let mut sampler = tokio::time::interval(period);
    sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = (Duration::from_millis(20).as_micros() / period.as_micros()).max(1);
    (sampler, every)
}

fn handle(registry: &mut Registry, command: Command, waiting: &mut Waiting) {
    match command {
        Command::Unregister(conn) => {
            // A registration still waiting for its take-over has nobody to answer any more.
            waiting.retain(|(take_over, _)| take_over.conn() != conn);
            registry.unregister(conn);
        }
        Command::Load(conn, cell) => registry.apply_load(conn, &cell),
        // What follows must see the slots of departed workers freed.
        Command::Register { worker, reply } => {
            registry.flush();
            settle(registry.register(worker), reply, waiting);
        }
        Command::Call(call) => {
            registry.flush();
            call(registry);
        }
    }
}

/// Answers a registration that is done, or keeps it waiting for the next retry.
fn settle(
    outcome: Registered,
    reply: oneshot::Sender<Result<Joined, Refusal>>,
    waiting: &mut Waiting,
) {
    match outcome {
        // A session waits for this reply before it can close (and unregister): a failed
        // send means the daemon is stopping.
        Registered::Done(result) => {
            let _ = reply.send(result);
        }
        Registered::Waiting(take_over) => waiting.push((take_over, reply)),
    }
}
