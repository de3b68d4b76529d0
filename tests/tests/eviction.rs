//! Eviction that servers survive: with `--on-stuck evict`, a stopped worker's listener is shut
//! down (its queue migrates to the others) and made to listen again by the daemon, out of
//! rotation; resumed, the worker serves again from the same slot and the same socket, with no
//! new registration and no error of its own. The same for `drain --close` then `undrain`. For
//! `reuseport echo`, the Python example, and uvicorn, gunicorn and nginx under `reuseport spawn`.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use reuseport_testing::{
    daemon::{signal, Fixture, START_LIMIT},
    loadgen::request,
    servers::{self, children, Server},
    wait,
};
use reuseport_worker::protocol::WorkerState;

const EVICT: &[&str] = &["--on-stuck", "evict"];
/// The paced load around the stop: clients, requests each (a new connection each), and the
/// pause between two requests of a client (so the load outlasts the stop).
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 150;
const PAUSE: Duration = Duration::from_millis(5);
const REQUESTS: usize = CLIENTS * PER_CLIENT;
/// How long the victim stays stopped: well past detection, within a client's patience.
const STOPPED: Duration = Duration::from_millis(300);
/// How soon a resumed worker is back in rotation (probation, at most 1 s, and a sample).
const BACK_LIMIT: Duration = Duration::from_secs(3);

/// The daemon's registrations so far (its "registered in slot" lines).
fn registrations(f: &Fixture) -> usize {
    fs::read_to_string(f.dir.join("daemon.log"))
        .unwrap_or_default()
        .matches("registered in slot")
        .count()
}

/// The listening sockets on `addr` in the namespace, by inode (/proc/net/tcp, state 0A): the
/// same set before and after means no listener was replaced.
fn listeners(addr: SocketAddr) -> Result<BTreeSet<u64>> {
    let SocketAddr::V4(v4) = addr else {
        bail!("IPv4 only")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    // The test thread's namespace (each test runs in a fresh one).
    let table = fs::read_to_string("/proc/thread-self/net/tcp")?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9)?.parse().ok())?
        })
        .collect())
}

/// Whether `pid` answers a request within `limit` (new connections, one at a time).
fn answers_again(addr: SocketAddr, pid: u32, limit: Duration) -> Result<()> {
    let mut seen = BTreeMap::<u32, u64>::new();
    wait::until(limit, format!("pid {pid} answering again"), || {
        if let Ok(p) = request(addr, "/", Duration::from_secs(2)) {
            *seen.entry(p).or_default() += 1;
        }
        seen.contains_key(&pid)
    })
    .with_context(|| format!("answers seen: {seen:?}"))
}

/// SIGSTOPs `victim` (a process that accepts from one slot's listener) under load, resumes it
/// after [`STOPPED`], and checks: no request failed, the slot was evicted and its queue
/// migrated, it comes back to active with the same slot, the victim answers again, the
/// listeners are the same sockets and nobody registered again. Returns the evicted slot.
fn stop_and_resume(f: &Fixture, victim: u32, slot: Option<u32>) -> Result<u32> {
    let before = (registrations(f), listeners(f.addr)?);
    ensure!(
        before.0 > 0 && !before.1.is_empty(),
        "{before:?}\n{}",
        f.logs()
    );
    let addr = f.addr;
    let mut evicted = None;
    let outcomes = std::thread::scope(|s| -> Result<_> {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(move || {
                    (0..PER_CLIENT)
                        .map(|_| {
                            std::thread::sleep(PAUSE);
                            request(addr, "/", Duration::from_secs(5)).map_err(|e| e.to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        signal(victim, libc::SIGSTOP)?;
        let seen = f.wait_worker(Duration::from_secs(3), "the stopped worker evicted", |w| {
            w.state == WorkerState::Evicted && slot.is_none_or(|s| s == w.slot)
        });
        std::thread::sleep(STOPPED);
        signal(victim, libc::SIGCONT)?;
        let outcomes = clients
            .into_iter()
            .map(|c| c.join().map_err(|_| anyhow::anyhow!("clients panicked")))
            .collect::<Result<Vec<_>>>()?;
        evicted = Some(seen?.slot);
        Ok(outcomes.concat())
    })?;
    let slot = evicted.context("no eviction")?;
    let mut counts = BTreeMap::<u32, u64>::new();
    let mut errors = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(pid) => *counts.entry(pid).or_default() += 1,
            Err(e) => errors.push(e),
        }
    }
    ensure!(errors.is_empty(), "{errors:?}\n{}", f.logs());
    ensure!(
        counts.values().sum::<u64>() == REQUESTS as u64,
        "{counts:?}"
    );
    let status = f.status()?;
    let migrated: u64 = status.workers.iter().map(|w| w.migrated).sum();
    ensure!(migrated > 0, "nothing migrated: {status:?}");
    f.wait_worker(BACK_LIMIT, "the evicted slot active again", |w| {
        w.slot == slot && w.state == WorkerState::Active
    })?;
    answers_again(f.addr, victim, BACK_LIMIT)?;
    let after = (registrations(f), listeners(f.addr)?);
    ensure!(
        after == before,
        "registrations and listeners {before:?} became {after:?}\n{}",
        f.logs()
    );
    Ok(slot)
}

#[test]
fn reuseport_echo_survives_eviction_on_its_own_socket() -> Result<()> {
    let mut f = Fixture::with_daemon_args("evict-echo", EVICT)?;
    let pids = f.echo_workers(3)?;
    let status = f.wait_workers(3)?;
    let victim = pids[1];
    let slot = status
        .workers
        .iter()
        .find(|w| w.pid == victim)
        .context("victim not listed")?
        .slot;
    stop_and_resume(&f, victim, Some(slot))?;
    let counts = f.load_ok(300);
    ensure!(counts.get(&victim) == Some(&100), "{counts:?}");
    Ok(())
}

#[test]
fn drain_close_then_undrain_serves_again_on_the_same_socket() -> Result<()> {
    let mut f = Fixture::with_daemon_args("close-undrain", &["--stuck-ms", "60000"])?;
    let pids = f.echo_workers(2)?;
    let status = f.wait_workers(2)?;
    let victim = pids[0];
    let slot = status
        .workers
        .iter()
        .find(|w| w.pid == victim)
        .context("victim not listed")?
        .slot
        .to_string();
    let before = (registrations(&f), listeners(f.addr)?);
    let out = f.cli(&["drain", &slot, "--close"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = f.status()?;
    let w = closed
        .workers
        .iter()
        .find(|w| w.slot.to_string() == slot)
        .context("closed slot not listed")?;
    ensure!(
        w.state == WorkerState::Evicted && w.pid == victim,
        "{closed:?}"
    );
    ensure!(
        w.reason.as_deref().is_some_and(|r| r.contains("close")),
        "{w:?}"
    );
    let counts = f.load_ok(100);
    ensure!(counts.get(&pids[1]) == Some(&100), "{counts:?}");
    let out = f.cli(&["undrain", &slot])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = f.load_ok(200);
    ensure!(
        counts.get(&victim) == Some(&100) && counts.get(&pids[1]) == Some(&100),
        "{counts:?}\n{}",
        f.logs()
    );
    ensure!(
        (registrations(&f), listeners(f.addr)?) == before,
        "{}",
        f.logs()
    );
    Ok(())
}

#[test]
fn the_python_example_survives_eviction_on_its_own_socket() -> Result<()> {
    let mut f = Fixture::with_daemon_args("evict-python", EVICT)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/worker.py");
    let mut pids = Vec::new();
    for name in ["py0", "py1", "py2"] {
        let log = fs::File::create(f.dir.join(format!("{name}.log")))?;
        let child = Command::new("python3")
            .arg(&script)
            .args(["--listen", &f.addr.to_string(), "--name", name, "--control"])
            .arg(&f.control)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()?;
        pids.push(child.id());
        f.workers.push(child);
    }
    f.wait_workers(3)?;
    f.wait_answers(3)?;
    stop_and_resume(&f, pids[2], None)?;
    Ok(())
}

/// The apps in a directory of the fixture.
fn apps(f: &Fixture) -> Result<PathBuf> {
    let dir = f.dir.join("apps");
    fs::create_dir_all(&dir)?;
    servers::write_apps(&dir)?;
    Ok(dir)
}

/// `spawn`'s options and `--`, then the server's command line.
fn spawn_args(options: &[&str], command: &[OsString], args: &[&str]) -> Vec<OsString> {
    options
        .iter()
        .map(OsString::from)
        .chain(std::iter::once("--".into()))
        .chain(command.iter().cloned())
        .chain(args.iter().map(OsString::from))
        .collect()
}

/// The children of `pid` once there are `n`.
fn children_of(pid: u32, n: usize) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    wait::until(START_LIMIT, format!("{n} children of {pid}"), || {
        found = children(pid);
        found.len() == n
    })?;
    Ok(found)
}

#[test]
fn uvicorn_under_spawn_survives_eviction() -> Result<()> {
    let mut f = Fixture::with_daemon_args("evict-uvicorn", EVICT)?;
    let uvicorn = Server::Uvicorn.command()?;
    let dir = apps(&f)?.display().to_string();
    let args = [
        "--fd",
        "{fd}",
        "--app-dir",
        &dir,
        "--lifespan",
        "off",
        "--no-access-log",
        "app:asgi",
    ];
    let mut servers = Vec::new();
    for i in 0..3 {
        let name = format!("uv{i}");
        let spawn = f.spawn(&name, &spawn_args(&["--name", &name], &uvicorn, &args))?;
        servers.push(children_of(spawn, 1)?[0]);
    }
    f.wait_workers(3)?;
    f.wait_answers(3)?;
    stop_and_resume(&f, servers[0], None)?;
    Ok(())
}

#[test]
fn gunicorn_under_spawn_survives_eviction_without_crashing() -> Result<()> {
    let mut f = Fixture::with_daemon_args("evict-gunicorn", EVICT)?;
    let gunicorn = Server::Gunicorn.command()?;
    let dir = apps(&f)?.display().to_string();
    let args = ["-w", "1", "--chdir", &dir, "app:wsgi"];
    let mut workers = Vec::new();
    for i in 0..3 {
        let name = format!("gu{i}");
        let spawn = f.spawn(&name, &spawn_args(&["--name", &name], &gunicorn, &args))?;
        let master = children_of(spawn, 1)?[0];
        workers.push((master, children_of(master, 1)?[0]));
    }
    f.wait_workers(3)?;
    f.wait_answers(3)?;
    let (master, victim) = workers[1];
    stop_and_resume(&f, victim, None)?;
    // The same worker process serves: gunicorn neither crashed nor replaced it.
    ensure!(children(master) == vec![victim], "{:?}", children(master));
    Ok(())
}

#[test]
fn nginx_under_spawn_survives_eviction_without_accept_errors() -> Result<()> {
    let mut f = Fixture::with_daemon_args("evict-nginx", EVICT)?;
    let nginx = Server::Nginx.command()?;
    let dir = apps(&f)?;
    let conf = servers::nginx_conf(&dir, f.addr, 4)?.display().to_string();
    let error_log = dir.join("nginx-error.log");
    let args = ["-c", &conf, "-e", &error_log.display().to_string()];
    let options = ["--sockets", "4", "--pass", "nginx", "--name", "ngx"];
    let spawn = f.spawn("nginx", &spawn_args(&options, &nginx, &args))?;
    let master = children_of(spawn, 1)?[0];
    f.wait_workers(4)?;
    let workers = children_of(master, 4)?;
    f.wait_answers(4)?;
    let victim = workers[2];
    stop_and_resume(&f, victim, None)?;
    ensure!(children(master).contains(&victim), "{:?}", children(master));
    let log = fs::read_to_string(&error_log).unwrap_or_default();
    let accept_errors = log.lines().filter(|l| l.contains("accept")).count();
    ensure!(accept_errors <= 5, "{accept_errors} accept errors:\n{log}");
    Ok(())
}

/// A worker whose accept() ran into the instant between the shutdown and the new listen() gets
/// EINVAL, closes its listener and registers a new one on the same control connection: the old
/// slot is freed and the old socket closes with the daemon's copy (no orphan listener stays in
/// the group), and the new one starts draining like the closed one.
#[test]
fn a_replacement_registered_after_drain_close_frees_the_old_slot() -> Result<()> {
    use reuseport_worker::{self as worker, ControlClient, Request};
    use std::os::fd::AsFd;

    let mut f = Fixture::with_daemon_args("evict-replace", &["--stuck-ms", "60000"])?;
    let echo = f.echo("w0")?;
    f.wait_workers(1)?;
    let register = Request::Register {
        name: Some("race".into()),
        weight: None,
        pid: None,
    };
    let old = worker::bind_listener(f.addr, 16)?;
    let mut control = ControlClient::connect(&f.control)?;
    control.request_with_fd(&register, old.as_fd())?;
    let status = f.wait_workers(2)?;
    let slot = status
        .workers
        .iter()
        .find(|w| w.name == "race")
        .context("not listed")?
        .slot;
    let out = f.cli(&["drain", &slot.to_string(), "--close"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(listeners(f.addr)?.len() == 2, "{:?}", listeners(f.addr));
    drop(old);
    let new = worker::bind_listener(f.addr, 16)?;
    control.request_with_fd(&register, new.as_fd())?;
    wait::until(START_LIMIT, "the old listener closed", || {
        listeners(f.addr).is_ok_and(|l| l.len() == 2)
    })?;
    let status = f.wait_workers(2)?;
    let race: Vec<_> = status.workers.iter().filter(|w| w.name == "race").collect();
    ensure!(race.len() == 1, "{status:?}");
    ensure!(race[0].state == WorkerState::Draining, "{status:?}");
    // Nothing goes to the drained replacement, which accepts nothing.
    let counts = f.load_ok(50);
    ensure!(counts.keys().eq([&echo]), "{counts:?}");
    Ok(())
}
