//! The Debian packages the tests use: the real servers they run under `reuseport spawn`
//! (nginx, gunicorn, uvicorn), the tools they check the project's output with (promtool, the
//! strict OpenMetrics parser), and HAProxy, the proxy the benchmark compares the tool with. Probed in milliseconds; installed only when missing, with one
//! `apt-get update` and one `apt-get install`; where apt is missing or fails, a warning naming
//! the command to run (the tests that need a server fail naming it).

use std::process::{Command, Stdio};

/// How to tell a tool is installed.
enum Probe {
    /// A command on PATH that answers `--version`.
    Command(&'static str),
    /// A file where the package puts it (nginx is in /usr/sbin, which a user's PATH may lack,
    /// and has no `--version`).
    File(&'static str),
    /// A module Debian's `/usr/bin/python3` imports (a pyenv or venv `python3` first in PATH
    /// may not have it; Debian's uvicorn has no command, the tests run `python3 -m uvicorn`).
    PythonModule(&'static str),
}

/// What the tests run, and the Debian package that ships it.
const TEST_TOOLS: &[(Probe, &str)] = &[
    // Real servers, run under `reuseport spawn` (reuseport-testing's `servers` finds them the
    // same way).
    (Probe::File("/usr/sbin/nginx"), "nginx"),
    (Probe::Command("gunicorn"), "gunicorn"),
    (Probe::PythonModule("uvicorn"), "python3-uvicorn"),
    // The benchmark's userspace-proxy anchor (`reuseport-bench`, and its `--quick` test); in
    // /usr/sbin like nginx.
    (Probe::File("/usr/sbin/haproxy"), "haproxy"),
    // `promtool check metrics` lints the Prometheus text format of /metrics.
    (Probe::Command("promtool"), "prometheus"),
    // The strict OpenMetrics parser checks the OpenMetrics format of /metrics.
    (
        Probe::PythonModule("prometheus_client.openmetrics.parser"),
        "python3-prometheus-client",
    ),
];

/// Installs the packages of [`TEST_TOOLS`] that are missing: one `apt-get update`, one
/// `apt-get install`. Never fails.
pub fn ensure_test_tools() {
    let missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(probe, _)| !probe.found())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("setup: test servers and tools ok");
        return;
    }
    eprintln!("setup: installing {} for the tests", missing.join(" "));
    let installed = apt_get(&["update", "-qq"]) && {
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        apt_get(&args)
    };
    if !installed {
        eprintln!(
            "setup: warning: could not install {} (apt-get as root is needed): the tests that run \
             them fail or skip their checks; as root: `apt-get install -y {}`, then `cargo xtask \
             setup`",
            missing.join(" "),
            missing.join(" ")
        );
    }
}

/// The Python package of the Kubernetes schema validator the tests check
/// deploy/kubernetes with (it ships the schemas: no network at test time).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate";

/// Where [`ensure_python_tools`] puts it: a virtual environment of its own (Debian's python3
/// refuses pip installs into the system, PEP 668), whose `bin/` the tests look in.
pub const TOOLS_VENV: &str = "target/tools/venv";

/// Installs kubernetes-validate from PyPI into [`TOOLS_VENV`] when it is on neither PATH nor
/// there. Never fails.
pub fn ensure_python_tools(workspace: &std::path::Path) {
    let venv = workspace.join(TOOLS_VENV);
    let in_venv = venv.join("bin").join(KUBERNETES_VALIDATE);
    let found = |cmd: &std::path::Path| {
        Command::new(cmd)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found(std::path::Path::new(KUBERNETES_VALIDATE)) || found(&in_venv) {
        return;
    }
    eprintln!(
        "setup: installing {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    let run = |cmd: &mut Command| cmd.stdin(Stdio::null()).status().is_ok_and(|s| s.success());
    let ok = run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        && run(Command::new(venv.join("bin/pip")).args(["install", "-q", KUBERNETES_VALIDATE]));
    if !ok {
        eprintln!(
            "setup: warning: could not install {KUBERNETES_VALIDATE} (python3 -m venv and pip \
             are needed); the tests then only check the manifest's structure"
        );
    }
}

impl Probe {
    fn found(&self) -> bool {
        let mut cmd = match self {
            Self::Command(name) => {
                let mut cmd = Command::new(name);
                cmd.arg("--version");
                cmd
            }
            Self::File(path) => return std::path::Path::new(path).is_file(),
            Self::PythonModule(module) => {
                let mut cmd = Command::new("/usr/bin/python3");
                cmd.args(["-c", &format!("import {module}")]);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// `apt-get ARGS`, unattended; false when it cannot run or fails.
fn apt_get(args: &[&str]) -> bool {
    eprintln!("$ apt-get {}", args.join(" "));
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
