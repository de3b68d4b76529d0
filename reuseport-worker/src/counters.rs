//! A worker's own counters, published by writing memory: the daemon hands each registered
//! worker a map of its own (a `counters` request, docs/protocol.md) that the steering program
//! reads at every new connection, so the worker's load is known with no system call per
//! request. Nobody else holds a writable descriptor of it.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use crate::protocol::CountersLayout;

/// The worker's mapping of its counters map.
pub struct Counters {
    base: NonNull<u8>,
    len: usize,
    layout: CountersLayout,
    /// The map's descriptor, kept open with the mapping.
    _fd: OwnedFd,
}

// SAFETY: the mapping is shared memory written only through atomics.
unsafe impl Send for Counters {}
// SAFETY: as above.
unsafe impl Sync for Counters {}

impl Counters {
    /// Maps the descriptor of a `counters` reply, read-write, as `layout` describes it.
    pub fn map(fd: OwnedFd, layout: CountersLayout) -> io::Result<Self> {
        let words = [layout.inflight, layout.accepted, layout.finished];
        if words
            .iter()
            .any(|&off| off % 8 != 0 || off + 8 > layout.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("counters layout {layout:?} does not fit its map"),
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (layout.size as usize).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's descriptor; the kernel checks the size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            base,
            len,
            layout,
            _fd: fd,
        })
    }

    fn word(&self, offset: u32) -> &AtomicU64 {
        // SAFETY: checked in `map` to be an aligned 8-byte word inside the mapping, which lives
        // as long as `self`.
        unsafe { &*self.base.as_ptr().add(offset as usize).cast::<AtomicU64>() }
    }

    /// Requests being served now.
    pub fn set_inflight(&self, inflight: u64) {
        self.word(self.layout.inflight).store(inflight, Relaxed);
    }

    pub fn inflight(&self) -> u64 {
        self.word(self.layout.inflight).load(Relaxed)
    }

    /// One more connection accepted.
    pub fn accepted(&self) {
        self.word(self.layout.accepted).fetch_add(1, Relaxed);
    }

    /// `n` more requests finished.
    pub fn finished(&self, n: u64) {
        self.word(self.layout.finished).fetch_add(n, Relaxed);
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
