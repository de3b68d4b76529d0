//! The registry's side of `trace` and `policy_load` (docs/experiments.md): which group's trace
//! hub a client joins, and installing or removing a group's policy program.

use std::{net::SocketAddr, os::unix::fs::MetadataExt as _, path::Path, sync::Arc};

use log::info;
use reuseport_worker::{protocol::GroupRef, ErrorCode};

use super::Registry;
use crate::daemon::{refusal::Refusal, trace::TraceHub};

impl Registry {
    /// The trace hub of one group, made at its first trace client.
    pub fn trace_hub(
        &mut self,
        group: Option<&GroupRef>,
    ) -> Result<(SocketAddr, Arc<TraceHub>), Refusal> {
        let i = self.one_group(group)?;
        let entry = &mut self.groups[i];
        if entry.trace.is_none() {
            let tracer = entry.group.take_tracer().ok_or_else(|| {
                Refusal::new(
                    ErrorCode::Ebpf,
                    format!("{}: the group's trace ring buffer is gone", entry.listen),
                )
            })?;
            entry.trace = Some(Arc::new(TraceHub::new(tracer)));
        }
        let hub = entry
            .trace
            .clone()
            .ok_or_else(|| Refusal::new(ErrorCode::Ebpf, "the trace hub could not be made"))?;
        Ok((entry.listen, hub))
    }

    /// The name of the policy program installed in one group, if any.
    pub fn policy_program(&self, group: Option<&GroupRef>) -> Result<Option<String>, Refusal> {
        let entry = &self.groups[self.one_group(group)?];
        Ok(entry.group.policy_program().map(str::to_owned))
    }

    /// Installs the policy program at `path` in one group (or every group), live. `uid` is
    /// the client's: the object must be a file that uid may read, so the daemon reads nothing
    /// on a client's behalf that the client could not read itself.
    pub fn load_policy_program(
        &mut self,
        path: &str,
        uid: u32,
        group: Option<&GroupRef>,
    ) -> Result<(SocketAddr, String), Refusal> {
        let path = Path::new(path);
        readable_by(path, uid)?;
        let i = self.one_group(group)?;
        let entry = &mut self.groups[i];
        let name = entry.group.load_policy_program(path)?;
        info!(
            "{}: policy program {name} ({}) installed; the built-in policy {} decides when it \
             defers",
            entry.listen,
            path.display(),
            entry.group.policy()
        );
        Ok((entry.listen, name))
    }
}

fn bad(message: String) -> Refusal {
    Refusal::new(ErrorCode::BadPolicyProgram, message)
}

/// Whether `uid` may read the regular file at `path` (absolute), by its owner and mode.
fn readable_by(path: &Path, uid: u32) -> Result<(), Refusal> {
    if !path.is_absolute() {
        return Err(bad(format!(
            "{}: give the policy object's absolute path (the daemon runs elsewhere)",
            path.display()
        )));
    }
    let meta = std::fs::metadata(path).map_err(|e| {
        bad(format!(
            "{}: {e}; build a policy with `cargo xtask build-policy NAME`",
            path.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(bad(format!("{}: not a regular file", path.display())));
    }
    let mode = meta.mode();
    let readable = uid == 0 || mode & 0o004 != 0 || (meta.uid() == uid && mode & 0o400 != 0);
    if !readable {
        return Err(bad(format!(
            "{}: uid {uid} may not read it; make it readable by that uid",
            path.display()
        )));
    }
    Ok(())
}
