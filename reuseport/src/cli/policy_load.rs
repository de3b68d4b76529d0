//! `reuseport policy load PATH`: installs a policy program (docs/experiments.md) live; `policy
//! set BUILTIN` goes back.

use std::path::Path;

use anyhow::Context as _;
use reuseport_worker::{protocol::GroupRef, ControlClient, Request};

pub fn run(control: &Path, path: &Path, group: Option<GroupRef>) -> anyhow::Result<()> {
    // The daemon opens the file itself: give it an absolute path.
    let path = std::fs::canonicalize(path).with_context(|| {
        format!(
            "{}: build one with `cargo xtask build-policy NAME`",
            path.display()
        )
    })?;
    let reply = ControlClient::connect(control)?.request(&Request::PolicyLoad {
        path: path.to_string_lossy().into_owned(),
        group,
    })?;
    if let (Some(group), Some(program)) = (reply.group, reply.program) {
        println!("{group} policy program {program}");
    }
    Ok(())
}
