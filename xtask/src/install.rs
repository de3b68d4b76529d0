//! `cargo xtask install`: the binary, the systemd units, the example configuration, the shell
//! completions and the man pages, where a host's service manager and shells look for them.
//!
//! Layout, under `--root` (empty: the live system; a staging directory for a package or a
//! test) and `--prefix` (default /usr/local):
//!
//! | what | where |
//! |---|---|
//! | binary | PREFIX/bin/reuseport |
//! | units | /etc/systemd/system with the default prefix (the administrator's units); PREFIX/lib/systemd/system with any other (a package's) |
//! | configuration | /etc/reuseport/reuseport.toml, only when absent (a reinstall keeps yours) |
//! | examples | PREFIX/share/reuseport/{reuseport.toml,worker.env.example} |
//! | completions | PREFIX/share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d} |
//! | man pages | PREFIX/share/man/man1 |
//!
//! The units' ExecStart is rewritten to PREFIX/bin/reuseport.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::command::{cargo, run};

/// The prefix of a hand install, whose units go to /etc/systemd/system.
pub const DEFAULT_PREFIX: &str = "/usr/local";

/// What to install where.
pub struct Install {
    pub prefix: PathBuf,
    /// Prepended to every path (DESTDIR).
    pub root: PathBuf,
    /// Install this binary instead of building the release one.
    pub binary: Option<PathBuf>,
}

impl Install {
    /// `path` (absolute) under the root.
    fn staged(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn unit_dir(&self) -> PathBuf {
        if self.prefix == Path::new(DEFAULT_PREFIX) {
            PathBuf::from("/etc/systemd/system")
        } else {
            self.prefix.join("lib/systemd/system")
        }
    }
}

pub fn install(workspace: &Path, plan: &Install) -> Result<()> {
    if !plan.prefix.is_absolute() {
        bail!(
            "--prefix must be an absolute path, not {}",
            plan.prefix.display()
        );
    }
    let built = match &plan.binary {
        Some(binary) => binary.clone(),
        None => {
            run(cargo(workspace).args([
                "build",
                "--release",
                "-p",
                "reuseport",
                "--bin",
                "reuseport",
            ]))?;
            workspace.join("target/release/reuseport")
        }
    };
    let bin_path = plan.prefix.join("bin/reuseport");
    let bin = plan.staged(&bin_path);
    copy(&built, &bin, 0o755)?;

    let deploy = workspace.join("deploy");
    let units = plan.staged(&plan.unit_dir());
    for unit in ["reuseport.service", "reuseport-worker@.service"] {
        let text = fs::read_to_string(deploy.join("systemd").join(unit))
            .with_context(|| format!("reading deploy/systemd/{unit}"))?;
        let text = text.replace("/usr/local/bin/reuseport", &bin_path.to_string_lossy());
        write(&units.join(unit), &text, 0o644)?;
    }

    let share = plan.staged(&plan.prefix.join("share"));
    copy(
        &deploy.join("reuseport.toml"),
        &share.join("reuseport/reuseport.toml"),
        0o644,
    )?;
    copy(
        &deploy.join("systemd/worker.env.example"),
        &share.join("reuseport/worker.env.example"),
        0o644,
    )?;
    let config = plan.staged(Path::new("/etc/reuseport/reuseport.toml"));
    if config.exists() {
        eprintln!("kept {} (already there)", config.display());
    } else {
        copy(&deploy.join("reuseport.toml"), &config, 0o644)?;
    }

    for (shell, file) in [
        ("bash", "bash-completion/completions/reuseport"),
        ("zsh", "zsh/site-functions/_reuseport"),
        ("fish", "fish/vendor_completions.d/reuseport.fish"),
    ] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running {} completions {shell}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} completions {shell} failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        write(
            &share.join(file),
            &String::from_utf8_lossy(&out.stdout),
            0o644,
        )?;
    }
    let man = share.join("man/man1");
    fs::create_dir_all(&man)?;
    run(Command::new(&bin).arg("man").arg("--out").arg(&man))?;

    eprintln!(
        "installed {} and the units in {}; next: edit /etc/reuseport/reuseport.toml, then \
         `systemctl daemon-reload && systemctl enable --now reuseport`",
        bin.display(),
        units.display()
    );
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Into a new file renamed over the old one: a running binary is replaced, not rewritten.
    let staging = to.with_extension("xtask-new");
    fs::copy(from, &staging)
        .with_context(|| format!("copying {} to {}", from.display(), staging.display()))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(mode))?;
    fs::rename(&staging, to).with_context(|| format!("moving into {}", to.display()))?;
    eprintln!("installed {}", to.display());
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    eprintln!("installed {}", to.display());
    Ok(())
}
