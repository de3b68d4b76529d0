//! Real servers for `reuseport spawn` and adoption: finding nginx, gunicorn and uvicorn as
//! `cargo xtask setup` installs them (Debian packages), the tiny apps they serve, each
//! answering `pid=<PID>` of the process that served the request (what the load generators
//! count), and servers started on their own ([`Running`]: nginx and gunicorn binding their
//! own listeners, for the daemon to adopt).

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::wait;

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

/// The children of each of `servers` (gunicorn's and nginx's workers), once each has
/// `per_server` of them, waiting at most `limit`.
pub fn workers_of(servers: &[u32], per_server: usize, limit: Duration) -> Result<BTreeSet<u32>> {
    let mut all = BTreeSet::new();
    wait::until(
        limit,
        format!("{per_server} workers of each of {servers:?}"),
        || {
            all = servers.iter().flat_map(|&s| children(s)).collect();
            servers.iter().all(|&s| children(s).len() == per_server)
        },
    )?;
    Ok(all)
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A server started on its own (no `spawn`), in a process group of its own, its output in a
/// log file: it and every worker it started are killed on drop.
pub struct Running {
    child: Child,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Running {
    /// Starts `cmd` with its output in `log`.
    pub fn start(mut cmd: Command, log: &Path) -> Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The server's first process (nginx's and gunicorn's master).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far, for a failure report.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The whole group: nginx's workers outlive a killed master.
        // SAFETY: kill(2) of the process group this process started.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// nginx on `addr` with `workers` workers and `listen ... reuseport` (one listener per
/// worker, each accepted from by its worker only), configured and logging in `dir` (see
/// [`nginx_conf`]; its error log is `dir/nginx-error.log`).
pub fn nginx(dir: &Path, addr: SocketAddr, workers: usize) -> Result<Running> {
    let conf = nginx_conf(dir, addr, workers)?;
    let mut cmd = Command::new(&Server::Nginx.command()?[0]);
    cmd.arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("nginx-error.log"));
    Running::start(cmd, &dir.join("nginx.out"))
}

/// gunicorn on `addr` with `--reuse-port -w 1`, serving [`APP`] from `dir` (written there),
/// logging to `dir/NAME.out`.
pub fn gunicorn(dir: &Path, addr: SocketAddr, name: &str) -> Result<Running> {
    write_apps(dir)?;
    let command = Server::Gunicorn.command()?;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .args([
            "--reuse-port",
            "-w",
            "1",
            "-b",
            &addr.to_string(),
            "--chdir",
        ])
        .arg(dir)
        .args(["--graceful-timeout", "5", "app:wsgi"]);
    Running::start(cmd, &dir.join(format!("{name}.out")))
}
