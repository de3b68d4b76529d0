//! Adoption of running servers (`run --adopt`, `reuseport adopt PID`) with real servers: nginx
//! with `listen ... reuseport` and gunicorn with `--reuse-port` bind their own listeners and
//! know nothing of reuseport; the daemon finds each listener, shows the process that accepts
//! from it, round-robins exactly over them, follows reloads, respawns and kills with no failed
//! request, evicts a stopped worker so no request waits for it, releases a socket no server
//! holds any more, and skips sockets of uids it was not told to trust.

use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use reuseport_testing::{
    binary,
    daemon::{signal, Fixture, START_LIMIT},
    loadgen::{Paced, PacedOutcome},
    servers::{self, children, Running},
    wait,
};
use reuseport_worker::{protocol::WorkerState, GroupStatus};

/// Adopt, with exact counts (the fixture turns stuck detection off).
const ADOPT: &[&str] = &["--adopt"];
/// How long a change may take to show in the status: the daemon follows within a fraction of
/// a second, but a loaded 2-core machine may take seconds to start a worker.
const FOLLOW_LIMIT: Duration = Duration::from_secs(20);
/// The paced load around the changes: clients, the pause between two requests of a client,
/// each request's patience, and a bound on the requests of a client.
const CLIENTS: usize = 4;
const PAUSE: Duration = Duration::from_millis(5);
const PATIENCE: Duration = Duration::from_secs(10);
const PER_CLIENT: usize = 20_000;
const NOBODY: u32 = 65534;

/// A directory of the fixture for one server's files.
fn scratch(f: &Fixture, name: &str) -> Result<PathBuf> {
    let dir = f.dir.join(name);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits until the daemon's slots are exactly the adopted sockets of the processes `pids`, one
/// each; returns that status.
fn wait_adopted(f: &Fixture, pids: &BTreeSet<u32>) -> Result<GroupStatus> {
    let want: Vec<u32> = pids.iter().copied().collect();
    let status = f.wait_pids(FOLLOW_LIMIT, &want).with_context(|| f.logs())?;
    ensure!(
        status.workers.iter().all(|w| w.adopted),
        "not all adopted: {status:?}"
    );
    Ok(status)
}

/// The children of `master` once there are `n` and none of them is in `old` (a reload's or a
/// respawn's new workers, the old ones gone).
fn new_workers(master: u32, n: usize, old: &BTreeSet<u32>) -> Result<BTreeSet<u32>> {
    let mut now = BTreeSet::new();
    wait::until(FOLLOW_LIMIT, format!("{n} new workers of {master}"), || {
        now = children(master).into_iter().collect();
        now.len() == n && now.is_disjoint(old)
    })?;
    Ok(now)
}

/// The paced load's outcome, checked: every request answered.
fn no_failure(outcome: &PacedOutcome, f: &Fixture, server: &str) -> Result<()> {
    ensure!(
        outcome.failures.is_empty() && outcome.answered() > 0,
        "{} failed of {}: {:?}\n{server}\n{}",
        outcome.failures.len(),
        outcome.answered() + outcome.failures.len() as u64,
        &outcome.failures[..outcome.failures.len().min(5)],
        f.logs()
    );
    Ok(())
}

/// nginx's error log lines about accept().
fn accept_errors(dir: &std::path::Path) -> Vec<String> {
    fs::read_to_string(dir.join("nginx-error.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("accept"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn nginx_with_4_workers_is_adopted_and_round_robins_exactly_by_worker_pid() -> Result<()> {
    let f = Fixture::with_daemon_args("adopt-nginx", ADOPT)?;
    let dir = scratch(&f, "nginx")?;
    let nginx = servers::nginx(&dir, f.addr, 4)?;
    let workers = servers::workers_of(&[nginx.pid()], 4, START_LIMIT)?;
    let status = wait_adopted(&f, &workers)?;
    // Each slot shows its worker: pid, uid and name.
    ensure!(
        status
            .workers
            .iter()
            .all(|w| w.name == "nginx" && w.uid == 0 && w.state == WorkerState::Active),
        "{status:?}"
    );
    f.wait_answers(4)?;
    f.assert_round_robin(&workers, 100)?;
    ensure!(accept_errors(&dir).is_empty(), "{:?}", accept_errors(&dir));
    Ok(())
}

#[test]
fn nginx_reloads_scales_4_6_4_and_loses_a_worker_under_load_with_0_failed() -> Result<()> {
    let f = Fixture::with_daemon_args("adopt-nginx-reload", ADOPT)?;
    let dir = scratch(&f, "nginx")?;
    let nginx = servers::nginx(&dir, f.addr, 4)?;
    let master = nginx.pid();
    let mut workers = servers::workers_of(&[master], 4, START_LIMIT)?;
    wait_adopted(&f, &workers)?;
    f.wait_answers(4)?;

    let load = Paced::start(f.addr, CLIENTS, PAUSE, PATIENCE, PER_CLIENT);
    let mut followed = Vec::new();
    for (step, count) in [("reload", 4), ("reload to 6", 6), ("reload to 4", 4)] {
        servers::nginx_conf(&dir, f.addr, count)?;
        signal(master, libc::SIGHUP)?;
        workers = new_workers(master, count, &workers)?;
        let seen = Instant::now();
        wait_adopted(&f, &workers).with_context(|| format!("{step}: {}", nginx.output()))?;
        followed.push((step, seen.elapsed()));
    }
    let victim = *workers.iter().next().context("no worker")?;
    // Between requests: what a killed process had accepted is lost with it.
    load.between(|| signal(victim, libc::SIGKILL))?;
    let respawned = new_workers(master, 4, &BTreeSet::from([victim]))?;
    let seen = Instant::now();
    wait_adopted(&f, &respawned)?;
    followed.push(("killed worker respawned", seen.elapsed()));
    let outcome = load.finish();
    eprintln!(
        "nginx: {} requests, slowest {:?}; status followed (after the new workers were seen): \
         {followed:?}",
        outcome.answered(),
        outcome.slowest
    );
    no_failure(&outcome, &f, &nginx.output())?;
    // Quiescent again: exact round-robin over the workers now.
    f.assert_round_robin(&respawned, 50)
}

#[test]
fn a_stopped_nginx_worker_is_evicted_and_no_request_waits_for_it() -> Result<()> {
    let f = Fixture::with_daemon_args("adopt-nginx-stop", &["--adopt", "--on-stuck", "evict"])?;
    let dir = scratch(&f, "nginx")?;
    let nginx = servers::nginx(&dir, f.addr, 4)?;
    let workers = servers::workers_of(&[nginx.pid()], 4, START_LIMIT)?;
    wait_adopted(&f, &workers)?;
    f.wait_answers(4)?;

    let victim = *workers.iter().next().context("no worker")?;
    let load = Paced::start(f.addr, 8, PAUSE, PATIENCE, PER_CLIENT);
    std::thread::sleep(Duration::from_millis(200));
    signal(victim, libc::SIGSTOP)?;
    let evicted = f.wait_worker(Duration::from_secs(10), "the stopped worker evicted", |w| {
        w.pid == victim && w.state == WorkerState::Evicted
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(victim, libc::SIGCONT)?;
    std::thread::sleep(Duration::from_millis(300));
    let outcome = load.finish();
    evicted?;
    eprintln!(
        "nginx stopped worker: {} requests, slowest {:?}",
        outcome.answered(),
        outcome.slowest
    );
    no_failure(&outcome, &f, &nginx.output())?;
    // Generous for a loaded CI machine: the eviction takes ~50 ms here.
    ensure!(
        outcome.slowest < Duration::from_secs(1),
        "a request waited {:?}",
        outcome.slowest
    );
    // Back in rotation, serving from the same slot.
    f.wait_worker(FOLLOW_LIMIT, "the resumed worker active", |w| {
        w.pid == victim && w.state == WorkerState::Active
    })?;
    let errors = accept_errors(&dir);
    ensure!(
        errors.len() <= 5,
        "{} accept errors: {errors:?}",
        errors.len()
    );
    Ok(())
}

#[test]
fn three_gunicorns_with_reuse_port_are_adopted_and_follow_a_kill_and_a_hup_with_0_failed(
) -> Result<()> {
    let f = Fixture::with_daemon_args("adopt-gunicorn", ADOPT)?;
    let dir = scratch(&f, "gunicorn")?;
    let gunicorns = (0..3)
        .map(|i| servers::gunicorn(&dir, f.addr, &format!("gu{i}")))
        .collect::<Result<Vec<Running>>>()?;
    let masters: Vec<u32> = gunicorns.iter().map(Running::pid).collect();
    let output = || {
        gunicorns
            .iter()
            .map(Running::output)
            .collect::<Vec<_>>()
            .join("\n")
    };
    // gunicorn 20: the master binds, its one worker accepts (with select: the daemon tells it
    // from its master as the holder that descends from the other).
    let workers = servers::workers_of(&masters, 1, START_LIMIT)?;
    wait_adopted(&f, &workers).with_context(output)?;
    f.wait_answers(3)?;
    f.assert_round_robin(&workers, 100)?;

    let load = Paced::start(f.addr, CLIENTS, PAUSE, PATIENCE, PER_CLIENT);
    let worker_of = |master: u32| children(master).into_iter().collect::<BTreeSet<u32>>();
    let mut followed = Vec::new();
    // A killed worker: the master starts another.
    let victim = *worker_of(masters[0]).iter().next().context("no worker")?;
    // Between requests: what a killed process had accepted is lost with it.
    load.between(|| signal(victim, libc::SIGKILL))?;
    new_workers(masters[0], 1, &BTreeSet::from([victim]))?;
    let seen = Instant::now();
    wait_adopted(&f, &servers::workers_of(&masters, 1, START_LIMIT)?)?;
    followed.push(("killed worker", seen.elapsed()));
    // HUP: a new worker, then the old one stops.
    let old = worker_of(masters[1]);
    signal(masters[1], libc::SIGHUP)?;
    new_workers(masters[1], 1, &old)?;
    let seen = Instant::now();
    let now = servers::workers_of(&masters, 1, START_LIMIT)?;
    wait_adopted(&f, &now).with_context(output)?;
    followed.push(("HUP", seen.elapsed()));
    let outcome = load.finish();
    eprintln!(
        "gunicorn: {} requests, slowest {:?}; status followed (after the new worker was seen): \
         {followed:?}",
        outcome.answered(),
        outcome.slowest
    );
    no_failure(&outcome, &f, &output())?;
    f.assert_round_robin(&now, 100)
}

#[test]
fn adopt_pid_adopts_a_running_nginx_and_its_slots_go_when_nginx_does() -> Result<()> {
    // No --adopt: only what is asked for.
    let f = Fixture::new("adopt-pid")?;
    let dir = scratch(&f, "nginx")?;
    let nginx = servers::nginx(&dir, f.addr, 2)?;
    let workers = servers::workers_of(&[nginx.pid()], 2, START_LIMIT)?;
    f.wait_answers(1)?;
    ensure!(f.status()?.workers.is_empty(), "adopted unasked");

    let out = f.cli(&["adopt", &nginx.pid().to_string()])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.logs()
    );
    ensure!(
        stdout.lines().filter(|l| l.contains(" slot ")).count() == 2,
        "{stdout}"
    );
    wait_adopted(&f, &workers)?;
    f.assert_round_robin(&workers, 50)?;

    // A process with no listener on the group: refused (exit 4), named.
    let sleeper = Running::start(
        {
            let mut c = Command::new("sleep");
            c.arg("30");
            c
        },
        &dir.join("sleep.out"),
    )?;
    let out = f.cli(&["adopt", &sleeper.pid().to_string()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(4), "{stderr}");
    ensure!(
        stderr.contains(&format!("process {}", sleeper.pid())) && stderr.contains("no listening"),
        "{stderr}"
    );

    // nginx gone: no server holds the sockets, the daemon lets them go at once.
    drop(nginx);
    let gone = Instant::now();
    f.wait_workers(0)?;
    eprintln!("released {:?} after nginx was killed", gone.elapsed());
    Ok(())
}

#[test]
fn a_listener_of_another_uid_is_skipped_with_one_log_line_and_a_closed_one_released() -> Result<()>
{
    let f = Fixture::with_daemon_args("adopt-uid", ADOPT)?;
    let dir = scratch(&f, "echo")?;
    let addr = f.addr.to_string();
    let echo = ["echo", "--no-register", "--listen", &addr];
    // The kernel keeps sockets of different uids out of one reuseport group: one at a time.
    let mut theirs = f.command_as(NOBODY)?;
    theirs.args(echo);
    let theirs = Running::start(theirs, &dir.join("nobody.out"))?;
    f.wait_answers(1)?;
    let skipped = || {
        fs::read_to_string(f.dir.join("daemon.log"))
            .unwrap_or_default()
            .matches(&format!("belongs to uid {NOBODY}"))
            .count()
    };
    wait::until(START_LIMIT, "the skip logged", || skipped() > 0)
        .with_context(|| format!("{}\n{}", f.logs(), theirs.output()))?;
    // Many scans later (one each tick for a second after the listener appeared), still one
    // line, and nothing adopted.
    std::thread::sleep(Duration::from_millis(2500));
    ensure!(skipped() == 1, "{}", f.logs());
    ensure!(f.status()?.workers.is_empty(), "{:?}", f.status());
    drop(theirs);

    // One of the daemon's uid is adopted; once it exits, its slot is released at once.
    let mut ours = Command::new(binary::locate()?);
    ours.args(echo);
    let ours = Running::start(ours, &dir.join("root.out"))?;
    wait_adopted(&f, &BTreeSet::from([ours.pid()])).with_context(|| ours.output())?;
    let pid = ours.pid();
    drop(ours);
    let gone = Instant::now();
    f.wait_workers(0)?;
    eprintln!("released {:?} after the server was killed", gone.elapsed());
    ensure!(!servers::alive(pid));
    Ok(())
}

#[test]
fn workers_that_register_keep_their_slots_when_the_group_adopts() -> Result<()> {
    let mut f = Fixture::with_daemon_args("adopt-registered", ADOPT)?;
    let pids = f.echo_workers(3)?;
    // A registration wins over an adoption of the same socket that came first.
    let status = f.wait_pids(START_LIMIT, &pids)?;
    ensure!(status.workers.iter().all(|w| !w.adopted), "{status:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let status = f.wait_pids(START_LIMIT, &pids)?;
    ensure!(status.workers.iter().all(|w| !w.adopted), "{status:?}");
    f.assert_round_robin(&pids.iter().copied().collect(), 100)
}

#[test]
fn a_restarted_daemon_adopts_the_same_sockets_back_into_their_slots() -> Result<()> {
    let mut f = Fixture::with_daemon_args("adopt-restart", ADOPT)?;
    let dir = scratch(&f, "nginx")?;
    let nginx = servers::nginx(&dir, f.addr, 2)?;
    let workers = servers::workers_of(&[nginx.pid()], 2, START_LIMIT)?;
    let slots = |s: &GroupStatus| {
        s.workers
            .iter()
            .map(|w| (w.pid, w.slot))
            .collect::<BTreeSet<_>>()
    };
    let before = slots(&wait_adopted(&f, &workers)?);

    f.stop_daemon(libc::SIGTERM)?;
    f.start_daemon(ADOPT)?;
    let after = slots(&wait_adopted(&f, &workers)?);
    ensure!(before == after, "{before:?} then {after:?}\n{}", f.logs());
    f.wait_answers(2)?;
    f.assert_round_robin(&workers, 50)
}

#[test]
fn only_an_admin_may_ask_for_an_adoption() -> Result<()> {
    let f = Fixture::with_daemon_args("adopt-admin", &["--allow-uid", "65534"])?;
    let dir = scratch(&f, "nginx")?;
    let nginx = servers::nginx(&dir, f.addr, 1)?;
    servers::workers_of(&[nginx.pid()], 1, START_LIMIT)?;
    let out = f
        .command_as(NOBODY)?
        .args(["adopt", &nginx.pid().to_string(), "--control"])
        .arg(&f.control)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(4), "{stderr}");
    ensure!(stderr.contains("--admin-uid"), "{stderr}");
    ensure!(f.status()?.workers.is_empty(), "{:?}", f.status());
    Ok(())
}

#[test]
fn a_server_replaced_by_one_binding_a_new_socket_loses_no_connection() -> Result<()> {
    let f = Fixture::with_daemon_args("adopt-replace", ADOPT)?;
    let dir = scratch(&f, "echo")?;
    let addr = f.addr.to_string();
    let echo = |name: &str| -> Result<Running> {
        let mut cmd = Command::new(binary::locate()?);
        cmd.args(["echo", "--no-register", "--listen", &addr]);
        Running::start(cmd, &dir.join(format!("{name}.out")))
    };
    let (first, second) = (echo("first")?, echo("second")?);
    wait_adopted(&f, &BTreeSet::from([first.pid(), second.pid()]))?;
    f.wait_answers(2)?;

    let load = Paced::start(f.addr, CLIENTS, PAUSE, PATIENCE, PER_CLIENT);
    std::thread::sleep(Duration::from_millis(200));
    // The first exits (between requests: what it had accepted is lost with it); connections
    // sent to its socket meanwhile wait in the daemon's copy until the daemon sees nobody
    // holds it and lets it go, which moves them to the second. Then a new one binds its own.
    let old = first.pid();
    load.between(|| drop(first));
    let gone = Instant::now();
    f.wait_status(FOLLOW_LIMIT, "the first's socket released", |s| {
        s.workers.iter().all(|w| w.pid != old)
    })?;
    let released = gone.elapsed();
    let third = echo("third")?;
    let started = Instant::now();
    wait_adopted(&f, &BTreeSet::from([second.pid(), third.pid()]))?;
    let adopted = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let outcome = load.finish();
    let migrated: u64 = f.status()?.workers.iter().map(|w| w.migrated).sum();
    eprintln!(
        "replaced: released {released:?} after the exit, the new socket adopted {adopted:?} after \
         its start; {} requests, slowest {:?}, {migrated} moved from the released queue",
        outcome.answered(),
        outcome.slowest
    );
    no_failure(&outcome, &f, "")?;
    f.assert_round_robin(&BTreeSet::from([second.pid(), third.pid()]), 50)
}

#[test]
fn a_daemon_without_ptrace_rights_says_what_it_needs() -> Result<()> {
    reuseport_testing::fresh_netns()?;
    let f = Fixture::on(
        "127.0.0.1:8080".parse()?,
        "adopt-noptrace",
        binary::locate()?,
    )?;
    // Root without CAP_SYS_PTRACE: it may list other processes' descriptors, not read them.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set",
        "-sys_ptrace",
        "--inh-caps",
        "-sys_ptrace",
        "--",
    ])
    .arg(binary::locate()?)
    .args([
        "run",
        "--listen",
        &f.addr.to_string(),
        "--adopt",
        "--no-pin",
    ])
    .arg("--control")
    .arg(&f.control);
    let log = f.dir.join("daemon.log");
    let daemon = Running::start(cmd, &log)?;
    wait::until(START_LIMIT, "the daemon's control socket", || {
        f.control.exists()
    })?;
    let dir = scratch(&f, "nginx")?;
    let nginx = servers::nginx(&dir, f.addr, 1)?;
    servers::workers_of(&[nginx.pid()], 1, START_LIMIT)?;
    let said = || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("needs ptrace rights over the servers it adopts (CAP_SYS_PTRACE)")
            .count()
    };
    wait::until(START_LIMIT, "the missing right named", || said() > 0)
        .with_context(|| daemon.output())?;
    // One line for the one listener, however many scans.
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(said() == 1, "{}", daemon.output());
    ensure!(f.status()?.workers.is_empty(), "{:?}", f.status());
    Ok(())
}
