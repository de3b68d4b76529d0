//! `reuseport spawn`: runs an unmodified server on listeners of the group. It binds K
//! SO_REUSEPORT listeners, registers them with the daemon on the server's behalf (naming the
//! server's pid), and starts the server with them at descriptors 3.., announced the way the
//! server understands: systemd socket activation (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES),
//! nginx's `NGINX` variable, or `{fd}` in the arguments alone. It then stays as a small supervisor:
//! it forwards the usual control signals, keeps the registrations alive across daemon restarts,
//! warns when the server does not accept from its sockets, and exits with the server's status.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use log::{info, warn};
use reuseport_worker::{
    bind_listener_with, control_path, group_v6only, ClientError, ControlClient, Registration,
    Request, WorkerOptions,
};

/// The first descriptor of the passed listeners, as systemd and nginx expect.
const FIRST_FD: RawFd = 3;
/// More listeners than any server has worker processes.
const MAX_SOCKETS: i64 = 256;
/// The listeners' backlog (the server may set its own with `listen()` again).
const BACKLOG: i32 = 1024;
/// How long connections may wait with no accept before the server is said to ignore them.
const STALL: Duration = Duration::from_secs(2);
/// How often the supervisor looks at the child and the queues.
const TICK: Duration = Duration::from_millis(100);
/// The signals passed on to the server.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];
/// Replaced by the first descriptor's number in the server's arguments.
const FD_PLACEHOLDER: &str = "{fd}";

/// How the server learns which descriptors are its listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pass {
    /// Socket activation: LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES (gunicorn, uvicorn --fd {fd},
    /// anything using sd_listen_fds)
    Systemd,
    /// NGINX="3;4;...;": nginx takes them as the sockets of its `listen ... reuseport`
    Nginx,
    /// No variable: the arguments name the descriptor with {fd} (gunicorn -b fd://{fd}, which
    /// fails when it also finds LISTEN_FDS)
    Fd,
}

#[derive(clap::Args)]
pub struct SpawnArgs {
    /// Address of the group [default: the daemon's group, when it serves exactly one]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// How many listeners the server gets, at descriptors 3.. (nginx: one per worker process)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_SOCKETS))]
    sockets: u32,
    /// How the server is told about its listeners
    #[arg(long = "pass", value_enum, default_value_t = Pass::Systemd)]
    pass: Pass,
    /// Name of the worker in `status` [default: the command's name; NAME-0.. with several sockets]
    #[arg(long)]
    name: Option<String>,
    /// Weight of each listener for the weighted policy
    #[arg(long)]
    weight: Option<u32>,
    /// IPv6: IPv6-only listeners (IPV6_V6ONLY=1), for a daemon run with --v6only [default: the
    /// group's kind as the daemon reports it, else dual-stack]
    #[arg(long)]
    v6only: bool,
    #[command(flatten)]
    control: crate::Control,
    /// The server and its arguments, after `--`; `{fd}` in the arguments becomes 3
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Starts the server and supervises it; exits the process with the server's status (128 +
/// signal when a signal killed it, as a shell reports it). Returns only on a setup error.
pub fn run(args: SpawnArgs) -> anyhow::Result<()> {
    let control = control_path(args.control.control.as_deref());
    let listen = match args.listen {
        Some(addr) => addr,
        None => daemon_group(&control)?,
    };
    let (program, arguments) = args.command.split_first().context("no command given")?;
    let path = resolve(program)?;
    let shown = command_name(program, arguments);
    let k = args.sockets as usize;
    let base = args.name.clone().unwrap_or_else(|| shown.clone());
    let names: Vec<String> = match k {
        1 => vec![base],
        _ => (0..k).map(|i| format!("{base}-{i}")).collect(),
    };

    // The kind of socket the group needs: asked of the daemon, which registers them anyway.
    let v6only =
        listen.is_ipv6() && (args.v6only || group_v6only(&control, listen).unwrap_or(false));
    let listeners = (0..k)
        .map(|_| bind_listener_with(listen, BACKLOG, v6only))
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("binding {k} SO_REUSEPORT listener(s) on {listen}"))?;
    let fds = place(listeners).context("placing the listeners at descriptors 3..")?;
    // Before any thread exists (the registrations start theirs after the fork), so every
    // thread has them blocked and they wait for the supervisor loop to pass them on.
    let signals = block_signals()?;
    let image = Image::new(&path, program, arguments, args.pass, &names)?;
    let child = Child::fork(&image, fds.len())?;

    let options = |name: &String| WorkerOptions {
        control: Some(control.clone()),
        name: Some(name.clone()),
        weight: args.weight,
        ..WorkerOptions::default()
    };
    let registrations = fds
        .iter()
        .zip(&names)
        .map(|(fd, name)| Registration::start_for(fd, &options(name), child.pid as u32))
        .collect::<Result<Vec<_>, ClientError>>();
    let registrations = match registrations {
        Ok(r) => r,
        Err(e) => {
            child.abort();
            return Err(e).context(format!("registering the listeners of {shown}"));
        }
    };
    child
        .exec()
        .with_context(|| format!("starting {}", path.display()))?;
    info!(
        "started {shown} (pid {}) with {k} listener(s) on {listen} at descriptors {}",
        child.pid,
        descriptor_list(k),
    );

    let code = supervise(&child, &signals, &fds, &shown, args.pass);
    drop(registrations);
    std::process::exit(code)
}

/// What to call the server in logs and (by default) in `status`: the program's file name, or
/// the module of `python3 -m MODULE`.
fn command_name(program: &OsStr, arguments: &[OsString]) -> String {
    let file = Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy();
    match arguments {
        [flag, module, ..] if file.starts_with("python") && flag == "-m" => {
            module.to_string_lossy().into_owned()
        }
        _ => file.into_owned(),
    }
}

/// The group of the running daemon, when it serves exactly one.
fn daemon_group(control: &Path) -> anyhow::Result<SocketAddr> {
    let reply = ControlClient::connect(control)
        .and_then(|mut c| c.request(&Request::Status))
        .context("--listen is needed unless a daemon with one group is running")?;
    let groups: Vec<SocketAddr> = reply
        .groups
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.listen)
        .collect();
    match groups.as_slice() {
        [one] => Ok(*one),
        _ => bail!(
            "the daemon serves {} groups ({}): choose one with --listen ADDR:PORT",
            groups.len(),
            groups
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The program's path, found in PATH as a shell would (resolved before the fork, where the
/// child can no longer allocate).
fn resolve(program: &OsStr) -> anyhow::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .with_context(|| {
            format!(
                "{} not found in PATH: install it, or give its full path",
                program.to_string_lossy()
            )
        })
}

fn is_executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string.
    path.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

/// Moves the listeners to descriptors 3.. of this (still single-threaded) process, close-on-exec
/// until the child clears it: with those numbers taken, nothing opened before the exec (the
/// pipes to the child) can land among them, and whatever was inherited there is replaced.
fn place(listeners: Vec<TcpListener>) -> io::Result<Vec<OwnedFd>> {
    let end = FIRST_FD + listeners.len() as RawFd;
    // Above the range first, so that placing one never closes another.
    let high = listeners
        .iter()
        .map(|l| {
            // SAFETY: duplicates a descriptor we own.
            let fd = unsafe { libc::fcntl(l.as_raw_fd(), libc::F_DUPFD_CLOEXEC, end) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor, ours alone.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect::<io::Result<Vec<_>>>()?;
    drop(listeners);
    high.iter()
        .enumerate()
        .map(|(i, fd)| {
            let target = FIRST_FD + i as RawFd;
            // SAFETY: dup3 onto a number no object of this process owns.
            if unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: dup3 made `target` a descriptor of ours.
            Ok(unsafe { OwnedFd::from_raw_fd(target) })
        })
        .collect()
}

/// "3", or "3..6".
fn descriptor_list(k: usize) -> String {
    match k {
        1 => FIRST_FD.to_string(),
        _ => format!("{FIRST_FD}..{}", FIRST_FD + k as RawFd - 1),
    }
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset with valid signal numbers.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the forwarded signals and SIGCHLD in this thread (and so in every thread it starts);
/// returns the set to wait for.
fn block_signals() -> io::Result<libc::sigset_t> {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    let set = sigset(&all);
    // SAFETY: a valid set; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(set)
}

/// Everything `execve` needs, built before the fork: the child may not allocate.
struct Image {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    /// `LISTEN_PID=` followed by room for the child's pid, which only the child knows...
    _listen_pid: Vec<u8>,
    /// ...and where in it the child writes it (null without LISTEN_PID).
    pid_digits: *mut u8,
    envp_ptrs: Vec<*const libc::c_char>,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
const LISTEN_PID_LEN: usize = LISTEN_PID_PREFIX.len() + 24;

impl Image {
    fn new(
        path: &Path,
        program: &OsStr,
        arguments: &[OsString],
        pass: Pass,
        names: &[String],
    ) -> anyhow::Result<Self> {
        let cstring = |bytes: Vec<u8>| {
            CString::new(bytes).context("an argument or variable contains a NUL byte")
        };
        let first = FIRST_FD.to_string();
        let mut argv = vec![cstring(program.as_bytes().to_vec())?];
        for a in arguments {
            let a = a.to_string_lossy();
            let replaced = match a.contains(FD_PLACEHOLDER) {
                true => a.replace(FD_PLACEHOLDER, &first).into_bytes(),
                false => a.into_owned().into_bytes(),
            };
            argv.push(cstring(replaced)?);
        }
        let ours = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NGINX"];
        let mut envp = std::env::vars_os()
            .filter(|(k, _)| !ours.iter().any(|o| k == o))
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                cstring(kv)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let k = names.len();
        let mut listen_pid = match pass {
            Pass::Systemd => {
                envp.push(cstring(format!("LISTEN_FDS={k}").into_bytes())?);
                envp.push(cstring(
                    format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes(),
                )?);
                let mut buf = vec![0u8; LISTEN_PID_LEN];
                buf[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
                buf
            }
            Pass::Nginx => {
                let fds: String = (0..k)
                    .map(|i| format!("{};", FIRST_FD + i as RawFd))
                    .collect();
                envp.push(cstring(format!("NGINX={fds}").into_bytes())?);
                Vec::new()
            }
            Pass::Fd => Vec::new(),
        };
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|e| e.as_ptr()).collect();
        let mut pid_digits = std::ptr::null_mut();
        if !listen_pid.is_empty() {
            envp_ptrs.push(listen_pid.as_ptr().cast());
            // SAFETY: within the buffer, which has room for the digits and a NUL.
            pid_digits = unsafe { listen_pid.as_mut_ptr().add(LISTEN_PID_PREFIX.len()) };
        }
        envp_ptrs.push(std::ptr::null());
        Ok(Self {
            path: cstring(path.as_os_str().as_bytes().to_vec())?,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            _listen_pid: listen_pid,
            pid_digits,
            envp_ptrs,
        })
    }
}

/// The server's process, forked but held before `execve` until its listeners are registered.
struct Child {
    pid: libc::pid_t,
    /// Written once to let the child exec.
    go: OwnedFd,
    /// Carries the errno of a failed `execve`; end of file once the exec succeeded.
    report: OwnedFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 gave us both.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Child {
    fn fork(image: &Image, sockets: usize) -> anyhow::Result<Self> {
        let (go_read, go_write) = pipe().context("pipe")?;
        let (report_read, report_write) = pipe().context("pipe")?;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: this process is single-threaded here; the child runs only async-signal-safe
        // calls on memory prepared before the fork, then execs or exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: in the child of a single-threaded fork.
            unsafe {
                libc::close(go_write.as_raw_fd());
                exec_child(
                    image,
                    sockets,
                    parent,
                    go_read.as_raw_fd(),
                    report_write.as_raw_fd(),
                )
            }
        }
        drop((go_read, report_write));
        Ok(Self {
            pid,
            go: go_write,
            report: report_read,
        })
    }

    /// Lets the child exec; fails with the reason the exec failed.
    fn exec(&self) -> io::Result<()> {
        // SAFETY: one byte from a valid buffer.
        let n = unsafe { libc::write(self.go.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
        let mut errno = [0u8; 4];
        let n = loop {
            // SAFETY: reads into a buffer of 4 bytes.
            let n = unsafe { libc::read(self.report.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        if n == 0 {
            return Ok(());
        }
        self.wait();
        Err(match n {
            4 => io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
            _ => io::Error::other("the child failed before exec"),
        })
    }

    /// Kills the held child (its registration was refused) and reaps it.
    fn abort(&self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.wait();
    }

    /// Waits for the child to end; its status.
    fn wait(&self) -> libc::c_int {
        let mut status = 0;
        // SAFETY: our own child; status is a valid out pointer.
        while unsafe { libc::waitpid(self.pid, &mut status, 0) } < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        status
    }

    /// The child's exit code as a shell gives it, once it ended.
    fn exited(&self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: our own child; status is a valid out pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        (r == self.pid).then(|| exit_code(status))
    }
}

/// A wait status as a shell reports it: the exit code, or 128 + the signal that killed it.
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// The child between fork and exec: only async-signal-safe calls, no allocation.
///
/// # Safety
/// Runs in the child of a fork of a single-threaded process, with `image` prepared before.
unsafe fn exec_child(
    image: &Image,
    sockets: usize,
    parent: libc::pid_t,
    go: RawFd,
    report: RawFd,
) -> ! {
    // The server goes when the supervisor goes (killed included), instead of serving on
    // listeners nobody registers any more.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    if libc::getppid() != parent {
        libc::_exit(1);
    }
    let mut byte = 0u8;
    loop {
        let n = libc::read(go, (&mut byte as *mut u8).cast(), 1);
        if n == 1 {
            break;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // The supervisor gave up (its registration was refused).
        libc::_exit(1);
    }
    for i in 0..sockets {
        libc::fcntl(FIRST_FD + i as RawFd, libc::F_SETFD, 0);
    }
    let envp = image.envp_ptrs.as_ptr();
    if !image.pid_digits.is_null() {
        // This process's own copy of the buffer after the fork: the pid is written in place.
        write_decimal(image.pid_digits, libc::getpid() as u32);
    }
    let empty = sigset(&[]);
    libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    // Rust ignores SIGPIPE; the server gets the default, as from a shell.
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    libc::execve(image.path.as_ptr(), image.argv_ptrs.as_ptr(), envp);
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    libc::write(report, errno.to_ne_bytes().as_ptr().cast(), 4);
    libc::_exit(127)
}

/// Writes `n` in decimal and a NUL at `out` (at most 11 bytes).
///
/// # Safety
/// `out` has room for 11 bytes.
unsafe fn write_decimal(out: *mut u8, n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    let mut rest = n;
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for i in 0..len {
        *out.add(i) = digits[len - 1 - i];
    }
    *out.add(len) = 0;
}

/// Passes signals on and watches the queues until the child ends; its exit code.
fn supervise(
    child: &Child,
    signals: &libc::sigset_t,
    fds: &[OwnedFd],
    shown: &str,
    pass: Pass,
) -> i32 {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: TICK.as_nanos() as libc::c_long,
    };
    let mut stalls: Vec<Stall> = fds.iter().map(|_| Stall::default()).collect();
    let mut warned = false;
    loop {
        // SAFETY: a valid set and timeout; no siginfo wanted.
        let signal = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &timeout) };
        if FORWARDED.contains(&signal) {
            // SAFETY: our own child, not reaped yet (it is reaped only below).
            unsafe { libc::kill(child.pid, signal) };
        }
        if let Some(code) = child.exited() {
            info!("{shown} (pid {}) exited: status {code}", child.pid);
            return code;
        }
        if warned {
            continue;
        }
        let now = Instant::now();
        for (i, (fd, stall)) in fds.iter().zip(&mut stalls).enumerate() {
            let Ok(queue) = accept_queue(fd) else {
                continue;
            };
            if stall.observe(queue, now) && !warned {
                warned = true;
                warn!(
                    "{shown} (pid {}) has accepted nothing from descriptor {} for {} s while \
                     {queue} connection(s) wait in its queue: it does not use the socket it \
                     was given; {}",
                    child.pid,
                    FIRST_FD + i as RawFd,
                    STALL.as_secs(),
                    hint(pass)
                );
            }
        }
    }
}

/// How to make a server take its sockets.
fn hint(pass: Pass) -> &'static str {
    match pass {
        Pass::Systemd => {
            "a server must take LISTEN_FDS (gunicorn without --reuse-port or -b), or its \
             descriptor in its arguments (uvicorn --fd {fd}, gunicorn -b fd://{fd}), or use \
             --pass nginx for nginx"
        }
        Pass::Nginx => {
            "nginx needs `listen ADDR:PORT reuseport;` for the group's address and \
             worker_processes equal to --sockets"
        }
        Pass::Fd => "its arguments must name the descriptor with {fd} (uvicorn --fd {fd})",
    }
}

/// Connections waiting in a listener's accept queue (TCP_INFO's `tcpi_unacked` is the accept
/// queue's length for a listening socket).
fn accept_queue(fd: &OwnedFd) -> io::Result<u32> {
    // SAFETY: tcp_info is plain data.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

/// Whether a queue has waited without progress for [`STALL`]: the queue is found non-empty
/// and never shrinking.
#[derive(Debug, Default)]
struct Stall {
    since: Option<Instant>,
    last: u32,
}

impl Stall {
    /// Takes one sample; true once the queue has been waiting with no accept for [`STALL`].
    fn observe(&mut self, queue: u32, now: Instant) -> bool {
        if queue == 0 || queue < self.last {
            self.since = None;
        } else if self.since.is_none() {
            self.since = Some(now);
        }
        self.last = queue;
        self.since.is_some_and(|s| now.duration_since(s) >= STALL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_that_never_shrinks_is_a_stall_one_that_moves_is_not() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut stall = Stall::default();
        assert!(!stall.observe(1, at(0)));
        assert!(!stall.observe(3, at(1000)));
        assert!(stall.observe(3, at(2000)));

        let mut moving = Stall::default();
        for (i, queue) in [2, 3, 1, 4, 2, 5, 0, 1].iter().enumerate() {
            assert!(!moving.observe(*queue, at(i as u64 * 600)));
        }
    }

    #[test]
    fn an_exit_status_reads_as_a_shell_reports_it() {
        // Wait statuses as the kernel encodes them: code << 8, or the signal number.
        assert_eq!(exit_code(7 << 8), 7);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(libc::SIGTERM), 143);
    }

    #[test]
    fn pids_are_written_in_decimal_with_a_terminating_nul() {
        let mut buf = [0xffu8; 11];
        for (n, text) in [
            (0u32, "0"),
            (7, "7"),
            (4_194_304, "4194304"),
            (u32::MAX, "4294967295"),
        ] {
            // SAFETY: 11 bytes of room.
            unsafe { write_decimal(buf.as_mut_ptr(), n) };
            assert_eq!(&buf[..text.len()], text.as_bytes());
            assert_eq!(buf[text.len()], 0);
        }
    }

    #[test]
    fn a_server_is_named_by_its_program_or_its_python_module() {
        let name = |program: &str, args: &[&str]| {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            command_name(OsStr::new(program), &args)
        };
        assert_eq!(name("/usr/sbin/nginx", &["-c", "x.conf"]), "nginx");
        assert_eq!(name("gunicorn", &["app:app"]), "gunicorn");
        assert_eq!(
            name("/usr/bin/python3", &["-m", "uvicorn", "--fd"]),
            "uvicorn"
        );
        assert_eq!(name("python3", &["-m"]), "python3");
        assert_eq!(name("python3", &["app.py"]), "python3");
    }

    #[test]
    fn a_descriptor_range_is_named_by_its_ends() {
        assert_eq!(descriptor_list(1), "3");
        assert_eq!(descriptor_list(4), "3..6");
    }
}
