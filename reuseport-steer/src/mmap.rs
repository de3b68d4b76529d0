//! Memory-mapped BPF arrays (`BPF_F_MMAPABLE`): the counters and loads the daemon reads and
//! writes every sample, with no system call.

use std::{
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::AtomicU64,
};

use reuseport_common::{maps::MapSpec, LeastList, SlotStats};

/// A type userspace may view a shared map value as: made of atomics only (the program writes
/// the same memory concurrently), valid for any bit pattern, and laid out like the program's
/// value type.
///
/// # Safety
/// Implementors are `#[repr(C)]` (or atomics) of `AtomicU64`s only, with no padding.
pub(crate) unsafe trait Shared: Sync {}

// SAFETY: one atomic word.
unsafe impl Shared for AtomicU64 {}
// SAFETY: `#[repr(C)]`, two atomic words, the layout of the program's `SlotStats<u64>`.
unsafe impl Shared for SlotStats<AtomicU64> {}
// SAFETY: `#[repr(C)]`, atomic words only, the layout of the `LEAST` map's `u64` entries.
unsafe impl Shared for LeastList<AtomicU64> {}

/// An array map mapped shared, viewed as `len` values of `T`: stores are seen by the program at
/// once and the program's atomic adds are seen here.
pub(crate) struct MappedArray<T: Shared> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
    value: PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics (`T: Shared`).
unsafe impl<T: Shared> Send for MappedArray<T> {}
// SAFETY: as above.
unsafe impl<T: Shared> Sync for MappedArray<T> {}

impl<T: Shared> MappedArray<T> {
    /// Maps the whole value area of the map `spec` describes (whose fd is `map`), as `T`s. An
    /// mmapable array's values are contiguous, each rounded up to 8 bytes.
    pub(crate) fn new<V>(map: BorrowedFd<'_>, spec: &MapSpec<V>) -> io::Result<Self> {
        let stride = size_of::<V>().next_multiple_of(8);
        let area = spec.max_entries as usize * stride;
        let size = size_of::<T>();
        if size == 0 || !size.is_multiple_of(8) || !area.is_multiple_of(size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "map {} cannot be viewed as {}",
                    spec.name,
                    std::any::type_name::<T>()
                ),
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = area.div_ceil(page) * page;
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
        let ptr = NonNull::new(ptr.cast::<T>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            ptr,
            len: area / size,
            bytes,
            value: PhantomData,
        })
    }

    /// Value `index`, `None` past the end.
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        // SAFETY: in bounds, aligned (page-aligned base, `T` a multiple of 8 bytes made of
        // 8-byte atomics), valid for any bit pattern, alive as long as `self`.
        (index < self.len).then(|| unsafe { &*self.ptr.as_ptr().add(index) })
    }
}

impl<T: Shared> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}
