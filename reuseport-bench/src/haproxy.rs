//! HAProxy as an anchor: the Debian package's `haproxy` (installed by `cargo xtask setup`),
//! started by the bench in front of workers listening on their own ports, with a configuration
//! generated into the cell's private directory. `mode tcp`: a connection in is a connection out,
//! so `leastconn` balances open connections, the load signal a reuseport program can only
//! approximate; `nbthread` = the machine's cores.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::steering::Balance;

/// Where the Debian package puts it (a user's PATH may lack /usr/sbin).
const DEBIAN_PATH: &str = "/usr/sbin/haproxy";

/// The haproxy binary, or an error that says how to get it.
pub fn binary() -> Result<PathBuf> {
    if Path::new(DEBIAN_PATH).is_file() {
        return Ok(DEBIAN_PATH.into());
    }
    let on_path = Command::new("haproxy")
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return Ok("haproxy".into());
    }
    bail!(
        "haproxy is not installed: `cargo xtask setup` installs it (the Debian package haproxy), \
         or `apt-get install haproxy`"
    )
}

/// The configuration: a frontend on `front`, every backend server, `balance`, `nbthread`.
pub fn config(
    front: SocketAddr,
    backends: &[SocketAddr],
    balance: Balance,
    threads: usize,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "global\n    nbthread {threads}\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n\n\
         frontend bench\n    bind {front}\n    default_backend workers\n\n\
         backend workers\n    balance {}\n",
        balance.keyword()
    );
    for (i, b) in backends.iter().enumerate() {
        // No health checks: their traffic would be load the other steerings do not get.
        let _ = writeln!(out, "    server w{i} {b}");
    }
    out
}

/// Writes the configuration into `dir` and starts haproxy in the foreground on it, its output
/// in `dir/haproxy.log`. The caller waits for the frontend to answer.
pub fn start(
    dir: &Path,
    front: SocketAddr,
    backends: &[SocketAddr],
    balance: Balance,
    threads: usize,
) -> Result<Child> {
    let bin = binary()?;
    let file = dir.join("haproxy.cfg");
    fs::write(&file, config(front, backends, balance, threads))
        .with_context(|| format!("writing {}", file.display()))?;
    let log = fs::File::create(dir.join("haproxy.log"))?;
    Command::new(&bin)
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_backend_with_the_balance_and_threads() {
        let front: SocketAddr = "127.0.0.1:18000".parse().unwrap();
        let backends: Vec<SocketAddr> = ["127.0.0.1:18001", "127.0.0.1:18002"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let text = config(front, &backends, Balance::LeastConn, 2);
        assert!(text.contains("nbthread 2\n"), "{text}");
        assert!(text.contains("mode tcp\n"), "{text}");
        assert!(text.contains("bind 127.0.0.1:18000\n"), "{text}");
        assert!(text.contains("balance leastconn\n"), "{text}");
        assert!(text.contains("server w0 127.0.0.1:18001\n"), "{text}");
        assert!(text.ends_with("server w1 127.0.0.1:18002\n"), "{text}");
        assert!(!text.contains("check"), "{text}");
    }
}
