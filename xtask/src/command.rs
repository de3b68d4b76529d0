//! Running child commands with their command line echoed, so a failing step is easy to redo
//! by hand.

use std::{
    ffi::OsString,
    path::Path,
    process::{Command, Output},
};

use anyhow::{bail, Context as _, Result};

/// The cargo that runs xtask (the workspace's toolchain), in `dir`.
pub fn cargo(dir: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(dir);
    cmd
}

/// `rustup run nightly <program>` (what `<program> +nightly` does), in `dir`.
pub fn nightly(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", program]).current_dir(dir);
    cmd
}

/// Runs `cmd` with inherited stdio; fails unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` and captures its output; `Err` only when it cannot be started.
pub fn output(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.output()
}

/// Captures the stdout of `cmd`, trimmed; fails with its stderr unless it exits with 0.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd).with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The command line, for messages.
pub fn show(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            line.push_str(&format!(
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    line.push_str(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}
