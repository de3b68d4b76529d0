//! The `trace` request's fan-out: one reader of a group's `TRACE` ring buffer (a tokio task,
//! started with the first trace client and stopped with the last), handing each record to
//! every client through a bounded queue of its own. A client that reads too slowly loses
//! records (counted, and told at the end), never delays the others, the owner thread or the
//! program. The program records only while the hub has a client: the hub sets the group's
//! `TRACING` flag with the first and clears it with the last.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use log::warn;
use reuseport_common::trace::TraceRecord;
use reuseport_steer::trace::Tracer;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, Notify},
};

/// Records a client may have waiting before it starts losing them.
const QUEUE: usize = 4096;

/// One group's trace readers.
pub struct TraceHub {
    state: Mutex<HubState>,
    /// Wakes the reader when a client leaves, so the flag goes off without waiting for a record.
    left: Notify,
}

struct HubState {
    /// The ring buffer, while no reader task holds it.
    tracer: Option<Tracer>,
    clients: Vec<Client>,
    next_id: u64,
}

struct Client {
    id: u64,
    tx: mpsc::Sender<TraceRecord>,
    lost: Arc<AtomicU64>,
}

/// A client's place in the hub; leaving (drop) takes it out.
pub struct Subscription {
    hub: Arc<TraceHub>,
    id: u64,
    pub records: mpsc::Receiver<TraceRecord>,
    lost: Arc<AtomicU64>,
}

impl Subscription {
    /// Records this client lost so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut state) = self.hub.state.lock() {
            state.clients.retain(|c| c.id != self.id);
        }
        self.hub.left.notify_one();
    }
}

impl TraceHub {
    pub fn new(tracer: Tracer) -> Self {
        Self {
            state: Mutex::new(HubState {
                tracer: Some(tracer),
                clients: Vec::new(),
                next_id: 0,
            }),
            left: Notify::new(),
        }
    }

    /// Adds a client; starts the reader (and the recording) if it is the first.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, records) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let id = state.next_id;
        state.next_id += 1;
        state.clients.push(Client {
            id,
            tx,
            lost: lost.clone(),
        });
        if let Some(mut tracer) = state.tracer.take() {
            // On before the client hears it is subscribed: every connection it makes after
            // that is recorded.
            if let Err(e) = tracer.set_enabled(true) {
                warn!("trace: {e}");
            }
            tokio::spawn(self.clone().read(tracer));
        }
        Subscription {
            hub: self.clone(),
            id,
            records,
            lost,
        }
    }

    /// The reader (recording is on): hands out records while there are clients, then turns
    /// recording off and puts the ring buffer back for the next first client.
    async fn read(self: Arc<Self>, tracer: Tracer) {
        // SAFETY: the descriptor belongs to `tracer`, which the AsyncFd owns until
        // `into_inner` deregisters it.
        let mut ring = match unsafe { AsyncFd::register(tracer) } {
            Ok(ring) => ring,
            Err(e) => {
                let (tracer, e) = e.into_parts();
                warn!("trace: cannot wait on the ring buffer: {e}");
                self.put_back(tracer);
                return;
            }
        };
        loop {
            self.hand_out(ring.get_mut());
            {
                // Off and back in its place under the lock, so a client that subscribes
                // meanwhile either finds this reader still on, or the tracer to start one.
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.clients.is_empty() {
                    let mut tracer = ring.into_inner();
                    if let Err(e) = tracer.set_enabled(false) {
                        warn!("trace: {e}");
                    }
                    state.tracer = Some(tracer);
                    return;
                }
            }
            tokio::select! {
                ready = ring.readable_mut() => match ready {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        warn!("trace: waiting on the ring buffer: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = self.left.notified() => {}
            }
        }
    }

    fn put_back(&self, tracer: Tracer) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.tracer = Some(tracer);
        state.clients.clear();
    }

    /// Every record waiting, to every client (a full queue counts as lost).
    fn hand_out(&self, tracer: &mut Tracer) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(record) = tracer.next_record() {
            state.clients.retain(|c| match c.tx.try_send(record) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    c.lost.fetch_add(1, Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }
}

/// Serves one `trace` request on `stream`: the `ok` line naming the group, then one line per
/// record until `count` records (if given), or until the client sends anything or closes.
/// Returns the last line (with `lost`), or `Err` when the client is gone.
pub async fn serve(
    stream: &mut tokio::net::UnixStream,
    group: std::net::SocketAddr,
    hub: &Arc<TraceHub>,
    count: Option<u64>,
) -> std::io::Result<reuseport_worker::Reply> {
    use reuseport_worker::{trace::TraceEvent, Reply};

    let mut subscription = hub.subscribe();
    let started = Reply {
        group: Some(group),
        ..Reply::ok()
    };
    write_line(stream, &started).await?;
    let mut sent = 0u64;
    while count.is_none_or(|n| sent < n) {
        tokio::select! {
            record = subscription.records.recv() => {
                let Some(record) = record else { break };
                let line = Reply {
                    trace: Some(TraceEvent::from(&record)),
                    ..Reply::ok()
                };
                write_line(stream, &line).await?;
                sent += 1;
            }
            ready = stream.readable() => {
                ready?;
                // Anything from the client (or its end) stops the stream; what it sent is
                // read as the next request.
                let mut probe = [0u8; 1];
                match stream.try_io(tokio::io::Interest::READABLE, || {
                    let n = peek(stream, &mut probe)?;
                    Ok(n)
                }) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(Reply {
        lost: Some(subscription.lost()),
        ..Reply::ok()
    })
}

/// Looks at the next byte without taking it (MSG_PEEK), so a request sent to stop the trace is
/// still there for the session to read.
fn peek(stream: &tokio::net::UnixStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket descriptor and a buffer we own, of the length given.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn write_line(
    stream: &mut tokio::net::UnixStream,
    reply: &reuseport_worker::Reply,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}
