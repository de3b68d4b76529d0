//! A registered worker that accepts nothing, in a process of its own (the test binary run again
//! as a [`crate::child`]): connections sent to it wait in its accept queue, so a test can check
//! that none of them is lost when the worker then exits, or shuts its listener down, by itself,
//! as a real worker does, while the daemon holds its copy of the socket.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::fd::AsRawFd,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, ExitStatus, Stdio},
};

use anyhow::{bail, Context, Result};
use reuseport_worker::WorkerOptions;

use crate::child;

/// The child's role.
pub const ROLE: &str = "held-worker";
const ADDR_ENV: &str = "REUSEPORT_TEST_HELD_ADDR";
const CONTROL_ENV: &str = "REUSEPORT_TEST_HELD_CONTROL";

/// The parent's handle on a held worker; killed on drop if still running.
pub struct HeldWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// The slot the daemon gave it.
    pub slot: u32,
}

impl HeldWorker {
    /// Runs test `test` (its exact name, which must start with [`serve_if_child`]) again as a
    /// worker of the group on `addr` of the daemon at `control`; returns once it registered.
    pub fn start(test: &str, addr: SocketAddr, control: &Path) -> Result<Self> {
        let mut child = child::command(test, ROLE)?
            .env(ADDR_ENV, addr.to_string())
            .env(CONTROL_ENV, control)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a held worker")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let pid = child.id();
        let mut held = Self {
            child,
            stdin,
            stdout,
            pid,
            slot: 0,
        };
        let said = held.next_report()?;
        held.slot = said
            .strip_prefix("slot ")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("the held worker did not register: {said}"))?;
        Ok(held)
    }

    /// The next line the child reported; fails once its stdout ends.
    fn next_report(&mut self) -> Result<String> {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("the held worker ended without a word");
            }
            if let Some(said) = child::reported(&line) {
                return Ok(said.to_owned());
            }
        }
    }

    fn tell(&mut self, what: &str) -> Result<()> {
        writeln!(self.stdin, "{what}").context("telling the held worker")
    }

    /// Makes it exit (status 0) with nothing closed first: the kernel closes its listener and
    /// its control connection, as for any worker that returns from main.
    pub fn exit(mut self) -> Result<ExitStatus> {
        self.tell("exit")?;
        Ok(self.child.wait()?)
    }

    /// Makes it call shutdown(2) on its listener and stay alive and registered.
    pub fn shut_down(&mut self) -> Result<()> {
        self.tell("shutdown")?;
        let said = self.next_report()?;
        if said != "shut" {
            bail!("the held worker's shutdown failed: {said}");
        }
        Ok(())
    }
}

impl Drop for HeldWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a test that [`HeldWorker::start`] runs again: when this process is that child, plays the
/// held worker (never returns when told to exit) and returns its result; `None` otherwise.
pub fn serve_if_child() -> Option<Result<()>> {
    (child::role().as_deref() == Some(ROLE)).then(serve)
}

fn serve() -> Result<()> {
    let addr: SocketAddr = std::env::var(ADDR_ENV)?.parse()?;
    let options = WorkerOptions {
        control: Some(std::env::var(CONTROL_ENV)?.into()),
        name: Some("held".into()),
        ..WorkerOptions::default()
    };
    let (listener, registration) = match reuseport_worker::listen(addr, &options) {
        Ok(registered) => registered,
        Err(e) => {
            child::report(format!("refused: {e}"));
            return Err(e.into());
        }
    };
    let slot = registration.slot().context("registered without a slot")?;
    child::report(format!("slot {slot}"));
    for line in std::io::stdin().lock().lines() {
        match line?.as_str() {
            "exit" => std::process::exit(0),
            "shutdown" => {
                // SAFETY: shutdown(2) on a socket this process owns.
                if unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
                    let e = std::io::Error::last_os_error();
                    child::report(format!("shutdown: {e}"));
                } else {
                    child::report("shut");
                }
            }
            other => child::report(format!("unknown order {other:?}")),
        }
    }
    // The parent went away.
    drop(registration);
    Ok(())
}
