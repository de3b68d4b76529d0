//! Real servers for `reuseport spawn`: finding nginx, gunicorn and uvicorn as `cargo xtask
//! setup` installs them (Debian packages), and the tiny apps they serve, each answering
//! `pid=<PID>` of the process that served the request (what the load generators count).

use std::{
    ffi::OsString,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// A server the tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Nginx,
    Gunicorn,
    Uvicorn,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Nginx => "nginx",
            Server::Gunicorn => "gunicorn",
            Server::Uvicorn => "uvicorn",
        }
    }

    /// The command that runs it: the program in PATH (nginx also in /usr/sbin); uvicorn, which
    /// Debian packages without a command, as `python3 -m uvicorn` of a Python that has it. An
    /// error names the missing server and how to install it.
    pub fn command(self) -> Result<Vec<OsString>> {
        let found = match self {
            Server::Nginx => in_path("nginx")
                .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
                .map(|p| vec![p.into_os_string()]),
            Server::Gunicorn => in_path("gunicorn").map(|p| vec![p.into_os_string()]),
            Server::Uvicorn => in_path("uvicorn")
                .map(|p| vec![p.into_os_string()])
                .or_else(|| {
                    ["python3", "/usr/bin/python3"]
                        .into_iter()
                        .find(|py| {
                            Command::new(py)
                                .args(["-m", "uvicorn", "--version"])
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .status()
                                .is_ok_and(|s| s.success())
                        })
                        .map(|py| vec![py.into(), "-m".into(), "uvicorn".into()])
                }),
        };
        match found {
            Some(cmd) => Ok(cmd),
            None => bail!(
                "{} is not installed: run `cargo xtask setup` as root (it installs nginx, gunicorn \
                 and python3-uvicorn from Debian), or `apt-get install -y nginx gunicorn \
                 python3-uvicorn`",
                self.name()
            ),
        }
    }
}

fn in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `app.py`: `asgi` for uvicorn and `wsgi` for gunicorn. `GET /` answers `pid=<PID>`; `GET
/// /sleep` the same after 500 ms (a request in flight when the server is told to stop).
pub const APP: &str = r#"import asyncio, os, time

SLEEP = 0.5


def body():
    return f"pid={os.getpid()}\n".encode()


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":
        await asyncio.sleep(SLEEP)
    b = body()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(b)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b})


def wsgi(environ, start_response):
    if environ.get("PATH_INFO") == "/sleep":
        time.sleep(SLEEP)
    b = body()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(b)))])
    return [b]
"#;

/// `pidserver.py`: a server of the standard library alone that takes its sockets the systemd
/// way (LISTEN_FDS, checking LISTEN_PID) and answers `pid=<PID>`, one connection at a time.
pub const PID_SERVER: &str = r#"import os, selectors, socket, sys

if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit(f"LISTEN_PID={os.environ.get('LISTEN_PID')} is not my pid {os.getpid()}")
listeners = [socket.socket(fileno=3 + i) for i in range(int(os.environ["LISTEN_FDS"]))]
body = f"pid={os.getpid()}\n".encode()
reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
selector = selectors.DefaultSelector()
for listener in listeners:
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ)
while True:
    # A short timeout: a connection migrated onto a listener raises no readiness event.
    selector.select(0.02)
    for listener in listeners:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue
        conn.setblocking(True)
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        conn.sendall(reply)
        conn.close()
"#;

/// `signals.py FILE`: writes `ready`, then the name of every signal it gets (HUP, INT, QUIT,
/// USR1, USR2, TERM) to FILE, one a line; exits with 3 after TERM.
pub const SIGNALS: &str = r#"import signal, sys, time

names = {signal.SIGHUP: "HUP", signal.SIGINT: "INT", signal.SIGQUIT: "QUIT",
         signal.SIGUSR1: "USR1", signal.SIGUSR2: "USR2", signal.SIGTERM: "TERM"}
out = open(sys.argv[1], "a", buffering=1)


def seen(sig, frame):
    out.write(names[sig] + "\n")
    if sig == signal.SIGTERM:
        sys.exit(3)


for sig in names:
    signal.signal(sig, seen)
out.write("ready\n")
while True:
    time.sleep(1)
"#;

/// Writes [`APP`], [`PID_SERVER`] and [`SIGNALS`] into `dir`.
pub fn write_apps(dir: &Path) -> Result<()> {
    for (name, text) in [
        ("app.py", APP),
        ("pidserver.py", PID_SERVER),
        ("signals.py", SIGNALS),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// An nginx configuration in `dir` (everything it writes stays there) for `workers` worker
/// processes, each taking one of the inherited sockets: nginx matches inherited sockets to
/// `listen` lines by address, and with `reuseport` it makes one listening socket per worker,
/// so `workers` sockets on `addr` are all used. Answers `pid=<worker pid>`. Returns its path.
pub fn nginx_conf(dir: &Path, addr: SocketAddr, workers: usize) -> Result<PathBuf> {
    let d = dir.display();
    let temp = dir.join("nginx-temp");
    fs::create_dir_all(&temp)?;
    let t = temp.display();
    let text = format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\nuser root;\n\
         pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log notice;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  \
         fastcgi_temp_path {t}/fastcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  \
         server {{\n    listen {addr} reuseport;\n    location / {{ return 200 \"pid=$pid\\n\"; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The children of `pid` (from /proc; its main thread's, which is where a fork from a
/// single-threaded process lands).
pub fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
