//! The real servers the integration tests run under `reuseport spawn`: nginx, gunicorn and
//! uvicorn, from Debian packages. Checked in a few milliseconds when present; installed with
//! apt-get when something is missing. Never fatal: without apt (or root) setup says what to
//! install, and the tests that need a server fail naming it.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use crate::command::run;

/// The Debian packages, in the order of [`Server`].
const PACKAGES: [&str; 3] = ["nginx", "gunicorn", "python3-uvicorn"];

#[derive(Clone, Copy, Debug)]
enum Server {
    Nginx,
    Gunicorn,
    Uvicorn,
}

impl Server {
    const ALL: [Server; 3] = [Server::Nginx, Server::Gunicorn, Server::Uvicorn];

    fn name(self) -> &'static str {
        match self {
            Server::Nginx => "nginx",
            Server::Gunicorn => "gunicorn",
            Server::Uvicorn => "uvicorn",
        }
    }

    /// Whether it can be run as the tests run it (reuseport-testing's `servers` finds it the
    /// same way): the command in PATH (nginx also in /usr/sbin, which a user's PATH may lack),
    /// or for uvicorn, whose Debian package has no command, `python3 -m uvicorn` of the
    /// system's Python (a pyenv or venv `python3` first in PATH may not have it).
    fn present(self) -> bool {
        match self {
            Server::Nginx => in_path("nginx") || Path::new("/usr/sbin/nginx").is_file(),
            Server::Gunicorn => in_path("gunicorn"),
            Server::Uvicorn => {
                in_path("uvicorn")
                    || ["python3", "/usr/bin/python3"]
                        .iter()
                        .any(|py| succeeds(Command::new(py).args(["-m", "uvicorn", "--version"])))
            }
        }
    }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn missing() -> Vec<Server> {
    Server::ALL.into_iter().filter(|s| !s.present()).collect()
}

fn names(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes sure the test servers are installed; warns (never fails) when they cannot be.
pub fn ensure() {
    let missing = missing();
    if missing.is_empty() {
        eprintln!("setup: test servers ok (nginx, gunicorn, uvicorn)");
        return;
    }
    let install = format!("apt-get install -y {}", PACKAGES.join(" "));
    if !in_path("apt-get") {
        eprintln!(
            "setup: warning: {} missing and no apt-get here: the tests that run them will fail; \
             install them (Debian packages {}), then run `cargo xtask setup` again",
            names(&missing),
            PACKAGES.join(", ")
        );
        return;
    }
    eprintln!(
        "setup: installing the test servers ({} missing)",
        names(&missing)
    );
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    let installed = apt(&["update", "-q"]).and_then(|()| {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(PACKAGES);
        apt(&args)
    });
    let still = missing_after(installed.err());
    if still.is_empty() {
        eprintln!(
            "setup: test servers installed (the nginx package may also have started its \
             default site: `systemctl disable --now nginx` if you do not want it)"
        );
    } else {
        eprintln!(
            "setup: warning: {} still missing: the tests that run them will fail; as root: \
             `{install}`, then `cargo xtask setup`",
            names(&still)
        );
    }
}

fn missing_after(error: Option<anyhow::Error>) -> Vec<Server> {
    if let Some(e) = error {
        eprintln!("setup: warning: {e:#}");
    }
    missing()
}
