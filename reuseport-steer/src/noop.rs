//! [`NoopProgram`]: the object's program that chooses nothing (returns SK_PASS: the kernel
//! hashes). The benchmark attaches it to a listener pool to measure what running any
//! SK_REUSEPORT program costs, the floor under every policy's figure. Not for the daemon.

use std::{os::fd::AsFd, time::Duration};

use aya::{programs::SkReuseport, Ebpf, EbpfLoader};

use crate::{
    error::{errno_in, Error, Result},
    object::OBJECT,
    preflight,
};

/// Its name in the object (reuseport-ebpf/src/noop.rs).
const NAME: &str = "reuseport_noop";

/// The no-op program, loaded (its own copy of the object's maps, unused by it).
pub struct NoopProgram {
    ebpf: Ebpf,
}

impl NoopProgram {
    pub fn load() -> Result<Self> {
        preflight::check_privileges()?;
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| Error::ebpf("loading the eBPF object", e))?;
        program(&mut ebpf)?
            .load()
            .map_err(|e| Error::ebpf(format!("loading program {NAME}"), e))?;
        Ok(Self { ebpf })
    }

    /// Attaches it to the reuseport group of `socket`, replacing any program the group had.
    pub fn attach(&mut self, socket: impl AsFd) -> Result<()> {
        program(&mut self.ebpf)?
            .attach(socket.as_fd())
            .map(|_| ())
            .map_err(|e| {
                if errno_in(&e) == Some(libc::EINVAL) {
                    Error::NoReuseport
                } else {
                    Error::ebpf("SO_ATTACH_REUSEPORT_EBPF", e)
                }
            })
    }

    /// Run count and total run time, while the kernel's run-time statistics are on.
    pub fn run_stats(&self) -> Result<(u64, Duration)> {
        let program: &SkReuseport = self
            .ebpf
            .program(NAME)
            .ok_or_else(missing)?
            .try_into()
            .map_err(|e| Error::ebpf(format!("program {NAME}"), e))?;
        let info = program
            .info()
            .map_err(|e| Error::ebpf("reading program info", e))?;
        Ok((info.run_count(), info.run_time()))
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SkReuseport> {
    ebpf.program_mut(NAME)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|e| Error::ebpf(format!("program {NAME}"), e))
}

fn missing() -> Error {
    Error::Ebpf {
        what: format!("program {NAME} is missing from the object"),
        cause: "object built from other sources".into(),
    }
}
