//! Memory-mapped BPF arrays (`BPF_F_MMAPABLE`): the counters and loads the daemon reads and
//! writes every sample, and the publications, with no system call.

use std::{
    cell::UnsafeCell,
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{
        AtomicU64,
        Ordering::{Acquire, Release},
    },
};

use reuseport_common::{
    maps::MapSpec, LeastList, Publication, Publications, SlotStats, PUBLICATION_COPIES,
};

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

/// Userspace's view of the `PUBLICATION` map's [`Publications`]: the live index as an atomic,
/// the copies as plain memory that only the [`Group`](crate::Group) owning the mapping writes,
/// and only copies no program run can be reading (see [`Publications`]).
#[repr(C)]
pub(crate) struct PublicationRing {
    live: AtomicU64,
    copies: [UnsafeCell<Publication>; PUBLICATION_COPIES as usize],
}

// SAFETY: `#[repr(C)]` with the layout of `Publications` (checked below); the copies are
// written only by the one owner, through `&mut`, under the grace-period discipline above.
unsafe impl Shared for PublicationRing {}
// SAFETY: as above: shared reads of the copies happen only through `&self` on copies nobody
// writes at the time.
unsafe impl Sync for PublicationRing {}

const _: () = assert!(size_of::<PublicationRing>() == size_of::<Publications>());

impl PublicationRing {
    /// The live copy's index.
    pub(crate) fn live(&self) -> usize {
        (self.live.load(Acquire) % u64::from(PUBLICATION_COPIES)) as usize
    }

    /// A copy of publication `index` (`index < PUBLICATION_COPIES`).
    pub(crate) fn read(&self, index: usize) -> Box<Publication> {
        // SAFETY: in bounds; nobody writes the copy meanwhile (only `&mut self` writes).
        Box::new(unsafe { std::ptr::read_volatile(self.copies[index].get()) })
    }

    /// Writes `publication` into copy `index`, which must not be live and must not have been
    /// live since the last grace period.
    pub(crate) fn write(&mut self, index: usize, publication: &Publication) {
        // SAFETY: in bounds, and by the caller's guarantee no program run reads the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(publication, self.copies[index].get(), 1);
        }
    }

    /// Makes copy `index` live: one store, after the copy's contents.
    pub(crate) fn set_live(&mut self, index: usize) {
        self.live.store(index as u64, Release);
    }
}

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

    /// Value `index`, for the owner's writes, `None` past the end.
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        // SAFETY: as `get`; `&mut self` is the only way to this value in this process.
        (index < self.len).then(|| unsafe { &mut *self.ptr.as_ptr().add(index) })
    }
}

impl<T: Shared> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}
