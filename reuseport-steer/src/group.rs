//! [`Group`]: one loaded program and its maps, steering one SO_REUSEPORT group.

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    sync::atomic::{
        AtomicU64,
        Ordering::{Relaxed, Release},
    },
};

use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::SkReuseport,
    Ebpf, EbpfLoader,
};
use log::debug;
use reuseport_common::{
    maps::{self, MapSpec},
    names, GlobalStats, LeastList, Publication, SlotConfig, SlotStats, MAX_SLOTS,
    PUBLICATION_COPIES,
};

use crate::{
    error::{errno_in, Error, Result},
    grace::Grace,
    mmap::{MappedArray, PublicationRing, Shared},
    object::OBJECT,
    pin,
    policy::{AttachMode, OnEmpty, Policy, SlotState},
    policy_program::PolicyPrograms,
    preflight::{self, KernelVersion},
    publication::{self, check_range},
    signals::{Signal, Signals, WorkerMap},
    socket::SocketInfo,
    stats::{GlobalCounters, GroupStats, SlotCounters},
    sys,
    trace::Tracer,
    udp::UdpState,
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
    /// IPv6 groups: the IPV6_V6ONLY every socket must have, as the group was configured
    /// (`true`: IPv6-only, `false`: dual-stack). The kernel keeps the two kinds in separate
    /// reuseport groups, so the kind is the group's, not whichever socket comes first.
    /// `None`: the first socket decides (and IPv4 sockets are never checked).
    pub v6only: Option<bool>,
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
///
/// # Publications
///
/// What the program steers by (policy, on-empty, slot table, active list, weighted schedule)
/// is one [`Publication`]. Every change builds the next one whole from the live one
/// ([`crate::publication`]), writes it into a copy of the memory-mapped ring that no program
/// run can be reading, then makes that copy live with one store: a run sees the publication
/// before or the one after, never a mix, and keeps reading its copy intact however long it
/// takes, since a copy is rewritten only after an RCU grace period has passed since it was
/// last live ([`reuseport_common::Publications`]; a thread waits for grace periods in the
/// background, so a publication waits only if more than `PUBLICATION_COPIES - 1` come within
/// one grace period, see [`crate::grace`]). A change that cannot be published (a
/// schedule past `MAX_SCHEDULE` entries) fails before anything is written; a failure later (a
/// system call) leaves the live publication, the socket array and this struct as they were.
///
/// The least-loaded list is not part of it: the daemon republishes it at every sample that
/// moves a load, through a memory mapping, with no system call. Each of its words carries the
/// generation of the publication it was computed from, and the program uses only words of the
/// publication it looked up (see [`LeastList`]), so it never picks a slot the live publication
/// left out, even between a publication and the next least-loaded list.
pub struct Group {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    mode: AttachMode,
    sockets: Map,
    /// `PUBLICATION`: the ring of publications.
    ring: MappedArray<PublicationRing>,
    /// The live publication, as last made live.
    published: Box<Publication>,
    /// Waits, in the background, for the program runs that could read a retired copy.
    grace: Grace,
    /// Publications made live so far (counting one for the state found at load).
    flips: u64,
    /// For each copy, the value of `flips` when it stopped being live (0: never read).
    retired_at: [u64; PUBLICATION_COPIES as usize],
    /// `SLOT_STATS`, one entry per slot.
    slot_stats: MappedArray<SlotStats<AtomicU64>>,
    /// `LOAD`, one word per slot.
    loads: MappedArray<AtomicU64>,
    /// `LEAST`: the least-loaded active slots, one struct over the map's words.
    least: MappedArray<LeastList<AtomicU64>>,
    /// What `LEAST` holds, untagged, and the generation its words carry.
    least_written: (u32, Vec<u32>),
    /// Reused buffer for the next least-loaded set (published every sample).
    least_scratch: Vec<u32>,
    _mapped_maps: [Map; 4],
    global_stats: PerCpuArray<MapData, GlobalStats>,
    /// UDP: the flow table's setting, and `MAGLEV`, kept up to date while the policy is
    /// `maglev` ([`crate::udp`]).
    udp: UdpState,
    /// Live load signals: worker counters maps and open-connection counts.
    signals: Signals,
    /// The first socket seen: every other one must match its protocol, family and address.
    identity: Option<SocketInfo>,
    /// The IPV6_V6ONLY the group was configured with ([`GroupOptions::v6only`]).
    v6only: Option<bool>,
    attached: bool,
    /// The state came from pinned maps written by an earlier process.
    adopted: bool,
    /// The decision trace, until someone takes it to stream it.
    tracer: Option<Tracer>,
    /// The program array a policy program is installed in.
    policy_programs: PolicyPrograms,
}

impl Group {
    /// The IPV6_V6ONLY the group requires, if it was configured ([`GroupOptions::v6only`]).
    pub fn v6only(&self) -> Option<bool> {
        self.v6only
    }

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
        // The maps stay open (the program is loaded against their fds); reads and writes go
        // through the mappings.
        let mapped_maps = [
            take(maps::SLOT_STATS.name)?,
            take(maps::LOAD.name)?,
            take(maps::LEAST.name)?,
            take(maps::PUBLICATION.name)?,
        ];
        let slot_stats = mapped(&mapped_maps[0], &maps::SLOT_STATS)?;
        let loads = mapped(&mapped_maps[1], &maps::LOAD)?;
        let least = mapped(&mapped_maps[2], &maps::LEAST)?;
        let ring = mapped(&mapped_maps[3], &maps::PUBLICATION)?;
        let grace = Grace::start().map_err(|e| Error::io("starting the grace-period waiter", e))?;
        let global_stats = typed(take(maps::GLOBAL_STATS.name)?, maps::GLOBAL_STATS.name)?;
        let udp = UdpState::new(
            take(reuseport_common::udp::MAGLEV.name)?,
            take(reuseport_common::udp::UDP_SETTINGS.name)?,
        )?;
        let tracer = Tracer::take(&mut ebpf)?;
        let signals = Signals::load(&mut ebpf)?;

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
        let policy_programs = PolicyPrograms::load(&mut ebpf, prog_name)?;

        let mut group = Self {
            ebpf,
            logger,
            mode: options.mode,
            v6only: options.v6only,
            sockets,
            ring,
            published: Box::new(Publication::EMPTY),
            grace,
            flips: 0,
            retired_at: [0; PUBLICATION_COPIES as usize],
            slot_stats,
            loads,
            least,
            least_written: (0, Vec::new()),
            least_scratch: Vec::new(),
            _mapped_maps: mapped_maps,
            global_stats,
            udp,
            signals,
            identity: None,
            attached: false,
            adopted: false,
            tracer: Some(tracer),
            policy_programs,
        };
        if group.adopt()? {
            group.udp.before(&Publication::EMPTY, &group.published);
            group.udp.after();
        } else {
            group.change(|p| {
                p.config.policy = options.policy as u32;
                p.config.on_empty = options.on_empty as u32;
                Ok(())
            })?;
        }
        Ok(group)
    }

    /// UDP groups: how long the flow table keeps an idle flow on its slot (zero: no flow
    /// table). See [`crate::udp`].
    pub fn set_flow_idle(&mut self, idle: std::time::Duration) -> Result<()> {
        self.udp.set_flow_idle(idle)
    }

    /// The group's decision trace ([`Tracer`]): given out once, to its one reader.
    pub fn take_tracer(&mut self) -> Option<Tracer> {
        self.tracer.take()
    }

    /// Installs the policy program in the object at `path` (see [`crate::policy_program`]),
    /// replacing any other, live; returns its name. The group's built-in policy stays what
    /// the program may defer to.
    pub fn load_policy_program(&mut self, path: &std::path::Path) -> Result<String> {
        let cursors = self.ebpf.map(maps::CURSORS.name);
        let [stats, load, _, publication] = &self._mapped_maps;
        let mut shared = vec![
            (maps::SLOT_STATS.name, stats),
            (maps::LOAD.name, load),
            (maps::PUBLICATION.name, publication),
        ];
        shared.extend(cursors.map(|c| (maps::CURSORS.name, c)));
        let answer = self.ebpf.map(reuseport_common::policy_program::ANSWER.name);
        shared.extend(answer.map(|a| (reuseport_common::policy_program::ANSWER.name, a)));
        self.policy_programs.install(path, self.mode, &shared)
    }

    /// Takes the policy program out: the built-in policy decides again.
    pub fn remove_policy_program(&mut self) -> Result<()> {
        self.policy_programs.remove()
    }

    /// The name of the installed policy program, if any.
    pub fn policy_program(&self) -> Option<&str> {
        self.policy_programs.installed()
    }

    /// Whether the state was taken over from pinned maps.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Empties every slot and starts over with `policy` and `on_empty` (the maps stay, so
    /// a pinned group keeps its pins).
    pub fn reset(&mut self, policy: Policy, on_empty: OnEmpty) -> Result<()> {
        // Unpublished first, so the program stops choosing the slots before they empty.
        self.change(|p| {
            p.slots = Publication::EMPTY.slots;
            p.config.policy = policy as u32;
            p.config.on_empty = on_empty as u32;
            Ok(())
        })?;
        // Every slot, including any the kernel holds without a record.
        let fd = self.sockets_fd()?;
        for slot in 0..MAX_SLOTS {
            sys::sockarray_clear(fd, slot)
                .map_err(|e| Error::io(format!("clearing slot {slot}"), e))?;
        }
        self.adopted = false;
        Ok(())
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
        let slots = self.insert_all([socket])?;
        slots
            .into_iter()
            .next()
            .ok_or(Error::SlotsFull { max: MAX_SLOTS })
    }

    /// Puts `socket` in `slot`, active with weight 1.
    pub fn insert_at(&mut self, slot: u32, socket: impl AsFd) -> Result<()> {
        self.insert_each([(slot, socket.as_fd(), None)]).map(drop)
    }

    /// [`Group::insert`] for a socket its caller already inspected with [`SocketInfo::of`]
    /// (the daemon does, to route it), so the kernel is not asked again.
    pub fn insert_inspected(&mut self, socket: impl AsFd, info: &SocketInfo) -> Result<u32> {
        let slot = (0..MAX_SLOTS)
            .find(|&slot| self.published.slots[slot as usize].is_empty())
            .ok_or(Error::SlotsFull { max: MAX_SLOTS })?;
        self.insert_each([(slot, socket.as_fd(), Some(*info))])?;
        Ok(slot)
    }

    /// Puts several sockets in the first free slots, in one publication (what filling a large
    /// group needs). All or nothing: on an error no socket is placed.
    pub fn insert_all<S: AsFd>(
        &mut self,
        sockets: impl IntoIterator<Item = S>,
    ) -> Result<Vec<u32>> {
        let sockets: Vec<S> = sockets.into_iter().collect();
        let free: Vec<u32> = (0..MAX_SLOTS)
            .filter(|&slot| self.published.slots[slot as usize].is_empty())
            .take(sockets.len())
            .collect();
        if free.len() < sockets.len() {
            return Err(Error::SlotsFull { max: MAX_SLOTS });
        }
        self.insert_each(
            free.into_iter()
                .zip(sockets.iter())
                .map(|(slot, socket)| (slot, socket.as_fd(), None)),
        )
    }

    /// Checks every socket, puts each in its slot of the socket array, then publishes them in
    /// one step; on any error, empties again the slots it filled.
    fn insert_each<'a>(
        &mut self,
        placements: impl IntoIterator<Item = (u32, BorrowedFd<'a>, Option<SocketInfo>)>,
    ) -> Result<Vec<u32>> {
        let mut identity = self.identity;
        let mut placed: Vec<(u32, u64)> = Vec::new();
        let mut outcome = Ok(());
        for (slot, socket, info) in placements {
            match self.place(slot, socket, info, &mut identity, &placed) {
                Ok(cookie) => placed.push((slot, cookie)),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let outcome = outcome.and_then(|()| {
            self.change(|p| {
                for &(slot, cookie) in &placed {
                    p.slots[slot as usize] = publication::filled(cookie);
                }
                Ok(())
            })
        });
        if let Err(e) = outcome {
            if let Ok(fd) = self.sockets_fd() {
                for &(slot, _) in &placed {
                    let _ = sys::sockarray_clear(fd, slot);
                }
            }
            return Err(e);
        }
        self.identity = identity;
        Ok(placed.into_iter().map(|(slot, _)| slot).collect())
    }

    /// Checks a socket (on its own, against `identity`, the group's or the batch's first, and
    /// against the sockets of the group and of the batch) and puts it in `slot` of the socket
    /// array, unpublished: the program does not choose it yet. Returns its cookie.
    /// `inspected`: what the caller already read of the socket, so it is not read again.
    fn place(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
        inspected: Option<SocketInfo>,
        identity: &mut Option<SocketInfo>,
        batch: &[(u32, u64)],
    ) -> Result<u64> {
        check_range(slot)?;
        let info = match inspected {
            Some(info) => info,
            None => SocketInfo::of(socket)?,
        };
        info.check_joinable()?;
        info.check_v6only(self.v6only)?;
        if let Some(identity) = identity {
            info.check_same_group(identity)?;
        }
        if let Some(existing) = self.slot_of_cookie(info.cookie) {
            return Err(Error::AlreadyInGroup(existing));
        }
        if let Some(&(existing, _)) = batch.iter().find(|&&(_, c)| c == info.cookie) {
            return Err(Error::AlreadyInGroup(existing));
        }
        if !self.published.slots[slot as usize].is_empty() || batch.iter().any(|&(s, _)| s == slot)
        {
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
        identity.get_or_insert(info);
        self.reset_slot_stats(slot);
        Ok(info.cookie)
    }

    /// Puts a slot's own socket back into the socket array after the kernel emptied the entry
    /// (a `shutdown()` of the listener does), keeping the slot's published state, weight and
    /// counters: the socket listens again and is the same socket (same cookie), so nothing the
    /// program steers by changes. What a daemon needs to evict a listener and take it back
    /// without its server noticing.
    pub fn reinsert(&mut self, slot: u32, socket: impl AsFd) -> Result<()> {
        check_range(slot)?;
        let socket = socket.as_fd();
        let info = SocketInfo::of(socket)?;
        info.check_joinable()?;
        let published = self.published.slots[slot as usize];
        if published.is_empty() {
            return Err(Error::SlotEmpty(slot));
        }
        if published.cookie != info.cookie {
            return Err(Error::SlotTaken(slot));
        }
        sys::sockarray_insert(self.sockets_fd()?, slot, socket).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EBUSY) => Error::HeldElsewhere,
                Some(libc::EINVAL) => Error::NotListening,
                _ => Error::io(format!("putting the socket back in slot {slot}"), e),
            }
        })
    }

    /// Takes the socket out of `slot`. It stops getting connections at once; what it already
    /// has queued stays with it (closing it then migrates those, in select-or-migrate mode).
    pub fn remove(&mut self, slot: u32) -> Result<()> {
        let before = self.published.clone();
        // Unpublished first, so the program stops choosing the slot before it empties.
        self.change(|p| {
            publication::occupied(p, slot)?;
            p.slots[slot as usize] = SlotConfig::EMPTY_SLOT;
            Ok(())
        })?;
        let cleared = self.sockets_fd().and_then(|fd| {
            sys::sockarray_clear(fd, slot)
                .map_err(|e| Error::io(format!("clearing slot {slot}"), e))
        });
        if let Err(e) = cleared {
            // The socket is still in the array: publish it again rather than lose track of it.
            let _ = self.change(|p| {
                p.slots = before.slots;
                Ok(())
            });
            return Err(e);
        }
        Ok(())
    }

    /// Takes the sockets out of several slots in one publication, where [`Group::remove`] in a
    /// loop would publish once per slot (a thousand workers leaving at once). Slots already
    /// empty are skipped.
    pub fn remove_all(&mut self, slots: &[u32]) -> Result<()> {
        let slots: Vec<u32> = slots
            .iter()
            .copied()
            .filter(|&slot| {
                (slot as usize) < self.published.slots.len()
                    && !self.published.slots[slot as usize].is_empty()
            })
            .collect();
        if slots.is_empty() {
            return Ok(());
        }
        // Unpublished first, so the program stops choosing the slots before they empty.
        self.change(|p| {
            for &slot in &slots {
                p.slots[slot as usize] = SlotConfig::EMPTY_SLOT;
            }
            Ok(())
        })?;
        let fd = self.sockets_fd()?;
        for &slot in &slots {
            sys::sockarray_clear(fd, slot)
                .map_err(|e| Error::io(format!("clearing slot {slot}"), e))?;
        }
        Ok(())
    }

    /// Marks a slot active (gets new connections) or draining (keeps what it has, gets nothing
    /// new).
    pub fn set_state(&mut self, slot: u32, state: SlotState) -> Result<()> {
        self.set_states(&[(slot, state)])
    }

    /// Sets the state of several slots with one publication; on an error none changes.
    pub fn set_states(&mut self, changes: &[(u32, SlotState)]) -> Result<()> {
        self.change(|p| publication::set_states(p, changes))
    }

    /// Sets a slot's weight for the `weighted` policy (1..=1000).
    pub fn set_weight(&mut self, slot: u32, weight: u32) -> Result<()> {
        self.set_weights(&[(slot, weight)])
    }

    /// Sets several weights with one publication of the schedule; on an error none changes.
    pub fn set_weights(&mut self, changes: &[(u32, u32)]) -> Result<()> {
        self.change(|p| publication::set_weights(p, changes))
    }

    /// Switches the policy live: one publication, no re-attach, no connection lost.
    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        self.change(|p| {
            p.config.policy = policy as u32;
            Ok(())
        })
    }

    pub fn policy(&self) -> Policy {
        Policy::from_raw(self.published.config.policy).unwrap_or_default()
    }

    pub fn set_on_empty(&mut self, on_empty: OnEmpty) -> Result<()> {
        self.change(|p| {
            p.config.on_empty = on_empty as u32;
            Ok(())
        })
    }

    pub fn on_empty(&self) -> OnEmpty {
        OnEmpty::from_raw(self.published.config.on_empty).unwrap_or_default()
    }

    /// Changes whenever what the program sees changes (never 0).
    pub fn generation(&self) -> u32 {
        self.published.config.generation
    }

    /// The occupied slots, in slot order.
    pub fn slots(&self) -> Vec<Slot> {
        self.published
            .slots
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
        self.published.slots.get(slot as usize)?.state()
    }

    pub fn slot(&self, slot: u32) -> Option<Slot> {
        self.slots().into_iter().find(|s| s.index == slot)
    }

    /// The active slots in the order the program sees them.
    pub fn active_slots(&self) -> Vec<u32> {
        self.published.active().to_vec()
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
            self.change(|p| {
                for &slot in &gone {
                    p.slots[slot as usize] = SlotConfig::EMPTY_SLOT;
                }
                Ok(())
            })?;
            for &slot in &gone {
                debug!("slot {slot}: socket closed, slot freed");
            }
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
    /// turn. Writes only when the set changed, through the memory mapping (no system call),
    /// each word tagged with the live publication's generation ([`LeastList`]).
    pub fn publish_least_loaded(&mut self) {
        let generation = self.generation();
        let active = self.published.active();
        let min = active.iter().map(|&s| self.slot_load(s)).min();
        let mut least = std::mem::take(&mut self.least_scratch);
        least.clear();
        least.extend(
            active
                .iter()
                .copied()
                .filter(|&s| Some(self.slot_load(s)) == min),
        );
        let (written_generation, written) = &mut self.least_written;
        if *written_generation != generation || least != *written {
            if let Some(list) = self.least.get(0) {
                for (i, (cell, &slot)) in list.entries.iter().zip(&least).enumerate() {
                    if *written_generation != generation || written.get(i) != Some(&slot) {
                        cell.store(LeastList::tag(generation, slot), Release);
                    }
                }
                list.head
                    .store(LeastList::tag(generation, least.len() as u32), Release);
            }
            *written_generation = generation;
            std::mem::swap(&mut least, written);
        }
        self.least_scratch = least;
    }

    /// How many slots hold a socket (no allocation, unlike [`Group::slots`]).
    pub fn occupied_count(&self) -> usize {
        self.published
            .slots
            .iter()
            .filter(|s| !s.is_empty())
            .count()
    }

    /// The load as the program sees it now: the sampled word plus the slot's live signal.
    pub fn slot_load(&self, slot: u32) -> u64 {
        self.sampled_load(slot)
            .saturating_add(self.signals.live_load(slot))
    }

    /// The sampled part of the load (what [`Group::set_load`] wrote).
    pub fn sampled_load(&self, slot: u32) -> u64 {
        self.loads
            .get(slot as usize)
            .map_or(0, |cell| cell.load(Relaxed))
    }

    /// Gives the worker in `slot` its counters map: the program reads the worker's figures
    /// from it once a background thread has put it in (an update that waits for a grace
    /// period). The map is taken out when the slot empties.
    pub fn put_worker_map(&mut self, slot: u32, map: std::sync::Arc<WorkerMap>) -> Result<()> {
        self.signals.put_worker(slot, map)
    }

    /// Where the program's live part of the slot's load comes from.
    pub fn signal(&self, slot: u32) -> Signal {
        self.signals.signal(slot)
    }

    /// Connections open on the slot (counted in the kernel), when the group counts them.
    pub fn open_connections(&self, slot: u32) -> Option<u64> {
        self.signals.open_connections(slot)
    }

    /// Whether open connections are counted (the sock_ops program is attached).
    pub fn counts_open(&self) -> bool {
        self.signals.counts_open()
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

    /// Takes over the publication an earlier process left in pinned maps; false when there is
    /// none. Copies that were ever published are taken as possibly still read.
    fn adopt(&mut self) -> Result<bool> {
        let ring = self.ring.get(0).ok_or_else(ring_missing)?;
        let live = ring.live();
        self.flips = 1;
        for (copy, retired) in self.retired_at.iter_mut().enumerate() {
            let published = ring.read(copy).config.generation != 0;
            *retired = u64::from(published && copy != live);
        }
        self.grace.retired(self.flips);
        let publication = ring.read(live);
        if publication.config.generation == 0 {
            return Ok(false);
        }
        self.published = publication;
        self.adopted = true;
        debug!(
            "adopted pinned state: {} slots, policy {}, generation {}",
            self.occupied_count(),
            self.policy(),
            self.generation()
        );
        Ok(true)
    }

    /// Checks a socket on its own and against the group's first socket.
    fn admit(&self, socket: BorrowedFd<'_>) -> Result<SocketInfo> {
        let info = SocketInfo::of(socket)?;
        self.admit_inspected(&info)?;
        Ok(info)
    }

    fn admit_inspected(&self, info: &SocketInfo) -> Result<()> {
        info.check_joinable()?;
        info.check_v6only(self.v6only)?;
        if let Some(identity) = &self.identity {
            info.check_same_group(identity)?;
        }
        Ok(())
    }

    /// The slot holding the socket with this cookie (`SocketInfo::cookie`), if any.
    pub fn slot_of_cookie(&self, cookie: u64) -> Option<u32> {
        self.published
            .slots
            .iter()
            .position(|s| !s.is_empty() && s.cookie == cookie)
            .map(|i| i as u32)
    }

    /// Publishes the live publication with `edit` applied, whole, in one step; on any error
    /// nothing changes (see [`Group`]).
    fn change(&mut self, edit: impl FnOnce(&mut Publication) -> Result<()>) -> Result<()> {
        let next = publication::next(&self.published, edit)?;
        let live = self.ring.get(0).ok_or_else(ring_missing)?.live();
        let target = (live + 1) % PUBLICATION_COPIES as usize;
        self.grace
            .wait_past(self.retired_at[target])
            .map_err(|e| Error::io("waiting for a grace period", e))?;
        self.udp.before(&self.published, &next);
        let ring = self.ring.get_mut(0).ok_or_else(ring_missing)?;
        ring.write(target, &next);
        ring.set_live(target);
        self.udp.after();
        self.flips += 1;
        self.retired_at[live] = self.flips;
        self.grace.retired(self.flips);
        self.published = next;
        let slots = &self.published.slots;
        self.signals
            .retain_workers(|slot| slots.get(slot as usize).is_some_and(|s| !s.is_empty()));
        self.publish_least_loaded();
        Ok(())
    }

    fn reset_slot_stats(&self, slot: u32) {
        if let Some(stats) = self.slot_stats.get(slot as usize) {
            stats.selected.store(0, Relaxed);
            stats.migrated.store(0, Relaxed);
        }
        self.set_load(slot, 0);
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

/// Maps the array map `spec` describes into memory, viewed as `T`s.
pub(crate) fn mapped<T: Shared, V>(map: &Map, spec: &MapSpec<V>) -> Result<MappedArray<T>> {
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

fn ring_missing() -> Error {
    Error::Ebpf {
        what: format!("map {} is empty", maps::PUBLICATION.name),
        cause: "object built from other sources".into(),
    }
}

fn typed<T>(map: Map, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| Error::ebpf(format!("map {name}"), e))
}

/// aya takes the attach type from the section name, so the mode picks the program.
fn program_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Select => names::PROG_SELECT,
        AttachMode::SelectOrMigrate => names::PROG_MIGRATE,
    }
}
