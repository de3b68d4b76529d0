//! Policy programs (docs/experiments.md): installs a selection policy written as its own eBPF
//! object into a group's `POLICY_PROGS` program array, where the steering program tail-calls
//! it ([`reuseport_common::policy_program`] states the interface).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use aya::{
    maps::{Map, MapData, ProgramArray},
    programs::SkReuseport,
    Ebpf, EbpfLoader,
};
use reuseport_common::policy_program::{self, names, slot};

use crate::{
    error::{Error, Result},
    pin,
    policy::AttachMode,
};

/// A group's program array, with the steering program in it, and the policy program
/// installed, if any.
pub struct PolicyPrograms {
    /// `POLICY_PROGS`, kept untyped so it can be pinned for a policy object to share.
    progs: Map,
    installed: Option<Installed>,
}

/// A policy program in the array: its object stays loaded with it (its own maps live as long
/// as the program does anyway, but this keeps them visible to the daemon).
struct Installed {
    name: String,
    _ebpf: Ebpf,
}

impl PolicyPrograms {
    /// Puts the group's steering program (`main`, loaded) in the array, as the entry a policy
    /// program's answer comes back to.
    pub(crate) fn load(ebpf: &mut Ebpf, main: &str) -> Result<Self> {
        let program: &SkReuseport = ebpf
            .program(main)
            .ok_or_else(|| Error::Ebpf {
                what: format!("program {main} is missing from the object"),
                cause: "object built from other sources".into(),
            })?
            .try_into()
            .map_err(|e| Error::ebpf(format!("program {main}"), e))?;
        let fd = program
            .fd()
            .map_err(|e| Error::ebpf(format!("program {main}"), e))?
            .try_clone()
            .map_err(|e| Error::io("duplicating the steering program's descriptor", e))?;
        let map = ebpf
            .take_map(policy_program::PROGS.name)
            .ok_or_else(|| Error::Ebpf {
                what: format!(
                    "map {} is missing from the object",
                    policy_program::PROGS.name
                ),
                cause: "object built from other sources".into(),
            })?;
        let mut progs = Self {
            progs: map,
            installed: None,
        };
        progs
            .array()?
            .set(slot::FINISH, &fd, 0)
            .map_err(|e| Error::ebpf("putting the steering program in POLICY_PROGS", e))?;
        Ok(progs)
    }

    fn array(&mut self) -> Result<ProgramArray<&mut MapData>> {
        ProgramArray::try_from(&mut self.progs)
            .map_err(|e| Error::ebpf(policy_program::PROGS.name, e))
    }

    /// The name of the installed policy program (its file's stem), if any.
    pub fn installed(&self) -> Option<&str> {
        self.installed.as_ref().map(|i| i.name.as_str())
    }

    /// Loads the policy object at `path` against the group's shared maps (`shared`, by name)
    /// and makes it the group's policy: one update of the program array, so every connection
    /// is steered by the old policy or the new one.
    pub(crate) fn install(
        &mut self,
        path: &Path,
        mode: AttachMode,
        shared: &[(&str, &Map)],
    ) -> Result<String> {
        let object = std::fs::read(path).map_err(|e| {
            Error::io(
                format!(
                    "reading the policy program {} (build one with `cargo xtask build-policy \
                     NAME`)",
                    path.display()
                ),
                e,
            )
        })?;
        let name = path
            .file_stem()
            .map_or_else(|| "policy".to_owned(), |s| s.to_string_lossy().into_owned());
        let mut shared = shared.to_vec();
        shared.push((policy_program::PROGS.name, &self.progs));
        let dir = SharedPins::new(&shared)?;
        let mut loader = EbpfLoader::new();
        for (map, pinned) in &dir.pins {
            loader.map_pin_path(map, pinned.as_path());
        }
        let loaded = loader.load(&object);
        drop(dir);
        let mut ebpf = loaded.map_err(|e| {
            Error::ebpf(
                format!(
                    "loading the policy program {} (is it built from policies/template for \
                     interface version {}?)",
                    path.display(),
                    policy_program::VERSION
                ),
                e,
            )
        })?;
        let entry = match mode {
            AttachMode::Select => names::POLICY_SELECT,
            AttachMode::SelectOrMigrate => names::POLICY_MIGRATE,
        };
        let program: &mut SkReuseport = ebpf
            .program_mut(entry)
            .ok_or_else(|| Error::Ebpf {
                what: format!(
                    "the policy object {} has no program {entry} (a group in {mode} mode calls \
                     that one)",
                    path.display()
                ),
                cause: "start from policies/template, which defines both entry points".into(),
            })?
            .try_into()
            .map_err(|e| Error::ebpf(format!("program {entry}"), e))?;
        program
            .load()
            .map_err(|e| Error::ebpf(format!("verifying the policy program {entry}"), e))?;
        let fd = program
            .fd()
            .map_err(|e| Error::ebpf(format!("program {entry}"), e))?;
        self.array()?
            .set(slot::POLICY, fd, 0)
            .map_err(|e| Error::ebpf("installing the policy program", e))?;
        self.installed = Some(Installed {
            name: name.clone(),
            _ebpf: ebpf,
        });
        Ok(name)
    }

    /// Takes the policy program out: the built-in policy decides again from the next
    /// connection on.
    pub(crate) fn remove(&mut self) -> Result<()> {
        if self.installed.is_none() {
            return Ok(());
        }
        self.array()?
            .clear_index(&slot::POLICY)
            .map_err(|e| Error::ebpf("removing the policy program", e))?;
        self.installed = None;
        Ok(())
    }
}

/// The group's shared maps, pinned for the time of one load in a private directory of the
/// bpffs: aya opens a map of an object from a pin, not from a descriptor. Removed on drop.
struct SharedPins {
    dir: PathBuf,
    pins: Vec<(&'static str, PathBuf)>,
}

impl SharedPins {
    fn new(shared: &[(&str, &Map)]) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = Path::new("/sys/fs/bpf").join(format!(
            "reuseport-policy-load-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        pin::ensure_bpffs(&dir)?;
        let mut pins = Self {
            dir,
            pins: Vec::new(),
        };
        for name in policy_program::SHARED_MAPS {
            let Some((_, map)) = shared.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            let path = pins.dir.join(name);
            map.pin(&path)
                .map_err(|e| Error::ebpf(format!("pinning {name} for the policy program"), e))?;
            pins.pins.push((name, path));
        }
        Ok(pins)
    }
}

impl Drop for SharedPins {
    fn drop(&mut self) {
        for (_, path) in &self.pins {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
