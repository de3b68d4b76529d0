//! Memory-mapped BPF arrays (`BPF_F_MMAPABLE`): the counters and loads the daemon reads and
//! writes every sample, with no system call.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// An array map of `u64` words, mapped shared: stores are seen by the program at once and the
/// program's atomic adds are seen here.
pub(crate) struct MappedWords {
    ptr: NonNull<AtomicU64>,
    words: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics.
unsafe impl Send for MappedWords {}
// SAFETY: as above.
unsafe impl Sync for MappedWords {}

impl MappedWords {
    /// Maps the whole value area of an array map of `words` u64s.
    pub(crate) fn new(map: BorrowedFd<'_>, words: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (words * 8).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks size and flags.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<AtomicU64>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { ptr, words, bytes })
    }

    fn word(&self, index: usize) -> Option<&AtomicU64> {
        // SAFETY: in bounds, 8-byte aligned (page-aligned base), alive as long as `self`.
        (index < self.words).then(|| unsafe { &*self.ptr.as_ptr().add(index) })
    }

    pub(crate) fn get(&self, index: usize) -> u64 {
        self.word(index).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, index: usize, value: u64) {
        if let Some(w) = self.word(index) {
            w.store(value, Ordering::Relaxed);
        }
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}
