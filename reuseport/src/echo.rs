//! `reuseport echo`: the single-process, single-threaded server of the story: one request at a
//! time, like a sync Python or Ruby worker, so `/sleep` really blocks it. Minimal HTTP/1.1 with
//! keep-alive: `GET /` answers `pid=<PID>\n`; `GET /sleep?ms=N` answers the same after N ms.
//! With `--udp` it joins a UDP group and answers every datagram with `pid=<PID>\n`.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, RawFd},
    path::PathBuf,
    time::Duration,
};

use log::{info, warn};

use reuseport_worker::{self as worker, Registration, WorkerOptions};

#[derive(Clone, Debug)]
pub struct EchoOptions {
    pub listen: SocketAddr,
    pub control: Option<PathBuf>,
    pub register: bool,
    pub name: Option<String>,
    pub weight: Option<u32>,
    /// IPv6: IPV6_V6ONLY for the listener; `None`: the group's kind as the running daemon
    /// reports it, dual-stack when it cannot tell.
    pub v6only: Option<bool>,
    /// A UDP socket for a UDP group (`run --listen udp://ADDR:PORT`).
    pub udp: bool,

    /// A listening socket inherited as this descriptor, shared with other workers, served
    /// instead of binding one (unregistered: the prefork model).
    pub shared_fd: Option<RawFd>,

    /// This worker's own service time per request (`--service-ms`).
    pub service: Option<crate::echo_service::ServiceTime>,
}

/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest `/sleep`, so a typo cannot wedge a worker for hours.
const MAX_SLEEP_MS: u64 = 60_000;
/// Poll timeout: also how soon a migrated connection (which raises no readiness event) is seen.
const TICK_MS: i32 = 20;

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// IPV6_V6ONLY for the socket: as asked, else the group's kind as the daemon reports it.
fn v6only(options: &EchoOptions) -> bool {
    options.v6only.unwrap_or_else(|| {
        options.listen.is_ipv6()
            && options.register
            && worker::group_v6only(
                &worker::control_path(options.control.as_deref()),
                options.listen,
            )
            .unwrap_or(false)
    })
}

/// The UDP echo: one socket, every datagram answered with `pid=<PID>\n` from the socket it
/// came in on, until the process is killed.
fn run_udp(options: &EchoOptions) -> anyhow::Result<()> {
    let v6only = v6only(options);
    let socket = worker::bind_udp_with(options.listen, v6only)?;
    let _registration = if options.register {
        Some(Registration::start(
            &socket,
            &WorkerOptions {
                control: options.control.clone(),
                name: options.name.clone(),
                weight: options.weight,
                v6only,
                ..WorkerOptions::default()
            },
        )?)
    } else {
        None
    };
    info!(
        "echo worker pid {} on udp://{}",
        std::process::id(),
        options.listen
    );
    let reply = format!("pid={}\n", std::process::id());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(reply.as_bytes(), peer) {
                    warn!("answering {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Serves until the process is killed. When the daemon shuts the listener down (a stuck
/// worker evicted, `drain --close`), it makes it listen again at once and the worker keeps
/// accepting; if it does not listen again, the worker joins again with a new one.
pub fn run(options: &EchoOptions) -> anyhow::Result<()> {
    if let Some(service) = options.service {
        crate::echo_service::set(service);
    }
    if options.udp {
        return run_udp(options);
    }
    let mut conns: Vec<Conn> = Vec::new();
    if let Some(fd) = options.shared_fd {
        let listener = shared_listener(fd)?;
        info!(
            "echo worker pid {} on {} (shared socket, fd {fd})",
            std::process::id(),
            options.listen
        );
        serve(&listener, None, &mut conns, true);
        anyhow::bail!("the shared listener (fd {fd}) stopped listening");
    }
    loop {
        let v6only = v6only(options);
        let listener = worker::bind_listener_with(options.listen, 1024, v6only)?;
        listener.set_nonblocking(true)?;
        let registration = if options.register {
            Some(Registration::start(
                &listener,
                &WorkerOptions {
                    control: options.control.clone(),
                    name: options.name.clone(),
                    weight: options.weight,
                    v6only,
                    ..WorkerOptions::default()
                },
            )?)
        } else {
            None
        };
        info!(
            "echo worker pid {} on {}",
            std::process::id(),
            options.listen
        );
        serve(&listener, registration.as_ref(), &mut conns, false);
        warn!("the listener was shut down (evicted or closed by the daemon): joining again");
    }
}

/// The listening TCP socket inherited as `fd`, made non-blocking (its file description is
/// shared: every worker on it wants that anyway).
fn shared_listener(fd: RawFd) -> anyhow::Result<TcpListener> {
    // SAFETY: fcntl(F_GETFD) only asks whether `fd` is open; it touches nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        anyhow::bail!("--shared-fd {fd}: no such descriptor was inherited");
    }
    // SAFETY: `fd` is open (checked above) and this process takes it over: nothing else in it
    // uses that number.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let listening = nix::sys::socket::getsockopt(&listener, nix::sys::socket::sockopt::AcceptConn)
        .unwrap_or(false);
    if !listening {
        anyhow::bail!(
            "--shared-fd {fd}: not a listening socket (pass one that listen() was called on)"
        );
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves connections until the listener stops listening. `when_idle`: take a new connection
/// only in a round with no request to answer (a shared socket: what this worker leaves in the
/// queue goes to whichever worker is free, so the queue stays one work-conserving queue).
fn serve(
    listener: &TcpListener,
    registration: Option<&Registration>,
    conns: &mut Vec<Conn>,
    when_idle: bool,
) {
    let pid = std::process::id();
    let mut accepted = false;
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(conns.iter().map(|c| c.stream.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // No wait while the last round accepted: more may be queued.
        let timeout = if accepted { 0 } else { TICK_MS };
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };

        // One connection per round, and on every round (migrated connections raise no
        // readiness): the rest stay in the kernel's queue, where the daemon can still move
        // them elsewhere if this worker blocks.
        accepted = false;
        let busy = when_idle && fds.iter().skip(1).any(|p| p.revents != 0);
        match if busy {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            listener.accept()
        } {
            Ok((stream, _)) => {
                accepted = true;
                if let Some(r) = registration {
                    r.report_accepted();
                }
                if stream.set_nonblocking(false).is_ok()
                    && stream
                        .set_write_timeout(Some(Duration::from_secs(5)))
                        .is_ok()
                {
                    conns.push(Conn {
                        stream,
                        buf: Vec::new(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Not listening any more: shut down from outside, and not listening again (the
            // daemon makes an evicted or closed listener listen again right away).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !listens_again(listener) => return,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => warn!("accept: {e}"),
        }

        let mut closed = Vec::new();
        for (i, pfd) in fds.iter().enumerate().skip(1) {
            if pfd.revents == 0 {
                continue;
            }
            let conn = &mut conns[i - 1];
            if !read_and_answer(conn, pid, registration) {
                closed.push(i - 1);
            }
        }
        for i in closed.into_iter().rev() {
            conns.swap_remove(i);
        }
    }
}

/// How many times (1 ms apart) to check, after an accept() EINVAL, whether the listener
/// listens again before joining with a new one.
const RELISTEN_CHECKS: u32 = 10;

/// After an accept() EINVAL: whether the daemon made the listener listen again (it shuts a
/// listener down to move its queue, then makes it listen again at once), within a few ms.
fn listens_again(listener: &TcpListener) -> bool {
    (0..RELISTEN_CHECKS).any(|_| {
        let listening =
            nix::sys::socket::getsockopt(listener, nix::sys::socket::sockopt::AcceptConn)
                .unwrap_or(false);
        if !listening {
            std::thread::sleep(Duration::from_millis(1));
        }
        listening
    })
}

/// Reads what is there and answers complete requests. Returns false when the connection is
/// done.
fn read_and_answer(conn: &mut Conn, pid: u32, registration: Option<&Registration>) -> bool {
    let mut chunk = [0u8; 4096];
    let n = match conn.stream.read(&mut chunk) {
        Ok(0) | Err(_) => return false,
        Ok(n) => n,
    };
    conn.buf.extend_from_slice(&chunk[..n]);
    while let Some(end) = find_head_end(&conn.buf) {
        let head: Vec<u8> = conn.buf.drain(..end).collect();
        let request = parse(&head);
        if let Some(r) = registration {
            r.report_inflight(1);
        }
        let keep = answer(&mut conn.stream, &request, pid).is_ok() && request.keep_alive;
        if let Some(r) = registration {
            r.report_inflight(0);
        }
        if !keep {
            return false;
        }
    }
    conn.buf.len() < MAX_HEAD
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[derive(Debug, PartialEq, Eq)]
struct HttpRequest {
    method: String,
    path: String,
    keep_alive: bool,
}

fn parse(head: &[u8]) -> HttpRequest {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let http10 = first.next() == Some("HTTP/1.0");
    let mut keep_alive = !http10;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("connection") {
                let value = value.trim();
                if value.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    HttpRequest {
        method,
        path,
        keep_alive,
    }
}

fn answer(stream: &mut TcpStream, request: &HttpRequest, pid: u32) -> io::Result<()> {
    let (status, body) = match (request.method.as_str(), route(&request.path)) {
        ("GET", Some(sleep_ms)) => {
            crate::echo_service::serve();
            if sleep_ms > 0 {
                // Deliberately blocks the whole worker, like a long synchronous request.
                std::thread::sleep(Duration::from_millis(sleep_ms));
            }
            ("200 OK", format!("pid={pid}\n"))
        }
        ("GET", None) => ("404 Not Found", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let connection = if request.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

/// `Some(ms to sleep)` for the paths served: `/` and `/sleep?ms=N`.
fn route(path: &str) -> Option<u64> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    match path {
        "/" => Some(0),
        "/sleep" => Some(
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
                .min(MAX_SLEEP_MS),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/"), Some(0));
        assert_eq!(route("/sleep?ms=250"), Some(250));
        assert_eq!(route("/sleep?x=1&ms=7"), Some(7));
        assert_eq!(route("/sleep?ms=999999999"), Some(MAX_SLEEP_MS));
        assert_eq!(route("/other"), None);
    }

    #[test]
    fn a_shared_descriptor_must_be_a_listening_socket() -> anyhow::Result<()> {
        use std::os::fd::IntoRawFd;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = shared_listener(listener.into_raw_fd())?;
        assert_eq!(shared.local_addr()?, addr);
        // A connected, not listening, socket is refused by name; a closed descriptor too.
        let stream = TcpStream::connect(addr)?.into_raw_fd();
        let err = shared_listener(stream).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("not a listening socket")),
            "{err:?}"
        );
        let err = shared_listener(-1).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("no such descriptor")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn keep_alive_follows_http_version_and_header() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").keep_alive);
        assert!(!parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!parse(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    }
}
