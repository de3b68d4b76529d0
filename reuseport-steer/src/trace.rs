//! The decision trace's userspace end: the `TRACE` ring buffer and the `TRACING` flag of one
//! group ([`reuseport_common::trace`]).

use aya::{
    maps::{Array, MapData, RingBuf},
    Ebpf,
};
use reuseport_common::trace;
pub use reuseport_common::trace::TraceRecord;

use crate::error::{Error, Result};

/// The ring buffer of one group and its on/off flag. Taken out of the [`crate::Group`] once
/// ([`crate::Group::take_tracer`]) by whoever streams the records: the ring buffer has one
/// consumer.
pub struct Tracer {
    ring: RingBuf<MapData>,
    flag: Array<MapData, u32>,
}

impl Tracer {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let missing = |name: &str| Error::Ebpf {
            what: format!("map {name} is missing from the object"),
            cause: "object built from other sources".into(),
        };
        let ring = ebpf
            .take_map(trace::TRACE)
            .ok_or_else(|| missing(trace::TRACE))?;
        let flag = ebpf
            .take_map(trace::TRACING.name)
            .ok_or_else(|| missing(trace::TRACING.name))?;
        let mut tracer = Self {
            ring: RingBuf::try_from(ring).map_err(|e| Error::ebpf("map TRACE", e))?,
            flag: Array::try_from(flag).map_err(|e| Error::ebpf("map TRACING", e))?,
        };
        // A fresh map is 0; an earlier trace of this process may have left it on.
        tracer.set_enabled(false)?;
        Ok(tracer)
    }

    /// Turns recording on or off in the program.
    pub fn set_enabled(&mut self, on: bool) -> Result<()> {
        self.flag
            .set(0, u32::from(on), 0)
            .map_err(|e| Error::ebpf("setting the TRACING flag", e))
    }

    /// The next record waiting in the ring buffer, if any (never blocks; wait for the
    /// descriptor, [`Tracer::ring`], to be readable).
    pub fn next_record(&mut self) -> Option<TraceRecord> {
        loop {
            let item = self.ring.next()?;
            if let Some(record) = TraceRecord::from_bytes(&item) {
                return Some(record);
            }
        }
    }

    /// The ring buffer, whose descriptor becomes readable when records arrive.
    pub fn ring(&self) -> &RingBuf<MapData> {
        &self.ring
    }
}

impl std::os::fd::AsRawFd for Tracer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}
