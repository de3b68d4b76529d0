//! Real processes around the daemon: a `reuseport run` daemon and `reuseport echo` workers on
//! one address, as the integration tests, the bench and the demo run them. Each process logs
//! to its own file in the fixture's private directory; everything started is killed (and the
//! directory and pins removed) when the [`Fixture`] drops.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use reuseport_steer::Policy;
use reuseport_worker::{ControlClient, GroupStatus, Reply, Request, WorkerStatus};

use crate::{
    binary,
    loadgen::{self, Load},
    netns, wait,
};

/// How long a process may take to come up (the daemon's socket, a worker's registration).
pub const START_LIMIT: Duration = Duration::from_secs(15);

/// A daemon (maybe) and workers on one address, killed on drop.
pub struct Fixture {
    pub addr: SocketAddr,
    /// Private to the fixture: logs, the control socket, binaries exposed to other uids.
    pub dir: PathBuf,
    pub control: PathBuf,
    /// The daemon's pin directory, private to the fixture (unless it runs with `--no-pin`).
    pub pins: PathBuf,
    /// Whether `echo` workers register (else `--no-register`: the kernel's hash alone).
    pub register: bool,
    /// `RUST_LOG` of the processes started, when set.
    pub rust_log: Option<String>,
    /// The processes' binary.
    bin: PathBuf,
    daemon: Option<Child>,
    /// The workers in start order, with their names (their log files).
    pub workers: Vec<Child>,
    names: Vec<String>,
    /// Stuck detection off unless the daemon's flags ask for health behaviour (tests made
    /// with [`Fixture::new`] and friends, which count exact shares).
    pub exact: bool,
}

impl Fixture {
    /// A test's fixture: enters a fresh network namespace and starts a daemon for
    /// 127.0.0.1:8080 with its pins in a directory of its own.
    pub fn new(name: &str) -> Result<Self> {
        Self::with_daemon_args(name, &[])
    }

    /// [`Fixture::new`] with extra flags for `reuseport run`.
    pub fn with_daemon_args(name: &str, extra: &[&str]) -> Result<Self> {
        Self::start(name, "127.0.0.1:8080".parse()?, extra)
    }

    /// [`Fixture::new`] for a group on another address.
    pub fn new_on(name: &str, addr: SocketAddr) -> Result<Self> {
        Self::start(name, addr, &[])
    }

    fn start(name: &str, addr: SocketAddr, extra: &[&str]) -> Result<Self> {
        netns::fresh()?;
        let mut f = Self::on(addr, &format!("test-{name}"), binary::locate()?)?;
        f.exact = true;
        f.start_daemon(extra)?;
        Ok(f)
    }

    /// No process yet: processes of `bin` for `addr`, in a directory named after `label`. The
    /// caller is in the namespace it wants them in.
    pub fn on(addr: SocketAddr, label: &str, bin: PathBuf) -> Result<Self> {
        let id = format!("reuseport-{label}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Whatever the umask: another uid must reach the binaries exposed in it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            addr,
            control: dir.join("ctl/control.sock"),
            pins: PathBuf::from("/sys/fs/bpf").join(id),
            dir,
            register: true,
            rust_log: None,
            bin,
            daemon: None,
            workers: Vec::new(),
            names: Vec::new(),
            exact: false,
        })
    }

    /// A command of the fixture's binary, its output not captured unless asked.
    fn command(&self, log: &str) -> Result<Command> {
        let log = fs::File::create(self.dir.join(format!("{log}.log")))?;
        let mut cmd = Command::new(&self.bin);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        if let Some(level) = &self.rust_log {
            cmd.env("RUST_LOG", level);
        }
        Ok(cmd)
    }

    /// Starts `reuseport run` for the address with the control socket and pins of the fixture
    /// (no pins with `--no-pin` among `extra`), and waits until it answers.
    pub fn start_daemon(&mut self, extra: &[&str]) -> Result<()> {
        let mut cmd = self.command("daemon")?;
        cmd.arg("run")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--control")
            .arg(&self.control);
        if !extra.contains(&"--no-pin") {
            cmd.arg("--pin-dir").arg(&self.pins);
        }
        // A test that does not ask for health behaviour counts exact shares: on a loaded
        // machine a worker caught between two accepts could be judged stuck and evicted (the
        // default), which bends them. Such tests get no stuck detection.
        let health = ["--stuck-ms", "--on-stuck", "--sample-ms"];
        if self.exact && !extra.iter().any(|a| health.contains(a)) {
            cmd.args(["--stuck-ms", "600000"]);
        }
        cmd.args(extra);
        self.daemon = Some(
            cmd.spawn()
                .with_context(|| format!("starting {} run", self.bin.display()))?,
        );
        wait::until(START_LIMIT, "the daemon answering on its socket", || {
            ControlClient::connect(&self.control).is_ok()
        })
    }

    /// Starts `reuseport run --config FILE` with the control socket and pins of the fixture
    /// (its groups are the file's), and waits until it answers.
    pub fn start_daemon_with_config(&mut self, file: &std::path::Path) -> Result<()> {
        let mut cmd = self.command("daemon")?;
        cmd.arg("run")
            .arg("--config")
            .arg(file)
            .arg("--control")
            .arg(&self.control)
            .arg("--pin-dir")
            .arg(&self.pins);
        self.daemon = Some(
            cmd.spawn()
                .with_context(|| format!("starting {} run", self.bin.display()))?,
        );
        wait::until(START_LIMIT, "the daemon answering on its socket", || {
            ControlClient::connect(&self.control).is_ok()
        })
    }

    /// Sends `signal` to the daemon and reaps it.
    pub fn stop_daemon(&mut self, signal: libc::c_int) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            self::signal(d.id(), signal)?;
            d.wait()?;
        }
        Ok(())
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Starts a `reuseport echo` worker; returns its pid.
    pub fn echo(&mut self, name: &str) -> Result<u32> {
        self.echo_with(name, &[])
    }

    /// [`Fixture::echo`] with more flags for `reuseport echo` (e.g. `--service-ms fixed:5`, a
    /// worker slower than the others).
    pub fn echo_with(&mut self, name: &str, extra: &[&str]) -> Result<u32> {
        let mut cmd = self.command(name)?;
        cmd.args(["echo", "--listen", &self.addr.to_string(), "--name", name])
            .args(extra)
            .arg("--control")
            .arg(&self.control);
        if !self.register {
            cmd.arg("--no-register");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} echo", self.bin.display()))?;
        let pid = child.id();
        self.workers.push(child);
        self.names.push(name.to_owned());
        Ok(pid)
    }

    /// Starts `reuseport spawn` for the fixture's address and control socket, then `args` (its
    /// own options, `--`, and the server's command line); returns its pid. It is listed among
    /// the workers, logging to `name.log`, and killed on drop (its server gets SIGTERM then).
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&mut self, name: &str, args: &[S]) -> Result<u32> {
        let mut cmd = self.command(name)?;
        cmd.args(["spawn", "--listen", &self.addr.to_string()])
            .arg("--control")
            .arg(&self.control)
            .args(args);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} spawn", self.bin.display()))?;
        let pid = child.id();
        self.workers.push(child);
        self.names.push(name.to_owned());
        Ok(pid)
    }

    /// Starts `n` echo workers named `w0`, `w1`, ...; returns their pids in that order.
    pub fn echo_workers(&mut self, n: usize) -> Result<Vec<u32>> {
        (0..n).map(|i| self.echo(&format!("w{i}"))).collect()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(Child::id).collect()
    }

    /// Kills the worker started `index`-th (SIGKILL) and reaps it.
    pub fn kill_worker(&mut self, index: usize) -> Result<()> {
        let child = self.workers.get_mut(index).context("no such worker")?;
        child.kill().context("killing a worker")?;
        child.wait().context("reaping a worker")?;
        Ok(())
    }

    /// Runs the CLI with `args` against the fixture's daemon.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(&self.bin)
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()?)
    }

    /// A command of the fixture's binary run as `uid` (and gid `uid`), from a copy that uid can
    /// reach wherever the checkout lives (a clone under /root is mode 0700).
    pub fn command_as(&self, uid: u32) -> Result<Command> {
        let bin = binary::runnable_by_all(&self.bin, &self.dir.join("bin"))
            .with_context(|| format!("exposing {} to uid {uid}", self.bin.display()))?;
        let mut cmd = Command::new(bin);
        cmd.uid(uid).gid(uid);
        Ok(cmd)
    }

    /// One request to the daemon.
    pub fn request(&self, request: &Request) -> Result<Reply> {
        Ok(ControlClient::connect(&self.control)?.request(request)?)
    }

    /// The status of the daemon's (first) group.
    pub fn status(&self) -> Result<GroupStatus> {
        self.request(&Request::Status)?
            .groups
            .and_then(|g| g.into_iter().next())
            .context("no group in the daemon's status")
    }

    pub fn set_policy(&self, policy: Policy) -> Result<()> {
        self.request(&Request::PolicySet {
            policy: policy.into(),
            group: None,
        })?;
        Ok(())
    }

    /// Waits until the daemon lists `n` workers; returns that status.
    pub fn wait_workers(&self, n: usize) -> Result<GroupStatus> {
        self.wait_status(START_LIMIT, &format!("{n} workers registered"), |s| {
            s.workers.len() == n
        })
    }

    /// Waits (at most `limit`) until the daemon lists exactly the workers `pids`, each by its
    /// own pid (a slot taken over from an earlier daemon shows pid 0 until its worker registers
    /// again); returns that status.
    pub fn wait_pids(&self, limit: Duration, pids: &[u32]) -> Result<GroupStatus> {
        let want: BTreeSet<u32> = pids.iter().copied().collect();
        self.wait_status(limit, &format!("workers {want:?} registered"), |s| {
            s.workers.len() == want.len()
                && s.workers.iter().map(|w| w.pid).collect::<BTreeSet<_>>() == want
        })
    }

    /// Waits until `n` workers are registered and active; returns that status.
    pub fn wait_active(&self, n: usize) -> Result<GroupStatus> {
        self.wait_status(START_LIMIT, &format!("{n} workers active"), |s| {
            s.workers
                .iter()
                .filter(|w| w.state == reuseport_worker::protocol::WorkerState::Active)
                .count()
                == n
        })
    }

    /// Waits (at most `limit`) until a worker satisfies `found` (`what` names it in the
    /// error); returns it.
    pub fn wait_worker(
        &self,
        limit: Duration,
        what: &str,
        found: impl Fn(&WorkerStatus) -> bool,
    ) -> Result<WorkerStatus> {
        let status = self.wait_status(limit, what, |s| s.workers.iter().any(&found))?;
        status
            .workers
            .into_iter()
            .find(found)
            .context("the worker went away")
    }

    /// Waits (at most `limit`) until the status satisfies `done`; returns that status. The last
    /// status seen is in the error.
    pub fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&GroupStatus) -> bool,
    ) -> Result<GroupStatus> {
        let mut last = None;
        wait::until(limit, what, || {
            last = self.status().ok();
            last.as_ref().is_some_and(&done)
        })
        .with_context(|| format!("last status {last:?}"))?;
        last.context("no status")
    }

    /// Waits until `n` different workers have answered a request (they bind asynchronously):
    /// 1 when the port answering is enough.
    pub fn wait_answers(&self, n: usize) -> Result<()> {
        let mut seen = BTreeSet::new();
        wait::until(
            START_LIMIT,
            format!("{n} workers answering on {}", self.addr),
            || {
                if let Ok(pid) = loadgen::request(self.addr, "/", Duration::from_secs(1)) {
                    seen.insert(pid);
                }
                seen.len() >= n
            },
        )
    }

    /// Makes `n` requests on new connections; panics on any failure.
    pub fn load_ok(&self, n: usize) -> std::collections::BTreeMap<u32, u64> {
        loadgen::tally_ok(&Load::new(self.addr, n, 4).run())
    }

    /// Makes `expected.len() * per_pid` requests on new connections and checks they were
    /// served in exact round-robin by the pids `expected`, `per_pid` each.
    pub fn assert_round_robin(&self, expected: &BTreeSet<u32>, per_pid: u64) -> Result<()> {
        let counts = self.load_ok(expected.len() * per_pid as usize);
        let pids: BTreeSet<u32> = counts.keys().copied().collect();
        anyhow::ensure!(
            &pids == expected,
            "served by {pids:?}, expected {expected:?}\n{}",
            self.logs()
        );
        let values: Vec<u64> = counts.values().copied().collect();
        anyhow::ensure!(
            crate::expect::is_exact_round_robin(&values) && values.iter().all(|&c| c == per_pid),
            "not exact: {counts:?}; status {:?}",
            self.status()
        );
        Ok(())
    }

    /// Every process's log, for a failure report.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let names = self.names.iter().map(String::as_str);
        for name in std::iter::once("daemon").chain(names) {
            if let Ok(text) = fs::read_to_string(self.dir.join(format!("{name}.log"))) {
                let _ = writeln!(out, "--- {name} ---\n{text}");
            }
        }
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in self.workers.iter_mut().chain(self.daemon.as_mut()) {
            // A stopped worker dies of SIGKILL too.
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(&self.pins);
    }
}

/// A worker's state as the wire and the CLI spell it (`active`, `draining`, `stuck`, ...),
/// whatever type the status gives it.
pub fn state(worker: &WorkerStatus) -> String {
    match serde_json::to_value(worker.state) {
        Ok(serde_json::Value::String(state)) => state,
        other => format!("{other:?}"),
    }
}

/// Sends `signal` to `pid`, a process this one started (SIGSTOP makes a worker stuck, SIGCONT
/// frees it).
pub fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) with a pid of a child this process started.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("kill()");
    }
    Ok(())
}
