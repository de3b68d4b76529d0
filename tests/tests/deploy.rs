//! What deploy/ ships, checked with the tools that consume it: the systemd units
//! (`systemd-analyze verify`), the alert rules (`promtool check rules` and `test rules`), the
//! Kubernetes manifest (kubernetes-validate, else its structure), the Grafana dashboard (every
//! metric it queries is one the daemon exports), and `cargo xtask install` into a staging root.
//! A check whose tool is missing says so and passes (`cargo xtask setup` installs them).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use reuseport_testing::{binary, daemon::Fixture, TestResult as Result};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

fn deploy(path: &str) -> PathBuf {
    workspace().join("deploy").join(path)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `program`; `None` when it is not installed.
fn tool(program: &str, args: &[&str], dir: Option<&Path>) -> Result<Option<Output>> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    match cmd.output() {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: {program} is not installed (cargo xtask setup installs it)");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("reuseport-deploy-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Copies of the units with ExecStart pointing at the built binary (verify checks that the
/// command exists), verified without warnings; a broken copy is caught.
#[test]
fn the_systemd_units_verify() -> Result {
    let dir = scratch("units")?;
    let bin = binary::locate()?;
    let units = ["reuseport.service", "reuseport-worker@.service"];
    for unit in units {
        let unit_text = fs::read_to_string(deploy("systemd").join(unit))?;
        assert!(unit_text.contains("/usr/local/bin/reuseport"), "{unit}");
        let copy = unit_text.replace("/usr/local/bin/reuseport", &bin.to_string_lossy());
        fs::write(dir.join(unit), copy)?;
    }
    let service = fs::read_to_string(dir.join(units[0]))?;
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "ReadWritePaths=/sys/fs/bpf",
        "RuntimeDirectory=reuseport",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "reuseport.service lacks {line}"
        );
    }
    // The worker template's spawn flags are spawn's.
    let worker = fs::read_to_string(dir.join(units[1]))?;
    let help = Command::new(&bin).args(["spawn", "--help"]).output()?;
    for flag in ["--listen", "--name"] {
        assert!(
            worker.contains(&format!(" spawn {flag}")) || worker.contains(&format!(" {flag} ")),
            "{flag}"
        );
        assert!(text(&help.stdout).contains(flag), "spawn has no {flag}");
    }
    let paths: Vec<String> = units.iter().map(|u| format!("./{u}")).collect();
    let mut args = vec!["verify", "--man=no"];
    args.extend(paths.iter().map(String::as_str));
    let Some(out) = tool("systemd-analyze", &args, Some(&dir))? else {
        return Ok(());
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).trim(), "", "verify warned");

    // The check has teeth: an unknown key is reported.
    fs::write(
        dir.join("reuseport.service"),
        service.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    )?;
    if let Some(out) = tool(
        "systemd-analyze",
        &["verify", "--man=no", "./reuseport.service"],
        Some(&dir),
    )? {
        assert!(
            text(&out.stderr).contains("NoNewPrivilege"),
            "{}",
            text(&out.stderr)
        );
    }
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The daemon under sd_notify: READY=1 once it serves, RELOADING=1 (with MONOTONIC_USEC) and
/// READY=1 around a reload, STOPPING=1; and log lines without a timestamp under journald.
#[test]
fn the_daemon_speaks_sd_notify() -> Result {
    use std::os::unix::net::UnixDatagram;
    reuseport_testing::netns::fresh()?;
    let dir = scratch("notify")?;
    let socket = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&socket)?;
    // Generous: what is checked is the sequence, not how fast a loaded machine starts.
    systemd.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let config = dir.join("reuseport.toml");
    fs::write(&config, "[[group]]\nlisten = \"127.0.0.1:8080\"\n")?;
    let log_path = dir.join("daemon.log");
    let log = fs::File::create(&log_path)?;
    // journald's variable names the stream the daemon's stderr is.
    let journal = {
        use std::os::unix::fs::MetadataExt as _;
        let meta = log.metadata()?;
        format!("{}:{}", meta.dev(), meta.ino())
    };
    let mut daemon = Command::new(binary::locate()?)
        .args(["run", "--no-pin", "--control"])
        .arg(dir.join("control.sock"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("JOURNAL_STREAM", journal)
        .env_remove("NO_COLOR")
        .stderr(log)
        .spawn()?;
    let (pid, started) = (daemon.id(), std::time::Instant::now());
    // Each state in turn; a missing one fails at once with the daemon's log, so the states
    // after it are never read out of step.
    let expect = |want: &str| -> Result {
        let mut buf = [0u8; 256];
        let got = systemd.recv(&mut buf).map(|n| text(&buf[..n]));
        match got {
            Ok(got) if got == want || (want.ends_with('=') && got.starts_with(want)) => Ok(()),
            got => {
                let _ = reuseport_testing::daemon::signal(pid, libc::SIGKILL);
                Err(format!(
                    "waiting for {want:?} after {:?}: got {got:?}; the daemon's log:\n{}",
                    started.elapsed(),
                    fs::read_to_string(&log_path).unwrap_or_default()
                )
                .into())
            }
        }
    };
    expect("READY=1")?;
    reuseport_testing::daemon::signal(pid, libc::SIGHUP)?;
    expect("RELOADING=1\nMONOTONIC_USEC=")?;
    expect("READY=1")?;
    reuseport_testing::daemon::signal(pid, libc::SIGTERM)?;
    expect("STOPPING=1")?;
    daemon.wait()?;
    let log = fs::read_to_string(dir.join("daemon.log"))?;
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("serving")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with(|c: char| c.is_ascii_digit())),
        "a timestamp under journald: {log}"
    );
    fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn the_alert_rules_pass_promtool() -> Result {
    let dir = deploy("prometheus");
    let Some(out) = tool("promtool", &["check", "rules", "alerts.yaml"], Some(&dir))? else {
        return Ok(());
    };
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = tool(
        "promtool",
        &["test", "rules", "alerts_test.yaml"],
        Some(&dir),
    )?;
    if let Some(out) = out {
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    Ok(())
}

/// kubernetes-validate (strict: no unknown field) when installed, from PATH or the venv
/// `cargo xtask setup` makes; else the manifest's structure with Python's yaml.
#[test]
fn the_kubernetes_manifest_is_valid() -> Result {
    let manifest = deploy("kubernetes/daemonset.yaml");
    let venv = workspace().join("target/tools/venv/bin/kubernetes-validate");
    let validator = if venv.is_file() {
        venv.to_string_lossy().into_owned()
    } else {
        "kubernetes-validate".to_owned()
    };
    let path = manifest.to_string_lossy();
    if let Some(out) = tool(&validator, &["--strict", &path], None)? {
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        // It rejects a misspelt field.
        let dir = scratch("k8s")?;
        let bad = dir.join("bad.yaml");
        fs::write(
            &bad,
            fs::read_to_string(&manifest)?.replace("hostNetwork:", "hostNetwrk:"),
        )?;
        let out = tool(&validator, &["--strict", &bad.to_string_lossy()], None)?;
        assert!(
            out.is_some_and(|o| !o.status.success()),
            "a bad manifest passed"
        );
        fs::remove_dir_all(&dir)?;
    }
    // The structure the deployment depends on, whatever the validator.
    let script = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ds = next(d for d in docs if d["kind"] == "DaemonSet")
spec = ds["spec"]["template"]["spec"]
assert spec["hostNetwork"] is True
c = spec["containers"][0]
caps = c["securityContext"]["capabilities"]
assert caps["drop"] == ["ALL"] and sorted(caps["add"]) == ["BPF", "NET_ADMIN", "PERFMON"], caps
assert not c["securityContext"].get("privileged")
vols = {v["name"]: v for v in spec["volumes"]}
assert vols["bpffs"]["hostPath"]["path"] == "/sys/fs/bpf"
assert any(m["mountPath"] == "/sys/fs/bpf" for m in c["volumeMounts"])
ann = ds["spec"]["template"]["metadata"]["annotations"]
assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9644"
print("ok")
"#;
    let Some(out) = tool("python3", &["-c", script, &path], None)? else {
        return Ok(());
    };
    if text(&out.stderr).contains("No module named 'yaml'") {
        eprintln!("skipped the structure check: python3 has no yaml module");
        return Ok(());
    }
    assert!(out.status.success(), "{}", text(&out.stderr));
    Ok(())
}

/// The metric names in a PromQL text (`reuseport_...`).
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = promql;
    while let Some(i) = rest.find("reuseport_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every metric the dashboard and the alerts query is one a running daemon exports.
#[test]
fn the_dashboard_and_alerts_query_exported_metrics() -> Result {
    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(deploy("grafana/reuseport.json"))?)?;
    let mut queried = BTreeSet::new();
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in &panels {
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            queried.extend(metric_names(target["expr"].as_str().unwrap_or("")));
        }
    }
    for wanted in [
        "reuseport_connections_selected_total",
        "reuseport_queue_depth",
        "reuseport_load",
        "reuseport_worker_state",
        "reuseport_fallbacks_total",
        "reuseport_drops_total",
        "reuseport_select_errors_total",
        "reuseport_stuck_events_total",
    ] {
        assert!(
            queried.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    queried.extend(metric_names(&fs::read_to_string(deploy(
        "prometheus/alerts.yaml",
    ))?));

    let mut f = Fixture::with_daemon_args("deploy-metrics", &["--metrics", "127.0.0.1:9466"])?;
    f.echo_workers(1)?;
    f.wait_active(1)?;
    f.load_ok(10);
    let body = reuseport_testing::loadgen::http::get("127.0.0.1:9466".parse()?, "/metrics", false);
    let mut stream = std::net::TcpStream::connect("127.0.0.1:9466")?;
    std::io::Write::write_all(&mut stream, body.as_bytes())?;
    let mut scrape = String::new();
    std::io::Read::read_to_string(&mut stream, &mut scrape)?;
    let exported = metric_names(&scrape);
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{scrape}"
    );
    Ok(())
}

/// `cargo xtask install --root DIR --binary BIN` puts every file in place, and a second run
/// keeps an edited configuration.
#[test]
fn xtask_install_stages_everything() -> Result {
    let bin = binary::locate()?;
    let xtask = bin.with_file_name("xtask");
    if !xtask.is_file() {
        eprintln!(
            "skipped: no xtask binary beside {} (cargo build --workspace --bins)",
            bin.display()
        );
        return Ok(());
    }
    let root = scratch("install")?;
    let install = |prefix: &str| -> Result<Output> {
        Ok(Command::new(&xtask)
            .args(["install", "--prefix", prefix, "--root"])
            .arg(&root)
            .arg("--binary")
            .arg(&bin)
            .output()?)
    };
    let out = install("/usr/local")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in [
        "usr/local/bin/reuseport",
        "etc/systemd/system/reuseport.service",
        "etc/systemd/system/reuseport-worker@.service",
        "etc/reuseport/reuseport.toml",
        "usr/local/share/reuseport/reuseport.toml",
        "usr/local/share/reuseport/worker.env.example",
        "usr/local/share/bash-completion/completions/reuseport",
        "usr/local/share/zsh/site-functions/_reuseport",
        "usr/local/share/fish/vendor_completions.d/reuseport.fish",
        "usr/local/share/man/man1/reuseport.1",
        "usr/local/share/man/man1/reuseport-run.1",
        "usr/local/share/man/man1/reuseport-reload.1",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
    }
    let installed = root.join("usr/local/bin/reuseport");
    let out = Command::new(&installed).arg("--version").output()?;
    assert!(out.status.success());
    let config = root.join("etc/reuseport/reuseport.toml");
    fs::write(&config, "# mine\n")?;
    let out = install("/usr/local")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(&config)?,
        "# mine\n",
        "a reinstall overwrote the configuration"
    );

    // Another prefix: a package's layout, the units pointing at its binary.
    let out = install("/usr")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/reuseport.service"))?;
    assert!(
        unit.contains("ExecStart=/usr/bin/reuseport run --config"),
        "{unit}"
    );
    assert!(root.join("usr/bin/reuseport").is_file());
    fs::remove_dir_all(&root)?;
    Ok(())
}
