//! Raw bpf(2) calls aya has no API for.
//!
//! The socket array: aya's `ReusePortSockArray` wants 4-byte values; ours has 8-byte ones
//! because only then does the kernel answer a lookup (with the socket's cookie), which is how a
//! closed socket is told from a live one.
//!
//! Grace periods: userspace rewrites a copy of the publication only after every program run
//! that could read it is over ([`GracePeriod`]).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
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

fn bpf<A>(cmd: libc::c_long, attr: &A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live `bpf_attr` prefix for `cmd`; the pointers in it are live.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const A,
            std::mem::size_of::<A>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
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
    bpf(cmd, &attr).map(drop)
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

/// `bpf_attr` for BPF_MAP_CREATE, up to the map's name.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

fn map_create(map_type: u32, inner_map: Option<BorrowedFd<'_>>, name: &str) -> io::Result<OwnedFd> {
    create(MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: inner_map.map_or(0, |fd| fd.as_raw_fd() as u32),
        numa_node: 0,
        map_name: map_name(name),
    })
}

/// A map's name as the kernel takes it: at most 15 bytes and a NUL.
fn map_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (cell, byte) in out.iter_mut().zip(name.bytes().take(15)) {
        *cell = byte;
    }
    out
}

fn create(attr: MapCreateAttr) -> io::Result<OwnedFd> {
    let fd = bpf(BPF_MAP_CREATE, &attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits for an RCU grace period: every program run that started before the call is over
/// when it returns. The kernel does exactly this after each update of an array of maps ("wait
/// for any running non-sleepable BPF programs to complete", `maybe_wait_bpf_programs` in
/// kernel/bpf/syscall.c), so the waiter is a one-entry array of maps, updated with the same
/// inner map every time.
pub(crate) struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl GracePeriod {
    pub(crate) fn new() -> io::Result<Self> {
        let inner = map_create(BPF_MAP_TYPE_ARRAY, None, "GRACE_INNER")?;
        let outer = map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(inner.as_fd()), "GRACE")?;
        Ok(Self { outer, inner })
    }

    /// Returns once every program run that had started has ended.
    pub(crate) fn wait(&self) -> io::Result<()> {
        let fd = self.inner.as_raw_fd() as u32;
        map_elem(
            BPF_MAP_UPDATE_ELEM,
            self.outer.as_fd(),
            &0,
            &fd as *const u32 as u64,
            0,
        )
    }
}

/// A new array map (a worker's counters, `crate::signals`).
pub(crate) fn array_create(
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    create(MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries,
        map_flags,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: map_name(name),
    })
}

/// Puts map `inner` at `slot` of an array of maps (waits for a grace period in the kernel).
pub(crate) fn map_of_maps_put(
    outer: BorrowedFd<'_>,
    slot: u32,
    inner: BorrowedFd<'_>,
) -> io::Result<()> {
    let fd = inner.as_raw_fd() as u32;
    map_elem(
        BPF_MAP_UPDATE_ELEM,
        outer,
        &slot,
        &fd as *const u32 as u64,
        0,
    )
}

/// Empties `slot` of an array of maps (an empty one already is fine).
pub(crate) fn map_of_maps_clear(outer: BorrowedFd<'_>, slot: u32) -> io::Result<()> {
    match map_elem(BPF_MAP_DELETE_ELEM, outer, &slot, 0, 0) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}
