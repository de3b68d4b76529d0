//! The one BPF call aya does not offer: reading a socket array entry (its socket's cookie).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// bpf(2) command: look an element up.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
/// bpf(2) update flag: only into an empty slot.
pub(crate) const BPF_NOEXIST: u64 = 1;

/// `bpf_attr` for BPF_MAP_LOOKUP_ELEM.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The cookie of the socket in `slot`, or `None` when the slot is empty (its socket closed).
pub(crate) fn sockarray_cookie(map: BorrowedFd<'_>, slot: u32) -> io::Result<Option<u64>> {
    let key = slot;
    let mut value: u64 = 0;
    let attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &mut value as *mut u64 as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a live key and a u64 value, the size the kernel writes for a
    // socket array lookup (an 8-byte value gets the cookie).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(value))
}
