//! Re-running one test of the current test binary as a child process, so it can be done with
//! fewer rights (another uid, a seccomp filter) than the test process has. The child knows its
//! role from an environment variable and reports on stdout with a marker line.

use std::{
    fmt,
    os::unix::process::CommandExt,
    process::{Command, ExitStatus},
};

use anyhow::{Context, Result};

use crate::binary;

/// Environment variable that tells the re-run test which role it plays.
pub const ROLE_ENV: &str = "REUSEPORT_TEST_CHILD_ROLE";
const REPORT: &str = "child-report: ";

/// The uid/gid of `nobody`.
pub const NOBODY: u32 = 65534;

/// The role of this process, when it is a child started by [`run`].
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// Reports one line to the parent.
pub fn report(line: impl fmt::Display) {
    println!("{REPORT}{line}");
}

/// What a child did.
pub struct Child {
    pub status: ExitStatus,
    /// The lines it passed to [`report`].
    pub reports: Vec<String>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "child {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A command running test `test` (its exact name) of this binary alone with `ROLE_ENV=role`, for
/// a child the caller drives itself (its stdio as the caller sets it); [`run`] runs one to the
/// end.
pub fn command(test: &str, role: &str) -> Result<Command> {
    let exe = std::env::current_exe().context("finding the test binary")?;
    Ok(command_of(&exe, test, role))
}

fn command_of(exe: &std::path::Path, test: &str, role: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role);
    cmd
}

/// The text of a [`report`] line, if `line` (of a child's stdout) is one.
pub fn reported(line: &str) -> Option<&str> {
    // libtest prints "test <name> ... " without a newline before the test runs.
    line.split_once(REPORT).map(|(_, r)| r.trim_end())
}

/// Runs test `test` (its exact name) of this binary in a child with `ROLE_ENV=role`, as
/// `uid`/gid `uid` when given (setuid from root drops every capability). As another uid, the
/// binary runs from a place that uid can reach, wherever the checkout lives.
pub fn run(test: &str, role: &str, uid: Option<u32>) -> Result<Child> {
    let mut exe = std::env::current_exe().context("finding the test binary")?;
    let exposed = uid.map(|_| {
        std::env::temp_dir().join(format!("reuseport-child-{}-{role}", std::process::id()))
    });
    if let Some(dir) = &exposed {
        exe = binary::runnable_by_all(&exe, dir)
            .with_context(|| format!("exposing {} in {}", exe.display(), dir.display()))?;
    }
    let mut cmd = command_of(&exe, test, role);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output();
    if let Some(dir) = &exposed {
        let _ = std::fs::remove_dir_all(dir);
    }
    let out = out.with_context(|| format!("running {} as a child", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(Child {
        status: out.status,
        reports: stdout
            .lines()
            .filter_map(|l| reported(l).map(str::to_owned))
            .collect(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
