//! The socket array through raw bpf(2) calls. aya's `ReusePortSockArray` wants 4-byte values;
//! ours has 8-byte ones because only then does the kernel answer a lookup (with the socket's
//! cookie), which is how a closed socket is told from a live one.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
/// Update flag: only into an empty slot.
const BPF_NOEXIST: u64 = 1;

/// `bpf_attr` for the map element commands.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn map_elem(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key: &u32,
    value: u64,
    flags: u64,
) -> io::Result<()> {
    let attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const u32 as u64,
        value,
        flags,
    };
    // SAFETY: `attr` points at a live key and (when non-zero) a live 8-byte value.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts `socket` in an empty `slot`.
pub(crate) fn sockarray_insert(
    map: BorrowedFd<'_>,
    slot: u32,
    socket: BorrowedFd<'_>,
) -> io::Result<()> {
    let fd = socket.as_raw_fd() as u64;
    map_elem(
        BPF_MAP_UPDATE_ELEM,
        map,
        &slot,
        &fd as *const u64 as u64,
        BPF_NOEXIST,
    )
}

/// Empties `slot`; `Ok(false)` when it was empty already (its socket closed).
pub(crate) fn sockarray_clear(map: BorrowedFd<'_>, slot: u32) -> io::Result<bool> {
    match map_elem(BPF_MAP_DELETE_ELEM, map, &slot, 0, 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The cookie of the socket in `slot`, or `None` when the slot is empty.
pub(crate) fn sockarray_cookie(map: BorrowedFd<'_>, slot: u32) -> io::Result<Option<u64>> {
    let mut cookie: u64 = 0;
    match map_elem(
        BPF_MAP_LOOKUP_ELEM,
        map,
        &slot,
        &mut cookie as *mut u64 as u64,
        0,
    ) {
        Ok(()) => Ok(Some(cookie)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}
