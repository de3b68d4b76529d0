//! [`Group`]: one loaded program and its maps, steering one SO_REUSEPORT group.

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::SkReuseport,
    Ebpf, EbpfLoader,
};
use log::debug;
use reuseport_common::{
    maps::{self, MapSpec, ACTIVE_LIST, SCHEDULE_LIST},
    names, Config, GlobalStats, LeastList, ListRef, SlotConfig, SlotStats, MAX_SLOTS, MAX_WEIGHT,
};

use crate::{
    error::{errno_in, Error, Result},
    mmap::{MappedArray, Shared},
    object::OBJECT,
    pin,
    policy::{AttachMode, OnEmpty, Policy, SlotState},
    preflight::{self, KernelVersion},
    schedule,
    socket::SocketInfo,
    stats::{GlobalCounters, GroupStats, SlotCounters},
    sys,
};

/// How a [`Group`] starts out.
#[derive(Clone, Debug, Default)]
pub struct GroupOptions {
    pub mode: AttachMode,
    /// Policy of a new group; a group adopted from pinned state keeps its own.
    pub policy: Policy,
    pub on_empty: OnEmpty,
    /// Directory on a bpffs where the group's maps are pinned (see [`crate::pin`]). Existing
    /// pins there are reused, so the group continues where a previous process left it.
    pub pin: Option<PathBuf>,
}

/// What a slot holds, as userspace last set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    pub state: SlotState,
    pub weight: u32,
    pub cookie: u64,
}

/// The steering program of one SO_REUSEPORT group, with its maps.
///
/// Dropping a `Group` leaves the program attached with its last state: the kernel keeps
/// steering by it until [`Group::detach`] (or until every socket of the group is closed).
pub struct Group {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    mode: AttachMode,
    sockets: Map,
    config_map: Array<MapData, Config>,
    active_map: Array<MapData, u32>,
    schedule_map: Array<MapData, u32>,
    slots_map: Array<MapData, SlotConfig>,
    /// `SLOT_STATS`, one entry per slot.
    slot_stats: MappedArray<SlotStats<AtomicU64>>,
    /// `LOAD`, one word per slot.
    loads: MappedArray<AtomicU64>,
    /// `LEAST`: the least-loaded active slots, one struct over the map's words.
    least: MappedArray<LeastList<AtomicU64>>,
    /// What `LEAST`'s live half holds.
    least_written: Vec<u32>,
    /// Reused buffer for the next least-loaded set (published every sample).
    least_scratch: Vec<u32>,
    /// The active slots as last published, in list order.
    active: Vec<u32>,
    _mapped_maps: [Map; 3],
    global_stats: PerCpuArray<MapData, GlobalStats>,
    config: Config,
    slots: Vec<SlotConfig>,
    /// The first socket seen: every other one must match its protocol, family and address.
    identity: Option<SocketInfo>,
    attached: bool,
    /// The state came from pinned maps written by an earlier process.
    adopted: bool,
    /// What each half of ACTIVE and SCHEDULE holds, so a publish writes only what changed.
    written: [[Vec<u32>; 2]; 2],
}

impl Group {
    /// Loads the program and its maps (nothing is attached yet).
    pub fn load(options: GroupOptions) -> Result<Self> {
        preflight::check_privileges()?;
        if let Some(kernel) = KernelVersion::current() {
            preflight::check_kernel(kernel, options.mode)?;
        }
        let mut loader = EbpfLoader::new();
        let pins: Vec<(&str, PathBuf)> = match &options.pin {
            Some(dir) => {
                pin::ensure_bpffs(dir)?;
                pin::check_compatible(dir)?;
                maps::STATE
                    .iter()
                    .map(|shape| (shape.name, dir.join(shape.name)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| Error::ebpf("loading the eBPF object", e))?;
        // The log ring buffer must stay open while the program lives; a missing one (object
        // without log calls) is not an error.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();

        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| Error::Ebpf {
                what: format!("map {name} is missing from the object"),
                cause: "object built from other sources".into(),
            })
        };
        let sockets = take(maps::SOCKETS.name)?;
        let config_map = typed(take(maps::CONFIG.name)?, maps::CONFIG.name)?;
        let active_map = typed(take(maps::ACTIVE.name)?, maps::ACTIVE.name)?;
        let schedule_map = typed(take(maps::SCHEDULE.name)?, maps::SCHEDULE.name)?;
        let slots_map = typed(take(maps::SLOTS.name)?, maps::SLOTS.name)?;
        // The maps stay open (the program is loaded against their fds); reads and writes go
        // through the mappings.
        let mapped_maps = [
            take(maps::SLOT_STATS.name)?,
            take(maps::LOAD.name)?,
            take(maps::LEAST.name)?,
        ];
        let slot_stats = mapped(&mapped_maps[0], &maps::SLOT_STATS)?;
        let loads = mapped(&mapped_maps[1], &maps::LOAD)?;
        let least = mapped(&mapped_maps[2], &maps::LEAST)?;
        let global_stats = typed(take(maps::GLOBAL_STATS.name)?, maps::GLOBAL_STATS.name)?;

        let prog_name = program_name(options.mode);
        let program: &mut SkReuseport = ebpf
            .program_mut(prog_name)
            .ok_or_else(|| Error::Ebpf {
                what: format!("program {prog_name} is missing from the object"),
                cause: "object built from other sources".into(),
            })?
            .try_into()
            .map_err(|e| Error::ebpf(format!("program {prog_name}"), e))?;
        program
            .load()
            .map_err(|e| Error::ebpf(format!("loading program {prog_name}"), e))?;

        let mut group = Self {
            ebpf,
            logger,
            mode: options.mode,
            sockets,
            config_map,
            active_map,
            schedule_map,
            slots_map,
            slot_stats,
            loads,
            least,
            least_written: Vec::new(),
            least_scratch: Vec::new(),
            active: Vec::new(),
            _mapped_maps: mapped_maps,
            global_stats,
            config: Config {
                policy: options.policy as u32,
                on_empty: options.on_empty as u32,
                ..Config::default()
            },
            slots: vec![SlotConfig::default(); MAX_SLOTS as usize],
            identity: None,
            attached: false,
            adopted: false,
            written: Default::default(),
        };
        let pinned = group
            .config_map
            .get(&0, 0)
            .map_err(|e| Error::ebpf("reading the config", e))?;
        if pinned.generation != 0 {
            group.adopt(pinned)?;
        } else {
            group.write_config()?;
        }
        Ok(group)
    }

    /// Whether the state was taken over from pinned maps.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Empties every slot and starts over with `policy` and `on_empty` (the maps stay, so
    /// a pinned group keeps its pins).
    pub fn reset(&mut self, policy: Policy, on_empty: OnEmpty) -> Result<()> {
        let occupied: Vec<u32> = self.slots().iter().map(|s| s.index).collect();
        for slot in occupied {
            self.remove(slot)?;
        }
        // Slots the kernel still holds without a record (a crash between the two writes).
        let fd = self.sockets_fd()?;
        for slot in 0..MAX_SLOTS {
            sys::sockarray_clear(fd, slot)
                .map_err(|e| Error::io(format!("clearing slot {slot}"), e))?;
        }
        self.config.policy = policy as u32;
        self.config.on_empty = on_empty as u32;
        self.adopted = false;
        self.publish()
    }

    /// The slot holding this socket (or a dup of it), if any.
    pub fn slot_of_socket(&self, socket: impl AsFd) -> Result<Option<u32>> {
        let cookie = crate::socket::cookie(socket)?;
        Ok(self.slot_of_cookie(cookie))
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The group's protocol, family and address, once a socket was attached or inserted.
    pub fn identity(&self) -> Option<&SocketInfo> {
        self.identity.as_ref()
    }

    /// Attaches the program to the reuseport group `socket` belongs to. Replaces any program
    /// the group had, atomically: connections keep flowing.
    pub fn attach(&mut self, socket: impl AsFd) -> Result<()> {
        let info = self.admit(socket.as_fd())?;
        self.attach_inspected(socket, &info)
    }

    /// [`Group::attach`] for a socket its caller already inspected with [`SocketInfo::of`]
    /// (the daemon does, to route it), so the kernel is not asked again.
    pub fn attach_inspected(&mut self, socket: impl AsFd, info: &SocketInfo) -> Result<()> {
        self.admit_inspected(info)?;
        let info = *info;
        self.program()?.attach(socket.as_fd()).map_err(|e| {
            if errno_in(&e) == Some(libc::EINVAL) {
                Error::NoReuseport
            } else {
                Error::ebpf("SO_ATTACH_REUSEPORT_EBPF", e)
            }
        })?;
        self.identity.get_or_insert(info);
        self.attached = true;
        Ok(())
    }

    /// Detaches whatever program the group of `socket` has: the kernel goes back to hashing.
    pub fn detach(&mut self, socket: impl AsFd) -> Result<()> {
        SkReuseport::detach(socket.as_fd()).map_err(|e| match errno_in(&e) {
            Some(code) => Error::NothingToDetach(std::io::Error::from_raw_os_error(code)),
            None => Error::ebpf("SO_DETACH_REUSEPORT_BPF", e),
        })?;
        self.attached = false;
        Ok(())
    }

    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Puts `socket` in the first free slot, active with weight 1, and returns the slot.
    pub fn insert(&mut self, socket: impl AsFd) -> Result<u32> {
        let slot = self.free_slot()?;
        self.insert_at(slot, socket)?;
        Ok(slot)
    }

    /// Puts `socket` in `slot`, active with weight 1.
    pub fn insert_at(&mut self, slot: u32, socket: impl AsFd) -> Result<()> {
        let info = self.admit(socket.as_fd())?;
        self.insert_inspected_at(slot, socket, &info)
    }

    /// [`Group::insert`] for a socket its caller already inspected with [`SocketInfo::of`].
    pub fn insert_inspected(&mut self, socket: impl AsFd, info: &SocketInfo) -> Result<u32> {
        self.admit_inspected(info)?;
        let slot = self.free_slot()?;
        self.insert_inspected_at(slot, socket, info)?;
        Ok(slot)
    }

    fn insert_inspected_at(
        &mut self,
        slot: u32,
        socket: impl AsFd,
        info: &SocketInfo,
    ) -> Result<()> {
        self.place(slot, socket.as_fd(), *info)?;
        if let Err(e) = self.publish() {
            // Leave the slot as it was: empty.
            self.slots[slot as usize] = SlotConfig::default();
            let _ = self.write_slot(slot);
            let _ = sys::sockarray_clear(self.sockets_fd()?, slot);
            return Err(e);
        }
        Ok(())
    }

    /// Puts several sockets in the first free slots, publishing the active list and schedule
    /// once at the end rather than once per socket (what filling a large group needs). On an
    /// error, the sockets placed before it stay, published.
    pub fn insert_all<S: AsFd>(
        &mut self,
        sockets: impl IntoIterator<Item = S>,
    ) -> Result<Vec<u32>> {
        let mut placed = Vec::new();
        let mut outcome = Ok(());
        for socket in sockets {
            match self.free_slot().and_then(|slot| {
                let info = self.admit(socket.as_fd())?;
                self.place(slot, socket.as_fd(), info).map(|()| slot)
            }) {
                Ok(slot) => placed.push(slot),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        self.publish()?;
        outcome.map(|()| placed)
    }

    fn free_slot(&self) -> Result<u32> {
        self.slots
            .iter()
            .position(|s| s.is_empty())
            .map(|i| i as u32)
            .ok_or(Error::SlotsFull { max: MAX_SLOTS })
    }

    /// Puts an admitted socket in `slot` (kernel array and slot table), unpublished.
    fn place(&mut self, slot: u32, socket: BorrowedFd<'_>, info: SocketInfo) -> Result<()> {
        check_range(slot)?;
        if let Some(existing) = self.slot_of_cookie(info.cookie) {
            return Err(Error::AlreadyInGroup(existing));
        }
        if !self.slots[slot as usize].is_empty() {
            return Err(Error::SlotTaken(slot));
        }
        sys::sockarray_insert(self.sockets_fd()?, slot, socket).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EBUSY) => Error::HeldElsewhere,
                Some(libc::EEXIST) => Error::SlotTaken(slot),
                Some(libc::EINVAL) => Error::NotListening,
                _ => Error::io(format!("putting the socket in slot {slot}"), e),
            }
        })?;
        self.identity.get_or_insert(info);
        self.reset_slot_stats(slot)?;
        self.slots[slot as usize] = SlotConfig {
            state: SlotState::Active as u32,
            weight: 1,
            cookie: info.cookie,
        };
        self.write_slot(slot)
    }

    /// Takes the socket out of `slot`. It stops getting connections at once; what it already
    /// has queued stays with it (closing it then migrates those, in select-or-migrate mode).
    pub fn remove(&mut self, slot: u32) -> Result<()> {
        self.occupied(slot)?;
        self.slots[slot as usize] = SlotConfig::default();
        // Unpublish first, so the program stops choosing the slot before it empties.
        self.publish()?;
        self.write_slot(slot)?;
        sys::sockarray_clear(self.sockets_fd()?, slot)
            .map_err(|e| Error::io(format!("clearing slot {slot}"), e))?;
        Ok(())
    }

    /// Takes the sockets out of several slots with one publication of the active list, where
    /// [`Group::remove`] in a loop would rewrite it once per slot (a thousand workers leaving
    /// at once). Slots already empty are skipped.
    pub fn remove_all(&mut self, slots: &[u32]) -> Result<()> {
        let slots: Vec<u32> = slots
            .iter()
            .copied()
            .filter(|&slot| self.occupied(slot).is_ok())
            .collect();
        if slots.is_empty() {
            return Ok(());
        }
        for &slot in &slots {
            self.slots[slot as usize] = SlotConfig::default();
        }
        // Unpublish first, so the program stops choosing the slots before they empty.
        self.publish()?;
        for &slot in &slots {
            self.write_slot(slot)?;
            sys::sockarray_clear(self.sockets_fd()?, slot)
                .map_err(|e| Error::io(format!("clearing slot {slot}"), e))?;
        }
        Ok(())
    }

    /// The slot holding the socket with this cookie (`SocketInfo::cookie`), if any.
    pub fn slot_of_cookie(&self, cookie: u64) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| !s.is_empty() && s.cookie == cookie)
            .map(|i| i as u32)
    }

    /// Marks a slot active (gets new connections) or draining (keeps what it has, gets nothing
    /// new).
    pub fn set_state(&mut self, slot: u32, state: SlotState) -> Result<()> {
        self.set_states(&[(slot, state)])
    }

    /// Sets the state of several slots with one publication of the active list.
    pub fn set_states(&mut self, changes: &[(u32, SlotState)]) -> Result<()> {
        for &(slot, _) in changes {
            self.occupied(slot)?;
        }
        for &(slot, state) in changes {
            self.slots[slot as usize].state = state as u32;
            self.write_slot(slot)?;
        }
        self.publish()
    }

    /// Sets a slot's weight for the `weighted` policy (1..=1000).
    pub fn set_weight(&mut self, slot: u32, weight: u32) -> Result<()> {
        self.set_weights(&[(slot, weight)])
    }

    /// Sets several weights with one publication of the schedule; on an error none changes.
    pub fn set_weights(&mut self, changes: &[(u32, u32)]) -> Result<()> {
        for &(slot, weight) in changes {
            self.occupied(slot)?;
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return Err(Error::InvalidWeight {
                    weight,
                    max: MAX_WEIGHT,
                });
            }
        }
        let previous = self.slots.clone();
        for &(slot, weight) in changes {
            self.slots[slot as usize].weight = weight;
        }
        if let Err(e) = self.publish() {
            self.slots = previous;
            return Err(e);
        }
        for &(slot, _) in changes {
            self.write_slot(slot)?;
        }
        Ok(())
    }

    /// Switches the policy live: one map update, no re-attach, no connection lost.
    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        self.config.policy = policy as u32;
        self.write_config()
    }

    pub fn policy(&self) -> Policy {
        Policy::from_raw(self.config.policy).unwrap_or_default()
    }

    pub fn set_on_empty(&mut self, on_empty: OnEmpty) -> Result<()> {
        self.config.on_empty = on_empty as u32;
        self.write_config()
    }

    pub fn on_empty(&self) -> OnEmpty {
        OnEmpty::from_raw(self.config.on_empty).unwrap_or_default()
    }

    /// Changes whenever what the program sees changes.
    pub fn generation(&self) -> u32 {
        self.config.generation
    }

    /// The occupied slots, in slot order.
    pub fn slots(&self) -> Vec<Slot> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                Some(Slot {
                    index: i as u32,
                    state: s.state()?,
                    weight: s.weight,
                    cookie: s.cookie,
                })
            })
            .collect()
    }

    /// A slot's state, `None` when empty.
    pub fn slot_state(&self, slot: u32) -> Option<SlotState> {
        self.slots.get(slot as usize)?.state()
    }

    pub fn slot(&self, slot: u32) -> Option<Slot> {
        self.slots().into_iter().find(|s| s.index == slot)
    }

    /// The active slots in the order the program sees them.
    pub fn active_slots(&self) -> Vec<u32> {
        self.active.clone()
    }

    /// Finds slots whose socket was closed behind our back (the kernel empties the array entry
    /// on close), frees them and returns them.
    pub fn sync(&mut self) -> Result<Vec<u32>> {
        let fd = self.sockets_fd()?;
        let mut gone = Vec::new();
        for slot in self.slots() {
            match sys::sockarray_cookie(fd, slot.index) {
                Ok(Some(cookie)) if cookie == slot.cookie => {}
                Ok(_) => gone.push(slot.index),
                Err(e) => return Err(Error::io(format!("reading slot {}", slot.index), e)),
            }
        }
        if !gone.is_empty() {
            for &slot in &gone {
                debug!("slot {slot}: socket closed, freeing the slot");
                self.slots[slot as usize] = SlotConfig::default();
                self.write_slot(slot)?;
            }
            self.publish()?;
        }
        Ok(gone)
    }

    /// Sets the load `least-loaded` and `p2c` see for a slot. `least-loaded` sees it once
    /// [`Group::publish_least_loaded`] runs.
    pub fn set_load(&self, slot: u32, load: u64) {
        if let Some(cell) = self.loads.get(slot as usize) {
            cell.store(load, Relaxed);
        }
    }

    /// Republishes the active slots that share the lowest load, which `least-loaded` takes in
    /// turn. Writes only when the set changed, through the memory mapping (no system call).
    pub fn publish_least_loaded(&mut self) {
        let min = self.active.iter().map(|&s| self.slot_load(s)).min();
        let mut least = std::mem::take(&mut self.least_scratch);
        least.clear();
        least.extend(
            self.active
                .iter()
                .copied()
                .filter(|&s| Some(self.slot_load(s)) == min),
        );
        if least != self.least_written {
            if let Some(list) = self.least.get(0) {
                let live = ListRef(list.head.load(Relaxed) as u32);
                let half = 1 - live.half();
                for (cell, &slot) in list.halves[half as usize].iter().zip(&least) {
                    cell.store(u64::from(slot), Relaxed);
                }
                let head = ListRef::new(half, least.len() as u32);
                list.head.store(u64::from(head.0), Relaxed);
            }
            std::mem::swap(&mut least, &mut self.least_written);
        }
        self.least_scratch = least;
    }

    /// How many slots hold a socket (no allocation, unlike [`Group::slots`]).
    pub fn occupied_count(&self) -> usize {
        self.slots.iter().filter(|s| !s.is_empty()).count()
    }

    /// The load as the program sees it now.
    pub fn slot_load(&self, slot: u32) -> u64 {
        self.loads
            .get(slot as usize)
            .map_or(0, |cell| cell.load(Relaxed))
    }

    /// Connections sent to a slot so far, new and migrated: read from memory, no system call.
    pub fn dispatched(&self, slot: u32) -> u64 {
        self.slot_stats.get(slot as usize).map_or(0, |stats| {
            stats.selected.load(Relaxed) + stats.migrated.load(Relaxed)
        })
    }

    /// Reads the counters (per-slot from memory, group-wide summed over CPUs).
    pub fn stats(&self) -> Result<GroupStats> {
        let slots = self
            .slots()
            .iter()
            .map(|slot| {
                let stats = self.slot_stats.get(slot.index as usize);
                let read = |cell: Option<&AtomicU64>| cell.map_or(0, |c| c.load(Relaxed));
                SlotCounters {
                    slot: slot.index,
                    selected: read(stats.map(|s| &s.selected)),
                    migrated: read(stats.map(|s| &s.migrated)),
                }
            })
            .collect();
        let per_cpu = self
            .global_stats
            .get(&0, 0)
            .map_err(|e| Error::ebpf("reading group counters", e))?;
        let mut global = GlobalCounters::default();
        for v in per_cpu.iter() {
            global.add(v);
        }
        Ok(GroupStats { slots, global })
    }

    /// The kernel's run count and run time of the program (non-zero only while
    /// `kernel.bpf_stats_enabled` is on).
    pub fn run_stats(&self) -> Result<(u64, std::time::Duration)> {
        let info = self
            .program_ref()?
            .info()
            .map_err(|e| Error::ebpf("reading program info", e))?;
        Ok((info.run_count(), info.run_time()))
    }

    /// Forwards what the program logged (rare events only) to the `log` crate.
    pub fn flush_log(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }

    /// The fd that becomes readable when the program logged something.
    pub fn log_fd(&self) -> Option<BorrowedFd<'_>> {
        self.logger.as_ref().map(|l| l.as_fd())
    }

    /// Takes over the state an earlier process left in pinned maps.
    fn adopt(&mut self, config: Config) -> Result<()> {
        for slot in 0..MAX_SLOTS {
            self.slots[slot as usize] = self
                .slots_map
                .get(&slot, 0)
                .map_err(|e| Error::ebpf("reading the slot table", e))?;
        }
        self.config = config;
        self.adopted = true;
        // The order publish() uses, so it matches the live list the earlier process wrote.
        self.active = self
            .slots()
            .into_iter()
            .filter(|s| s.state == SlotState::Active)
            .map(|s| s.index)
            .collect();
        debug!(
            "adopted pinned state: {} slots, policy {}",
            self.slots().len(),
            self.policy()
        );
        Ok(())
    }

    /// Checks a socket on its own and against the group's first socket.
    fn admit(&self, socket: BorrowedFd<'_>) -> Result<SocketInfo> {
        let info = SocketInfo::of(socket)?;
        self.admit_inspected(&info)?;
        Ok(info)
    }

    fn admit_inspected(&self, info: &SocketInfo) -> Result<()> {
        info.check_joinable()?;
        if let Some(identity) = &self.identity {
            info.check_same_group(identity)?;
        }
        Ok(())
    }

    fn occupied(&self, slot: u32) -> Result<()> {
        check_range(slot)?;
        if self.slots[slot as usize].is_empty() {
            return Err(Error::SlotEmpty(slot));
        }
        Ok(())
    }

    /// Rewrites the inactive halves of the active list and the weighted schedule, then flips
    /// `CONFIG` to them in one update.
    fn publish(&mut self) -> Result<()> {
        let active: Vec<(u32, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state() == Some(SlotState::Active))
            .map(|(i, s)| (i as u32, s.weight))
            .collect();
        let schedule = schedule::smooth_weighted(&active)?;

        let slots: Vec<u32> = active.iter().map(|&(slot, _)| slot).collect();
        self.active.clone_from(&slots);
        let half = 1 - self.config.active.half();
        let sched_half = 1 - self.config.schedule.half();
        write_changed(
            &mut self.active_map,
            &mut self.written[0][half as usize],
            ACTIVE_LIST.start(half),
            &slots,
        )
        .map_err(|e| Error::ebpf("writing the active list", e))?;
        write_changed(
            &mut self.schedule_map,
            &mut self.written[1][sched_half as usize],
            SCHEDULE_LIST.start(sched_half),
            &schedule,
        )
        .map_err(|e| Error::ebpf("writing the weighted schedule", e))?;
        self.config.active = ListRef::new(half, active.len() as u32);
        self.config.schedule = ListRef::new(sched_half, schedule.len() as u32);
        self.write_config()?;
        self.publish_least_loaded();
        Ok(())
    }

    fn write_config(&mut self) -> Result<()> {
        self.config.generation = self.config.generation.wrapping_add(1);
        self.config_map
            .set(0, self.config, 0)
            .map_err(|e| Error::ebpf("writing the config", e))
    }

    fn write_slot(&mut self, slot: u32) -> Result<()> {
        self.slots_map
            .set(slot, self.slots[slot as usize], 0)
            .map_err(|e| Error::ebpf("writing the slot table", e))
    }

    fn reset_slot_stats(&mut self, slot: u32) -> Result<()> {
        if let Some(stats) = self.slot_stats.get(slot as usize) {
            stats.selected.store(0, Relaxed);
            stats.migrated.store(0, Relaxed);
        }
        self.set_load(slot, 0);
        Ok(())
    }

    fn sockets_fd(&self) -> Result<BorrowedFd<'_>> {
        match &self.sockets {
            Map::ReusePortSockArray(data) => Ok(data.fd().as_fd()),
            _ => Err(Error::Ebpf {
                what: format!("map {} has the wrong type", maps::SOCKETS.name),
                cause: "object built from other sources".into(),
            }),
        }
    }

    fn program(&mut self) -> Result<&mut SkReuseport> {
        let name = program_name(self.mode);
        self.ebpf
            .program_mut(name)
            .ok_or(Error::NotAttached)?
            .try_into()
            .map_err(|e| Error::ebpf(format!("program {name}"), e))
    }

    fn program_ref(&self) -> Result<&SkReuseport> {
        let name = program_name(self.mode);
        self.ebpf
            .program(name)
            .ok_or(Error::NotAttached)?
            .try_into()
            .map_err(|e| Error::ebpf(format!("program {name}"), e))
    }
}

/// Writes `list` at `base` in `map`, skipping the entries `cache` says are there already.
fn write_changed(
    map: &mut Array<MapData, u32>,
    cache: &mut Vec<u32>,
    base: u32,
    list: &[u32],
) -> std::result::Result<(), aya::maps::MapError> {
    // Taken out first, so a failure mid-way leaves an empty cache (the next write is full).
    let before = std::mem::take(cache);
    for (i, &value) in list.iter().enumerate() {
        if before.get(i) != Some(&value) {
            map.set(base + i as u32, value, 0)?;
        }
    }
    cache.extend_from_slice(list);
    Ok(())
}

/// Maps the array map `spec` describes into memory, viewed as `T`s.
fn mapped<T: Shared, V>(map: &Map, spec: &MapSpec<V>) -> Result<MappedArray<T>> {
    let name = spec.name;
    let Map::Array(data) = map else {
        return Err(Error::Ebpf {
            what: format!("map {name} has the wrong type"),
            cause: "object built from other sources".into(),
        });
    };
    MappedArray::new(data.fd().as_fd(), spec)
        .map_err(|e| Error::io(format!("mapping {name} into memory"), e))
}

fn typed<T>(map: Map, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| Error::ebpf(format!("map {name}"), e))
}

fn check_range(slot: u32) -> Result<()> {
    if slot >= MAX_SLOTS {
        return Err(Error::SlotOutOfRange {
            slot,
            max: MAX_SLOTS,
        });
    }
    Ok(())
}

/// aya takes the attach type from the section name, so the mode picks the program.
fn program_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Select => names::PROG_SELECT,
        AttachMode::SelectOrMigrate => names::PROG_MIGRATE,
    }
}
