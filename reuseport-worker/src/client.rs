//! A blocking client of the control socket: what the CLI and the worker helper use.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd, BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    fdpass,
    protocol::{ErrorCode, Reply, Request, CONTROL_ENV, DEFAULT_CONTROL_PATH},
};

/// Longest reply read. Requests are limited to `MAX_LINE`; replies are not (a `status` of a
/// thousand workers is several hundred KiB), this only bounds the memory a broken peer costs.
const MAX_REPLY: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the reuseport daemon is not running (no control socket at {0}): start it with \
         `reuseport run --listen ADDR:PORT`, or point --control / REUSEPORT_CONTROL at its socket"
    )]
    NotRunning(PathBuf),
    #[error(
        "permission denied on the control socket {0}: run as the daemon's user (root), or start \
         the daemon with --allow-uid {uid}",
        uid = nix::unistd::geteuid()
    )]
    PermissionDenied(PathBuf),
    #[error("control socket {}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("the daemon closed the connection without replying")]
    Closed,
    #[error("unreadable reply from the daemon: {0}")]
    BadReply(String),
    #[error("{message}")]
    Rejected { code: ErrorCode, message: String },
}

/// Where the control socket is: the explicit path, else `REUSEPORT_CONTROL`, else the default.
pub fn control_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONTROL_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_PATH))
}

/// One connection to the daemon.
pub struct ControlClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_path_buf())
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_path_buf()),
            _ => ClientError::Io {
                path: path.to_path_buf(),
                cause: e,
            },
        })?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| io_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        })
    }

    /// Sends a request and waits for its reply; a refusal becomes [`ClientError::Rejected`].
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let sent = self.send(request, None);
        self.reply_after(sent)
    }

    /// Sends a request with a descriptor attached (`register`) and waits for its reply.
    pub fn request_with_fd(
        &mut self,
        request: &Request,
        fd: BorrowedFd<'_>,
    ) -> Result<Reply, ClientError> {
        let sent = self.send(request, Some(fd));
        self.reply_after(sent)
    }

    /// Sends a request whose reply may carry a descriptor (`counters`), and returns both.
    pub fn request_returning_fd(
        &mut self,
        request: &Request,
    ) -> Result<(Reply, Option<OwnedFd>), ClientError> {
        self.send(request, None)?;
        // The daemon writes nothing unprompted, so nothing of this reply is buffered yet; read
        // it straight from the socket, where the descriptor rides on its first byte.
        let mut line = Vec::new();
        let mut fd = None;
        let mut chunk = [0u8; 4096];
        while !line.ends_with(b"\n") {
            let stream = self.reader.get_ref();
            let mut pfd = libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, REPLY_WAIT_MS) };
            if ready == 0 {
                return Err(io_err(&self.path, io::ErrorKind::TimedOut.into()));
            }
            let got = fdpass::recv_with_fds(stream, &mut chunk);
            let got = match got {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.map_err(|e| io_err(&self.path, e))?,
            };
            if got.len == 0 {
                return Err(ClientError::Closed);
            }
            if fd.is_none() {
                fd = got.fds.into_iter().next();
            }
            line.extend_from_slice(&chunk[..got.len]);
            if line.len() as u64 > MAX_REPLY {
                return Err(ClientError::BadReply("reply too long".into()));
            }
        }
        let reply = parse_reply(&line)?;
        Ok((reply, fd))
    }

    /// Sends a request that gets no reply (`load` reports).
    pub fn notify(&mut self, request: &Request) -> Result<(), ClientError> {
        self.send(request, None)
    }

    /// The underlying stream, e.g. to wait for the daemon to go away.
    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    fn send(&mut self, request: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(), ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
        line.push(b'\n');
        let stream = self.reader.get_mut();
        match fd {
            Some(fd) => {
                // The descriptor rides on the first byte; the rest follows as plain bytes.
                let sent = fdpass::send_with_fds(stream, &line, &[fd.as_raw_fd()])
                    .map_err(|e| io_err(&self.path, e))?;
                stream
                    .write_all(&line[sent..])
                    .map_err(|e| io_err(&self.path, e))
            }
            None => stream.write_all(&line).map_err(|e| io_err(&self.path, e)),
        }
    }

    /// The reply; when sending failed, the daemon may have refused the connection with a reply
    /// before closing it (e.g. a forbidden uid): that reply explains more than EPIPE.
    fn reply_after(&mut self, sent: Result<(), ClientError>) -> Result<Reply, ClientError> {
        match (sent, self.reply()) {
            (Ok(()), reply) => reply,
            (Err(_), Err(ClientError::Rejected { code, message })) => {
                Err(ClientError::Rejected { code, message })
            }
            (Err(e), _) => Err(e),
        }
    }

    /// The next reply line, for a request answered with several (`trace`).
    pub fn next_reply(&mut self) -> Result<Reply, ClientError> {
        self.reply()
    }

    fn reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        let n = Read::by_ref(&mut self.reader)
            .take(MAX_REPLY)
            .read_line(&mut line)
            .map_err(|e| io_err(&self.path, e))?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        parse_reply(line.as_bytes())
    }
}

/// How long [`ControlClient::request_returning_fd`] waits for its reply.
const REPLY_WAIT_MS: libc::c_int = 10_000;

fn parse_reply(line: &[u8]) -> Result<Reply, ClientError> {
    let reply: Reply =
        serde_json::from_slice(line).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if !reply.ok {
        return Err(ClientError::Rejected {
            code: reply.code.unwrap_or(ErrorCode::Other(String::new())),
            message: reply.error.unwrap_or_default(),
        });
    }
    Ok(reply)
}

fn io_err(path: &Path, cause: io::Error) -> ClientError {
    ClientError::Io {
        path: path.to_path_buf(),
        cause,
    }
}
