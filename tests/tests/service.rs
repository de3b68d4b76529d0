//! The daemon as a service: its configuration file checked (`config check`, and `run` refusing
//! a bad one), and reloaded live (`reuseport reload`, SIGHUP) under load without losing a
//! connection.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use reuseport_steer::Policy;
use reuseport_testing::{
    binary,
    daemon::{self, Fixture, START_LIMIT},
    loadgen::{self, tally_ok, Load},
    netns, TestResult as Result,
};
use reuseport_worker::Request;

fn reuseport(args: &[&str]) -> Result<Output> {
    Ok(Command::new(binary::locate()?).args(args).output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("reuseport-service-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn the_example_file_is_valid() -> Result {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/reuseport.toml");
    let out = reuseport(&["config", "check", &example.to_string_lossy()])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("group 0.0.0.0:8080"),
        "{}",
        text(&out.stdout)
    );
    Ok(())
}

/// Every kind of mistake, each reported with its line and column, with status 2: by `config
/// check`, and by `run`, which then starts nothing.
#[test]
fn every_kind_of_invalid_file_is_reported_at_its_place() -> Result {
    let dir = scratch("invalid")?;
    let cases: &[(&str, &str, &str)] = &[
        ("syntax", "[[group]\nlisten = \"127.0.0.1:80\"\n", ":1:"),
        (
            "unknown key",
            "[[group]]\nlisten = \"127.0.0.1:80\"\nweight = 3\n",
            ":3:1:",
        ),
        (
            "bad address",
            "[[group]]\nlisten = \"localhost\"\n",
            ":2:10:",
        ),
        (
            "unknown policy",
            "[[group]]\nlisten = \"127.0.0.1:80\"\npolicy = \"fastest\"\n",
            ":3:10:",
        ),
        (
            "unknown mode",
            "[[group]]\nlisten = \"127.0.0.1:80\"\nmode = \"fast\"\n",
            ":3:8:",
        ),
        (
            "unknown on-empty",
            "[[group]]\nlisten = \"127.0.0.1:80\"\non_empty = \"x\"\n",
            ":3:12:",
        ),
        (
            "unknown on-stuck",
            "[health]\non_stuck = \"kill\"\n",
            ":2:12:",
        ),
        ("wrong type", "[health]\nstuck_ms = \"50\"\n", ":2:12:"),
        ("zero sample", "[health]\nsample_ms = 0\n", ":2:13:"),
        (
            "unknown protocol",
            "[[group]]\nlisten = \"127.0.0.1:80\"\nprotocol = \"sctp\"\n",
            ":3:12:",
        ),
        (
            "weight range",
            "[[group]]\nlisten = \"127.0.0.1:80\"\n[group.weights]\nw0 = 1001\n",
            ":4:6:",
        ),
        (
            "duplicate group",
            "[[group]]\nlisten = \"127.0.0.1:80\"\n[[group]]\nlisten = \"127.0.0.1:80\"\n",
            ":4:10:",
        ),
    ];
    for (what, body, place) in cases {
        let path = dir.join("bad.toml");
        fs::write(&path, body)?;
        let path = path.to_string_lossy();
        let out = reuseport(&["config", "check", &path])?;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(&format!("{path}{place}")), "{what}: {err}");
        let out = reuseport(&["run", "--config", &path, "--control", "/nonexistent/x.sock"])?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: run: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(&format!("{path}{place}")),
            "{what}"
        );
    }
    let out = reuseport(&["config", "check", "/nonexistent.toml"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The configuration of one group on `addr`, with more lines.
fn group(addr: SocketAddr, more: &str) -> String {
    format!("[[group]]\nlisten = \"{addr}\"\n{more}\n")
}

/// A group's status by address.
fn group_status(f: &Fixture, addr: SocketAddr) -> Result<Option<reuseport_worker::GroupStatus>> {
    let groups = f.request(&Request::Status)?.groups.unwrap_or_default();
    Ok(groups.into_iter().find(|g| g.listen == addr))
}

/// The policy and the weights change by a reload while connections keep coming: none fails,
/// and the new policy and weights are in effect (an exact 3:1 split afterwards). A bad file is
/// then refused with its place and changes nothing; SIGHUP reloads too.
#[test]
fn reload_under_load_applies_policy_and_weights_losing_nothing() -> Result {
    netns::fresh()?;
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut f = Fixture::on(addr, "service-reload", binary::locate()?)?;
    let file = f.dir.join("reuseport.toml");
    fs::write(&file, group(addr, "policy = \"round-robin\""))?;
    f.start_daemon_with_config(&file)?;
    let pids = f.echo_workers(2)?;
    f.wait_active(2)?;
    f.wait_answers(2)?;

    let load = std::thread::spawn(move || Load::new(addr, 6000, 4).run());
    std::thread::sleep(Duration::from_millis(50));
    fs::write(
        &file,
        group(
            addr,
            "policy = \"weighted\"\n[group.weights]\nw0 = 3\nw1 = 1",
        ),
    )?;
    let out = f.cli(&["reload"])?;
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), f.logs());
    let said = text(&out.stdout);
    assert!(
        said.contains("policy weighted") && said.contains("w0 (slot"),
        "{said}"
    );
    let outcomes = load
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
    let counts = tally_ok(&outcomes);
    assert_eq!(counts.values().sum::<u64>(), 6000);

    let status = f.status()?;
    assert_eq!(status.policy, Policy::Weighted);
    let weight = |pid: u32| {
        status
            .workers
            .iter()
            .find(|w| w.pid == pid)
            .map(|w| w.weight)
    };
    assert_eq!(
        (weight(pids[0]), weight(pids[1])),
        (Some(3), Some(1)),
        "{status:?}"
    );
    let counts = f.load_ok(400);
    assert_eq!(
        (counts.get(&pids[0]), counts.get(&pids[1])),
        (Some(&300), Some(&100)),
        "{counts:?}"
    );

    // A bad file: refused with its place, status 2; nothing changes.
    fs::write(
        &file,
        group(addr, "policy = \"hash\"\n[group.weights]\nw0 = 0"),
    )?;
    let out = f.cli(&["reload"])?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("reuseport.toml:5:6:") && err.contains("out of range"),
        "{err}"
    );
    let status = f.status()?;
    assert_eq!(
        status.policy,
        Policy::Weighted,
        "a refused file changed the policy"
    );

    // SIGHUP of a bad file: logged with the place, the configuration stays.
    daemon::signal(f.daemon_pid().unwrap_or(0), libc::SIGHUP)?;
    let log = f.dir.join("daemon.log");
    reuseport_testing::wait::until(START_LIMIT, "the refused SIGHUP in the log", || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("reload refused"))
    })?;
    let logged = fs::read_to_string(&log)?;
    assert!(logged.contains("reuseport.toml:5:6:"), "{logged}");
    assert_eq!(f.status()?.policy, Policy::Weighted);

    // SIGHUP: the same as `reload`.
    fs::write(
        &file,
        group(addr, "policy = \"round-robin\"\non_empty = \"drop\""),
    )?;
    daemon::signal(f.daemon_pid().unwrap_or(0), libc::SIGHUP)?;
    let status = f.wait_status(START_LIMIT, "round-robin after SIGHUP", |s| {
        s.policy == Policy::RoundRobin
    })?;
    assert_eq!(status.on_empty.to_string(), "drop");
    assert!(f.daemon_pid().is_some());
    f.load_ok(100);
    Ok(())
}

/// A group added by a reload serves its workers; removed, its program is detached: its workers
/// keep serving on the kernel's hash, and the daemon no longer lists it.
#[test]
fn reload_adds_and_removes_groups() -> Result {
    netns::fresh()?;
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let extra: SocketAddr = "127.0.0.1:8081".parse()?;
    let bin = binary::locate()?;
    let mut f = Fixture::on(addr, "service-groups", bin.clone())?;
    let file = f.dir.join("reuseport.toml");
    fs::write(&file, group(addr, ""))?;
    f.start_daemon_with_config(&file)?;
    f.echo_workers(1)?;
    f.wait_active(1)?;

    // A reload with no change says so.
    let out = f.cli(&["reload"])?;
    assert!(
        text(&out.stdout).contains("nothing changed"),
        "{}",
        text(&out.stdout)
    );

    // Health settings change live.
    fs::write(
        &file,
        format!(
            "[health]\nsample_ms = 10\nstuck_ms = 80\n{}",
            group(addr, "")
        ),
    )?;
    let out = f.cli(&["reload"])?;
    assert!(
        text(&out.stdout).contains("health: sample every 10 ms, stuck after 80 ms"),
        "{}",
        text(&out.stdout)
    );
    f.load_ok(50);

    fs::write(&file, group(addr, "") + &group(extra, "policy = \"hash\""))?;
    let out = f.cli(&["reload"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("127.0.0.1:8081: group added"),
        "{}",
        text(&out.stdout)
    );
    let mut g = Fixture::on(extra, "service-groups-extra", bin)?;
    g.control = f.control.clone();
    let v = [g.echo("v0")?, g.echo("v1")?];
    reuseport_testing::wait::until(START_LIMIT, "2 workers in the added group", || {
        group_status(&f, extra)
            .ok()
            .flatten()
            .is_some_and(|s| s.workers.len() == 2)
    })?;
    let status = group_status(&f, extra)?.ok_or_else(|| anyhow::anyhow!("no group"))?;
    assert_eq!(status.policy, Policy::Hash);
    g.wait_answers(2)?;

    fs::write(&file, group(addr, ""))?;
    let out = f.cli(&["reload"])?;
    let said = text(&out.stdout);
    assert!(
        said.contains("127.0.0.1:8081: group removed (2 workers"),
        "{said}"
    );
    assert!(said.contains("program detached"), "{said}");
    assert!(group_status(&f, extra)?.is_none());
    // Its workers still serve, on the kernel's hash, and no connection fails.
    let counts = g.load_ok(200);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>().len(),
        2,
        "{counts:?} of {v:?}"
    );
    // The first group is untouched.
    f.load_ok(50);
    assert_eq!(
        loadgen::request(addr, "/", Duration::from_secs(2))?,
        f.worker_pids()[0]
    );
    // The last group cannot be removed.
    fs::write(&file, "")?;
    let out = f.cli(&["reload"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no [[group]] left"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

/// A daemon started without a file refuses a reload and says how to get one.
#[test]
fn reload_without_a_file_is_refused() -> Result {
    if Path::new("/etc/reuseport/reuseport.toml").exists() {
        eprintln!("skipped: this host has /etc/reuseport/reuseport.toml, which run reads");
        return Ok(());
    }
    let f = Fixture::with_daemon_args("service-nofile", &[])?;
    let out = f.cli(&["reload"])?;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--config"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

/// Only the daemon's uid may reload, even when other uids may use the socket.
#[test]
fn another_uid_may_not_reload() -> Result {
    const NOBODY: u32 = 65534;
    netns::fresh()?;
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut f = Fixture::on(addr, "service-uid", binary::locate()?)?;
    let file = f.dir.join("reuseport.toml");
    fs::write(
        &file,
        format!("allowed_uids = [{NOBODY}]\n{}", group(addr, "")),
    )?;
    f.start_daemon_with_config(&file)?;
    let out = f
        .command_as(NOBODY)?
        .args(["reload", "--control"])
        .arg(&f.control)
        .output()?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("uid 65534 may not reload") && err.contains("--admin-uid"),
        "{err}"
    );
    // It may still read.
    let out = f
        .command_as(NOBODY)?
        .args(["status", "--control"])
        .arg(&f.control)
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    Ok(())
}
