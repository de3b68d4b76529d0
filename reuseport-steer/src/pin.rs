//! Pinned state: the maps of a group live in bpffs, so the kernel keeps steering with them
//! while no daemon runs, and a restarted daemon picks up exactly where the last one stopped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use reuseport_common::maps;

use crate::error::{Error, Result};

/// bpffs's statfs magic.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is normally mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// The default pin directory of the daemon: one per network namespace, since groups (and
/// their ports) are per namespace while bpffs is not. See [`bpffs_base`] for where it lives.
pub fn default_root() -> PathBuf {
    let ns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0);
    bpffs_base().join("reuseport").join(format!("netns-{ns}"))
}

/// The bpffs the default pins go to: /sys/fs/bpf, unless that is not a bpffs here and this
/// process has a mount namespace of its own (`ip netns exec` gives its command one, with a
/// fresh /sys): a bpffs mounted there would die with the daemon and the next daemon would find
/// nothing. Then the bpffs of the namespace the daemon was started from, reached through its
/// parent's root (or PID 1's), when that has one.
pub fn bpffs_base() -> PathBuf {
    let own = Path::new(BPFFS);
    if !is_bpffs(own) && private_mount_namespace() {
        let parent = std::os::unix::process::parent_id();
        for pid in [parent.to_string(), "1".to_owned()] {
            let outer = Path::new("/proc")
                .join(pid)
                .join("root")
                .join(BPFFS.trim_start_matches('/'));
            if is_bpffs(&outer) {
                return outer;
            }
        }
    }
    own.to_path_buf()
}

/// Whether this process's mount namespace differs from its parent's: mounts made in it are
/// gone once it and its children exit.
fn private_mount_namespace() -> bool {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let parent = std::os::unix::process::parent_id().to_string();
    matches!((ns("self"), ns(&parent)), (Some(own), Some(theirs)) if own != theirs)
}

/// The directory of one group under `root`, named after its address (`127-0-0-1_8080`;
/// bpffs refuses names with dots).
pub fn group_dir(root: &Path, listen: SocketAddr) -> PathBuf {
    let ip: String = listen
        .ip()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    root.join(format!("{ip}_{}", listen.port()))
}

/// Makes sure `dir` is on a bpffs, mounting one at /sys/fs/bpf when nothing is mounted there
/// (but not in a mount namespace private to this process, where it would not outlive it).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let bpffs = Path::new(BPFFS);
    if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        if private_mount_namespace() {
            return Err(Error::PrivateBpffs {
                path: dir.to_path_buf(),
            });
        }
        let ret = nix::mount::mount(
            Some("bpf"),
            bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        if let Err(e) = ret {
            return Err(Error::BpffsMissing {
                path: bpffs.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let parent = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    if !is_bpffs(parent) {
        return Err(Error::BpffsMissing {
            path: dir.to_path_buf(),
            reason: "not on a bpf filesystem".into(),
        });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::FsType(BPF_FS_MAGIC as _))
        .unwrap_or(false)
}

/// Refuses pinned maps left by a build with another layout: reusing them would corrupt state.
/// A map this layout no longer has ([`maps::RETIRED`]) marks an older build too.
pub(crate) fn check_compatible(dir: &Path) -> Result<()> {
    if maps::RETIRED.iter().any(|name| dir.join(name).exists()) {
        return Err(Error::IncompatiblePin {
            path: dir.to_path_buf(),
        });
    }
    for shape in maps::STATE {
        let path = dir.join(shape.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|e| Error::ebpf(format!("reading {}", path.display()), e))?;
        if info.value_size() != shape.value_size || info.max_entries() != shape.max_entries {
            return Err(Error::IncompatiblePin {
                path: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Removes a group's pinned maps. The kernel frees them once no program uses them.
pub fn unpin(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_dirs_are_named_after_the_address() {
        let root = Path::new("/sys/fs/bpf/reuseport/x");
        assert_eq!(
            group_dir(
                root,
                "127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!())
            ),
            root.join("127-0-0-1_8080")
        );
        assert_eq!(
            group_dir(root, "[::1]:80".parse().unwrap_or_else(|_| unreachable!())),
            root.join("--1_80")
        );
    }
}
