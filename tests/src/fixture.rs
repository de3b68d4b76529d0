//! Real processes around the daemon: a `reuseport run` daemon and `reuseport echo` workers
//! in the test's network namespace, killed (and their pins removed) when the fixture drops.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use reuseport_steer::netns;
use reuseport_testing::loadgen::{tally, Load};
use reuseport_worker::{ControlClient, GroupStatus, Request};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The `reuseport` binary cargo built beside this test.
pub fn bin() -> PathBuf {
    reuseport_testing::binary::locate().unwrap_or_else(|e| panic!("{e}"))
}

/// Processes of one test, killed on drop; and the test's private directory.
pub struct Fixture {
    pub dir: PathBuf,
    /// The daemon's pin directory, private to the test.
    pub pins: PathBuf,
    pub control: PathBuf,
    pub addr: std::net::SocketAddr,
    pub daemon: Option<Child>,
    pub workers: Vec<Child>,
}

impl Fixture {
    /// Enters a fresh namespace and starts a daemon for 127.0.0.1:8080.
    pub fn new(name: &str) -> Result<Self> {
        Self::with_daemon_args(name, &[])
    }

    pub fn with_daemon_args(name: &str, extra: &[&str]) -> Result<Self> {
        netns::enter_new()?;
        let dir =
            std::env::temp_dir().join(format!("reuseport-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut f = Self {
            control: dir.join("ctl/control.sock"),
            pins: PathBuf::from(format!(
                "/sys/fs/bpf/reuseport-test-{name}-{}",
                std::process::id()
            )),
            dir,
            addr: "127.0.0.1:8080".parse()?,
            daemon: None,
            workers: Vec::new(),
        };
        f.start_daemon(extra)?;
        Ok(f)
    }

    pub fn start_daemon(&mut self, extra: &[&str]) -> Result {
        let mut args = vec![
            "run".to_owned(),
            "--listen".into(),
            self.addr.to_string(),
            "--control".into(),
            self.control.display().to_string(),
        ];
        if !extra.contains(&"--no-pin") {
            args.extend(["--pin-dir".into(), self.pins.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::fs::File::create(self.dir.join("daemon.log"))?;
        self.daemon = Some(
            Command::new(bin())
                .args(&args)
                .stdin(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        wait_until(Duration::from_secs(10), || {
            ControlClient::connect(&self.control).is_ok()
        })?;
        Ok(())
    }

    pub fn stop_daemon(&mut self, signal: libc::c_int) -> Result {
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(d.id() as i32, signal) };
            d.wait()?;
        }
        Ok(())
    }

    /// Starts a `reuseport echo` worker; returns its pid.
    pub fn echo(&mut self, name: &str) -> Result<u32> {
        let child = Command::new(bin())
            .args([
                "echo",
                "--listen",
                &self.addr.to_string(),
                "--name",
                name,
                "--control",
                &self.control.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.workers.push(child);
        Ok(pid)
    }

    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(bin())
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()?)
    }

    pub fn status(&self) -> Result<GroupStatus> {
        let reply = ControlClient::connect(&self.control)?.request(&Request::Status)?;
        Ok(reply
            .groups
            .and_then(|g| g.into_iter().next())
            .ok_or("no group in status")?)
    }

    pub fn wait_workers(&self, n: usize) -> Result<GroupStatus> {
        let mut last = None;
        wait_until(Duration::from_secs(10), || {
            last = self.status().ok();
            last.as_ref().is_some_and(|s| s.workers.len() == n)
        })
        .map_err(|e| format!("{e}: last status {last:?}"))?;
        Ok(last.ok_or("no status")?)
    }

    /// Makes `n` requests on new connections; panics on any failure.
    pub fn load_ok(&self, n: usize) -> std::collections::BTreeMap<u32, u64> {
        let outcomes = Load::new(self.addr, n, 4).run();
        let (counts, errors) = tally(&outcomes);
        assert!(
            errors.is_empty(),
            "{} failed: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        counts
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in self.workers.iter_mut().chain(self.daemon.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("condition not met within {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
