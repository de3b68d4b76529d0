//! The load signals a [`Group`](crate::Group)'s program reads at each selection
//! (`reuseport_common::signals`): cooperating workers' own counters, and the connections open
//! per slot that a sock_ops program counts for every server.
//!
//! - [`WorkerMap`]: a one-entry memory-mapped array created for one registration. Its
//!   descriptor goes to that worker only (the daemon sends it with the register reply); the
//!   group puts the map into the program's `WORKERS` array of maps at the worker's slot. Putting
//!   a map into an array of maps makes the system call wait for an RCU grace period (~15 ms), so
//!   a thread of the group's does it ([`Installer`]), never the caller: until it is in, the
//!   program uses the slot's other signals.
//! - Open connections: `reuseport_conns` is attached to the root of the cgroup v2 hierarchy
//!   (mounted at `/run/reuseport/cgroup2` when the system has none), so it sees every TCP
//!   connection's handshake and close; it counts only the connections the group's select
//!   program recorded. Without cgroup v2 the group goes on without this signal, and says so.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

use aya::{
    maps::Map,
    programs::{links::CgroupAttachMode, SockOps},
    Ebpf,
};
use log::{debug, warn};
use reuseport_common::{
    signals::{maps, SlotSignals, WorkerCounters, PROG_CONNS, SIGNAL_OPEN},
    MAX_SLOTS,
};

use crate::{
    error::{Error, Result},
    group::mapped,
    mmap::{MappedArray, Shared},
    sys,
};

// SAFETY: `#[repr(C)]`, atomic words only, the layout of the program's `WorkerCounters<u64>`.
unsafe impl Shared for WorkerCounters<AtomicU64> {}
// SAFETY: `#[repr(C)]`, atomic words only, the layout of the program's `SlotSignals<u64>`.
unsafe impl Shared for SlotSignals<AtomicU64> {}

/// One worker's counters map: created for its registration, its descriptor sent to that worker
/// alone, read here through a mapping of its own.
pub struct WorkerMap {
    fd: OwnedFd,
    view: MappedArray<WorkerCounters<AtomicU64>>,
}

/// What a worker published, as read now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub inflight: u64,
    pub accepted: u64,
    pub finished: u64,
}

impl WorkerMap {
    /// A fresh map, all counters zero.
    pub fn create() -> Result<Self> {
        let fd = sys::array_create(
            maps::WORKER.value_size(),
            maps::WORKER.max_entries,
            maps::WORKER.flags,
            "WORKER",
        )
        .map_err(|e| Error::io("creating a worker counters map", e))?;
        let view = MappedArray::new(fd.as_fd(), &maps::WORKER)
            .map_err(|e| Error::io("mapping a worker counters map", e))?;
        Ok(Self { fd, view })
    }

    /// The descriptor to hand to the worker (it maps it read-write).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn read(&self) -> Published {
        self.view
            .get(0)
            .map_or_else(Published::default, |c| Published {
                inflight: c.inflight.load(Relaxed),
                accepted: c.accepted.load(Relaxed),
                finished: c.finished.load(Relaxed),
            })
    }
}

/// What an [`Installer`] does, in order.
enum Install {
    /// The map's descriptor, and the flag to raise once the program can read it.
    Put(u32, OwnedFd, Arc<AtomicBool>),
    Clear(u32),
}

/// Puts worker maps into the `WORKERS` array of maps (and takes them out) on a thread of its
/// own, in the order asked: each update waits for a grace period in the kernel.
struct Installer {
    tx: Option<mpsc::Sender<Install>>,
    thread: Option<JoinHandle<()>>,
}

impl Installer {
    fn start(outer: OwnedFd) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Install>();
        let thread = std::thread::Builder::new()
            .name("reuseport-signals".into())
            .spawn(move || {
                for step in rx {
                    let (slot, outcome) = match &step {
                        Install::Put(slot, inner, installed) => {
                            let put = sys::map_of_maps_put(outer.as_fd(), *slot, inner.as_fd());
                            if put.is_ok() {
                                installed.store(true, Relaxed);
                            }
                            (slot, put)
                        }
                        Install::Clear(slot) => {
                            (slot, sys::map_of_maps_clear(outer.as_fd(), *slot))
                        }
                    };
                    if let Err(e) = outcome {
                        warn!("slot {slot}: updating the worker counters map: {e}");
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, step: Install) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(step);
        }
    }
}

impl Drop for Installer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where a slot's live load comes from (what the program adds to the sampled `LOAD` word).
#[derive(Clone)]
pub enum Signal {
    /// Its worker publishes its counters.
    Worker(Arc<WorkerMap>),
    /// Connections open, counted in the kernel.
    Open,
    /// Neither: the sampled load only.
    Sampled,
}

/// A group's signal maps and its sock_ops program.
pub(crate) struct Signals {
    installer: Installer,
    /// The worker map of each slot (indexed by slot: read for every slot at every sample),
    /// and whether it is in (the program reads it).
    workers: Vec<Option<(Arc<WorkerMap>, Arc<AtomicBool>)>>,
    /// Slots with a worker map.
    with_maps: usize,
    slot_signals: MappedArray<SlotSignals<AtomicU64>>,
    flags: MappedArray<AtomicU64>,
    /// Kept open: the programs are loaded against these descriptors.
    _maps: [Map; 3],
    /// Open connections are counted (the sock_ops program is attached).
    open: bool,
}

impl Signals {
    /// Takes the signal maps out of the loaded object and attaches the sock_ops program, if
    /// the system lets it (else the group steers without open-connection counts).
    pub(crate) fn load(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| Error::Ebpf {
                what: format!("map {name} is missing from the object"),
                cause: "object built from other sources".into(),
            })
        };
        let workers = take(maps::WORKERS.name)?;
        let [signals_map, flags_map] = [
            take(maps::SLOT_SIGNALS.name)?,
            take(maps::SIGNAL_FLAGS.name)?,
        ];
        let slot_signals = mapped(&signals_map, &maps::SLOT_SIGNALS)?;
        let flags = mapped(&flags_map, &maps::SIGNAL_FLAGS)?;
        let Map::ArrayOfMaps(outer) = &workers else {
            return Err(Error::Ebpf {
                what: format!("map {} has the wrong type", maps::WORKERS.name),
                cause: "object built from other sources".into(),
            });
        };
        let outer = outer
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating the worker maps' descriptor", e))?;
        let installer =
            Installer::start(outer).map_err(|e| Error::io("starting the signals thread", e))?;
        let mut signals = Self {
            installer,
            workers: vec![None; MAX_SLOTS as usize],
            with_maps: 0,
            slot_signals,
            flags,
            _maps: [signals_map, flags_map, workers],
            open: false,
        };
        match attach_conns(ebpf) {
            Ok(cgroup) => {
                debug!(
                    "counting open connections (sock_ops on {})",
                    cgroup.display()
                );
                signals.open = true;
                if let Some(word) = signals.flags.get(0) {
                    word.store(SIGNAL_OPEN, Relaxed);
                }
            }
            Err(e) => warn!(
                "open connections are not counted ({e}); least-loaded and p2c use the workers' \
                 own counters and the sampled queues"
            ),
        }
        Ok(signals)
    }

    /// Puts `map` in `slot` (replacing any earlier worker's), in the background.
    pub(crate) fn put_worker(&mut self, slot: u32, map: Arc<WorkerMap>) -> Result<()> {
        let fd = map
            .fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating a worker counters map", e))?;
        let installed = Arc::new(AtomicBool::new(false));
        self.installer
            .send(Install::Put(slot, fd, installed.clone()));
        if let Some(cell) = self.workers.get_mut(slot as usize) {
            if cell.replace((map, installed)).is_none() {
                self.with_maps += 1;
            }
        }
        Ok(())
    }

    /// Takes the worker map out of every slot `keep` says no to.
    pub(crate) fn retain_workers(&mut self, mut keep: impl FnMut(u32) -> bool) {
        if self.with_maps == 0 {
            return;
        }
        for (slot, cell) in self.workers.iter_mut().enumerate() {
            if cell.is_some() && !keep(slot as u32) {
                *cell = None;
                self.with_maps -= 1;
                self.installer.send(Install::Clear(slot as u32));
            }
        }
    }

    /// The worker map the program reads for the slot (not one still being put in).
    fn installed(&self, slot: u32) -> Option<&Arc<WorkerMap>> {
        self.workers
            .get(slot as usize)?
            .as_ref()
            .filter(|(_, installed)| installed.load(Relaxed))
            .map(|(map, _)| map)
    }

    /// As the program sees it now.
    pub(crate) fn signal(&self, slot: u32) -> Signal {
        match self.installed(slot) {
            Some(map) => Signal::Worker(map.clone()),
            None if self.open => Signal::Open,
            None => Signal::Sampled,
        }
    }

    /// What the program adds to the slot's sampled load now.
    pub(crate) fn live_load(&self, slot: u32) -> u64 {
        match self.installed(slot) {
            Some(map) => map.read().inflight,
            None if self.open => self.open_connections(slot).unwrap_or(0),
            None => 0,
        }
    }

    /// Connections open on the slot, when they are counted.
    pub(crate) fn open_connections(&self, slot: u32) -> Option<u64> {
        if !self.open {
            return None;
        }
        self.slot_signals
            .get(slot as usize)
            .map(|s| s.open.load(Relaxed))
    }

    pub(crate) fn counts_open(&self) -> bool {
        self.open
    }
}

/// Loads `reuseport_conns` and links it to the root of the cgroup v2 hierarchy (beside any
/// other program there); returns that directory.
fn attach_conns(ebpf: &mut Ebpf) -> Result<PathBuf> {
    let program: &mut SockOps = ebpf
        .program_mut(PROG_CONNS)
        .ok_or_else(|| Error::Ebpf {
            what: format!("program {PROG_CONNS} is missing from the object"),
            cause: "object built from other sources".into(),
        })?
        .try_into()
        .map_err(|e| Error::ebpf(format!("program {PROG_CONNS}"), e))?;
    program
        .load()
        .map_err(|e| Error::ebpf(format!("loading program {PROG_CONNS}"), e))?;
    let root = cgroup2_root().map_err(|e| Error::io("finding or mounting cgroup v2", e))?;
    let dir = std::fs::File::open(&root)
        .map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
    // A cgroup link takes no flags (the kernel refuses BPF_F_ALLOW_MULTI there with EINVAL)
    // and always runs beside other programs attached to the cgroup.
    program
        .attach(&dir, CgroupAttachMode::Single)
        .map_err(|e| Error::ebpf(format!("attaching {PROG_CONNS} to {}", root.display()), e))?;
    Ok(root)
}

/// Where cgroup v2 is mounted (the first mount in /proc/self/mountinfo), or a mount made at
/// `/run/reuseport/cgroup2` when there is none. The root of the hierarchy covers every process.
fn cgroup2_root() -> io::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if let Some(dir) = cgroup2_in(&mountinfo) {
        return Ok(dir);
    }
    let dir = Path::new("/run/reuseport/cgroup2");
    std::fs::create_dir_all(dir)?;
    let target =
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings that live across the call.
    let ret = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dir.to_owned())
}

/// The mount point of the first cgroup2 mount listed (its root must be the hierarchy's).
fn cgroup2_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;

    /// The descriptor is a bpf map.
    fn is_map_fd(fd: BorrowedFd<'_>) -> bool {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        link.is_ok_and(|l| l.to_string_lossy().contains("bpf-map"))
    }

    /// The object declares the signal maps as `reuseport_common::signals::maps` states them.
    #[test]
    fn the_objects_signal_maps_have_the_shapes_of_the_specs(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let object = aya_obj::Object::parse(crate::object::OBJECT)?;
        for shape in maps::SHAPES {
            let map = object
                .maps
                .get(shape.name)
                .ok_or(format!("map {} missing", shape.name))?;
            assert_eq!(map.max_entries(), shape.max_entries, "{}", shape.name);
        }
        for (name, flags) in [
            (maps::SLOT_SIGNALS.name, maps::SLOT_SIGNALS.flags),
            (maps::SIGNAL_FLAGS.name, maps::SIGNAL_FLAGS.flags),
        ] {
            let map = object.maps.get(name).ok_or(format!("map {name} missing"))?;
            assert_eq!(map.map_flags(), flags, "{name}");
            assert_eq!(
                map.value_size(),
                maps::SHAPES
                    .iter()
                    .find(|s| s.name == name)
                    .map_or(0, |s| s.value_size),
                "{name}"
            );
        }
        let inner = object
            .maps
            .get(maps::WORKERS.name)
            .and_then(|m| m.inner())
            .ok_or("WORKERS has no inner map")?;
        assert_eq!(
            (inner.value_size(), inner.max_entries(), inner.map_flags()),
            (
                maps::WORKER.value_size(),
                maps::WORKER.max_entries,
                maps::WORKER.flags
            )
        );
        Ok(())
    }

    #[test]
    fn finds_the_cgroup2_mount_of_the_hierarchys_root() {
        let info = "\
35 24 0:30 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
40 35 0:35 / /sys/fs/cgroup/cpu rw,relatime shared:15 - cgroup cgroup rw,cpu
47 35 0:42 /sub /sys/fs/cgroup/other rw,relatime - cgroup2 cgroup2 rw
48 35 0:42 / /sys/fs/cgroup/unified rw,relatime shared:22 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_in(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_in("40 35 0:35 / /x rw - cgroup cgroup rw\n"), None);
    }

    #[test]
    fn a_worker_map_starts_at_zero_and_shows_what_its_mapping_writes(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        if crate::preflight::check_privileges().is_err() {
            eprintln!("skipped: needs CAP_BPF");
            return Ok(());
        }
        let map = WorkerMap::create()?;
        assert_eq!(map.read(), Published::default());
        assert!(is_map_fd(map.fd()));
        // Another mapping of the same descriptor, as the worker makes.
        let theirs: MappedArray<WorkerCounters<AtomicU64>> =
            MappedArray::new(map.fd(), &maps::WORKER)?;
        let cell = theirs.get(0).ok_or("no entry")?;
        cell.inflight.store(3, Relaxed);
        cell.finished.store(9, Relaxed);
        assert_eq!(map.read().inflight, 3);
        assert_eq!(map.read().finished, 9);
        Ok(())
    }
}
