//! `reuseport spawn` with real servers (uvicorn, gunicorn, nginx as `cargo xtask setup`
//! installs them) and with small scripts: the server gets exactly its listeners at descriptors
//! 3.. and the variables that name them, the group round-robins exactly over the processes that
//! serve, a killed server process loses no connection, signals reach the server, and `spawn`
//! exits with the server's status.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use reuseport_testing::{
    binary,
    daemon::{signal, Fixture, START_LIMIT},
    fresh_netns,
    loadgen::request,
    servers::{self, alive, children, Server},
    wait,
};

/// How long a server may take to stop after SIGTERM (gunicorn's graceful stop included).
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Daemon flags for exact counts: health checks that never fire. On 2 shared cores a Python
/// server can leave a connection queued past the default 50 ms, and a slot found stuck is
/// skipped (what it should do, but not what an exact count wants).
const EXACT: &[&str] = &["--stuck-ms", "60000"];
/// Rounds of concurrent requests around a kill, and requests per round.
const ROUNDS: usize = 60;
const PER_ROUND: usize = 4;

/// The apps in a directory of the fixture.
fn apps(f: &Fixture) -> Result<PathBuf> {
    let dir = f.dir.join("apps");
    fs::create_dir_all(&dir)?;
    servers::write_apps(&dir)?;
    Ok(dir)
}

/// A Python for the standard-library scripts.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A fixture with no daemon (yet), in a fresh namespace.
fn without_daemon(name: &str) -> Result<Fixture> {
    fresh_netns()?;
    Fixture::on(
        "127.0.0.1:8080".parse()?,
        &format!("test-{name}"),
        binary::locate()?,
    )
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

/// The process `spawn` started (its only child), once it exists.
fn server_of(spawn: u32) -> Result<u32> {
    let mut found = None;
    wait::until(
        START_LIMIT,
        format!("spawn {spawn} starting its server"),
        || {
            found = children(spawn).first().copied();
            found.is_some()
        },
    )?;
    found.context("no server")
}

/// The children of each server process (gunicorn's and nginx's workers), once `per_server` of
/// each exist.
fn workers_of(servers: &[u32], per_server: usize) -> Result<BTreeSet<u32>> {
    servers::workers_of(servers, per_server, START_LIMIT)
}

/// `rounds` rounds of `PER_ROUND` concurrent requests on new connections; after round
/// `kill_at`, between rounds (so no request is in flight on it: what a killed process had
/// accepted is lost with it), `victim` gets SIGKILL. Returns the answers per pid and the
/// failures.
fn rounds_with_kill(
    addr: SocketAddr,
    rounds: usize,
    kill_at: usize,
    victim: u32,
) -> Result<(BTreeMap<u32, u64>, Vec<String>)> {
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        if round == kill_at {
            signal(victim, libc::SIGKILL)?;
        }
        let answers: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..PER_ROUND)
                .map(|_| s.spawn(move || request(addr, "/", Duration::from_secs(5))))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        for answer in answers {
            match answer {
                Ok(Ok(pid)) => *counts.entry(pid).or_default() += 1,
                Ok(Err(e)) => failures.push(format!("round {round}: {e}")),
                Err(_) => failures.push(format!("round {round}: a client panicked")),
            }
        }
    }
    Ok((counts, failures))
}

/// Waits for the spawn started `index`-th to exit; its status.
fn exit_of(f: &mut Fixture, index: usize, limit: Duration) -> Result<ExitStatus> {
    let child = f.workers.get_mut(index).context("no such spawn")?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("spawn {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Exact round-robin over `expected` serving pids, `per_pid` requests each.
fn assert_round_robin(f: &Fixture, expected: &BTreeSet<u32>, per_pid: u64) -> Result<()> {
    f.assert_round_robin(expected, per_pid)
}

/// SIGTERM to every spawn still running while a 500 ms request is in flight: the request is
/// answered (the servers stop gracefully) and every spawn exits with 0, its server gone.
fn terminate_gracefully(f: &mut Fixture, spawns: &[usize], servers: &[u32]) -> Result<()> {
    let addr = f.addr;
    let slow = std::thread::spawn(move || request(addr, "/sleep", Duration::from_secs(10)));
    // Accepted and in the app's sleep by then.
    std::thread::sleep(Duration::from_millis(200));
    for &i in spawns {
        signal(f.workers[i].id(), libc::SIGTERM)?;
    }
    for &i in spawns {
        let status = exit_of(f, i, STOP_LIMIT)?;
        ensure!(
            status.code() == Some(0),
            "spawn {i}: {status}\n{}",
            f.logs()
        );
    }
    let answer = slow
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))?;
    ensure!(
        answer.is_ok(),
        "the request in flight: {answer:?}\n{}",
        f.logs()
    );
    for &s in servers {
        wait::until(STOP_LIMIT, format!("server {s} gone"), || !alive(s))?;
    }
    Ok(())
}

#[test]
fn three_uvicorns_take_fd_3_round_robin_exactly_and_a_killed_one_loses_nothing() -> Result<()> {
    let mut f = Fixture::with_daemon_args("spawn-uvicorn", EXACT)?;
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
    let mut spawns = Vec::new();
    for i in 0..3 {
        let name = format!("uv{i}");
        spawns.push(f.spawn(&name, &spawn_args(&["--name", &name], &uvicorn, &args))?);
    }
    let servers = spawns
        .iter()
        .map(|&s| server_of(s))
        .collect::<Result<Vec<_>>>()?;
    f.wait_workers(3)?;
    f.wait_answers(3)?;
    // uvicorn serves in the process spawn started.
    assert_round_robin(&f, &servers.iter().copied().collect(), 100)?;

    let victim = servers[0];
    let (counts, failures) = rounds_with_kill(f.addr, ROUNDS, ROUNDS / 3, victim)?;
    ensure!(failures.is_empty(), "{failures:?}\n{}", f.logs());
    ensure!(
        counts.values().sum::<u64>() == (ROUNDS * PER_ROUND) as u64,
        "{counts:?}"
    );
    // Its spawn exits as a shell reports a SIGKILL, and leaves the group.
    let status = exit_of(&mut f, 0, Duration::from_secs(5))?;
    ensure!(status.code() == Some(137), "{status}");
    f.wait_workers(2)?;
    assert_round_robin(&f, &servers[1..].iter().copied().collect(), 100)?;

    terminate_gracefully(&mut f, &[1, 2], &servers[1..])
}

#[test]
fn three_gunicorns_take_listen_fds_round_robin_exactly_and_a_killed_worker_loses_nothing(
) -> Result<()> {
    let mut f = Fixture::with_daemon_args("spawn-gunicorn", EXACT)?;
    let gunicorn = Server::Gunicorn.command()?;
    let dir = apps(&f)?.display().to_string();
    // No -b: gunicorn takes LISTEN_FDS when LISTEN_PID is its pid. The third is told with
    // -b fd://3 instead, which it accepts only without LISTEN_FDS (it would take fd 3 twice).
    let args = ["-w", "1", "--chdir", &dir, "app:wsgi"];
    let mut spawns = Vec::new();
    for i in 0..3 {
        let name = format!("gu{i}");
        let (options, args) = match i {
            2 => (
                vec!["--name", &name, "--pass", "fd"],
                [&args[..], &["-b", "fd://{fd}"]].concat(),
            ),
            _ => (vec!["--name", &name], args.to_vec()),
        };
        spawns.push(f.spawn(&name, &spawn_args(&options, &gunicorn, &args))?);
    }
    let masters = spawns
        .iter()
        .map(|&s| server_of(s))
        .collect::<Result<Vec<_>>>()?;
    f.wait_workers(3)?;
    // With -w 1 the master's one worker accepts: the serving pids are the workers'.
    let workers = workers_of(&masters, 1)?;
    f.wait_answers(3)?;
    assert_round_robin(&f, &workers, 100)?;

    let victim = *workers.iter().next().context("no worker")?;
    let (counts, failures) = rounds_with_kill(f.addr, ROUNDS, ROUNDS / 3, victim)?;
    ensure!(failures.is_empty(), "{failures:?}\n{}", f.logs());
    ensure!(
        counts.values().sum::<u64>() == (ROUNDS * PER_ROUND) as u64,
        "{counts:?}"
    );
    // The master started a new worker on the same socket, still registered.
    let respawned = workers_of(&masters, 1)?;
    ensure!(!respawned.contains(&victim), "{respawned:?}");
    assert_eq!(f.status()?.workers.len(), 3);
    assert_round_robin(&f, &respawned, 100)?;

    terminate_gracefully(&mut f, &[0, 1, 2], &masters)
}

#[test]
fn nginx_takes_4_sockets_through_nginx_round_robins_exactly_and_a_killed_worker_loses_nothing(
) -> Result<()> {
    let mut f = Fixture::with_daemon_args("spawn-nginx", EXACT)?;
    let nginx = Server::Nginx.command()?;
    let dir = apps(&f)?;
    let conf = servers::nginx_conf(&dir, f.addr, 4)?.display().to_string();
    let error_log = dir.join("nginx-error.log");
    let args = ["-c", &conf, "-e", &error_log.display().to_string()];
    let options = ["--sockets", "4", "--pass", "nginx", "--name", "ngx"];
    let spawn = f.spawn("nginx", &spawn_args(&options, &nginx, &args))?;
    let master = server_of(spawn)?;
    let status = f.wait_workers(4)?;
    let names: BTreeSet<String> = status.workers.iter().map(|w| w.name.clone()).collect();
    assert_eq!(
        names,
        ["ngx-0", "ngx-1", "ngx-2", "ngx-3"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let workers = workers_of(&[master], 4)?;
    f.wait_answers(4)?;
    // Each worker accepts from its own socket only: 100 each, by worker pid.
    assert_round_robin(&f, &workers, 100)?;

    let victim = *workers.iter().next().context("no worker")?;
    let (counts, failures) = rounds_with_kill(f.addr, ROUNDS, ROUNDS / 3, victim)?;
    let log = fs::read_to_string(&error_log).unwrap_or_default();
    ensure!(failures.is_empty(), "{failures:?}\n{log}");
    ensure!(
        counts.values().sum::<u64>() == (ROUNDS * PER_ROUND) as u64,
        "{counts:?}"
    );
    let respawned = workers_of(&[master], 4)?;
    ensure!(!respawned.contains(&victim), "{respawned:?}");
    assert_round_robin(&f, &respawned, 100)?;

    // nginx stops at once on SIGTERM (no request of its is long); spawn exits with its 0.
    signal(spawn, libc::SIGTERM)?;
    let status = exit_of(&mut f, 0, STOP_LIMIT)?;
    ensure!(status.code() == Some(0), "{status}\n{}", f.logs());
    wait::until(STOP_LIMIT, "nginx gone", || {
        !alive(master) && respawned.iter().all(|&w| !alive(w))
    })?;
    let log = fs::read_to_string(&error_log).unwrap_or_default();
    ensure!(!log.contains("[emerg]"), "{log}");
    Ok(())
}

/// The first line of `path`, once it has one.
fn first_line(path: &Path) -> Result<String> {
    let mut line = None;
    wait::until(START_LIMIT, format!("a line in {}", path.display()), || {
        line = fs::read_to_string(path)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned));
        line.is_some()
    })?;
    line.context("no line")
}

/// The listening sockets on `addr` of `pid`'s network namespace, by inode (from its
/// /proc/net/tcp: state 0A is LISTEN).
fn listeners_on(pid: u32, addr: SocketAddr) -> Result<BTreeSet<u64>> {
    let SocketAddr::V4(v4) = addr else {
        bail!("IPv4 only")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
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

#[test]
fn the_server_gets_exactly_its_listeners_at_3_and_the_systemd_variables() -> Result<()> {
    let mut f = Fixture::new("spawn-fds")?;
    let out = f.dir.join("env");
    let script = format!(
        "echo \"$$ $LISTEN_PID $LISTEN_FDS $LISTEN_FDNAMES ${{NGINX-unset}} $1\" > {}; exec sleep 30",
        out.display()
    );
    let command = ["sh".into(), "-c".into(), script.into(), "sh".into()];
    let spawn = f.spawn(
        "sh",
        &spawn_args(&["--sockets", "3", "--name", "web"], &command, &["fd={fd}"]),
    )?;
    let line = first_line(&out)?;
    let server = server_of(spawn)?;
    assert_eq!(
        line,
        format!("{server} {server} 3 web-0:web-1:web-2 unset fd=3")
    );
    let status = f.wait_workers(3)?;
    let names: BTreeSet<&str> = status.workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["web-0", "web-1", "web-2"]));

    // Descriptors 3, 4, 5 are the three listeners on the group's address, and no other
    // descriptor of the server is one.
    let ours = listeners_on(server, f.addr)?;
    let mut at = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{server}/fd"))? {
        let entry = entry?;
        let fd: u32 = entry.file_name().to_string_lossy().parse()?;
        let target = fs::read_link(entry.path())?.display().to_string();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            at.insert(fd, inode.parse::<u64>()?);
        }
    }
    let listener_fds: Vec<u32> = at
        .iter()
        .filter(|(_, inode)| ours.contains(inode))
        .map(|(&fd, _)| fd)
        .collect();
    assert_eq!(listener_fds, vec![3, 4, 5], "{at:?} {ours:?}");
    assert_eq!(ours.len(), 3, "{ours:?}");
    Ok(())
}

#[test]
fn nginx_and_fd_passing_set_only_their_own_variables() -> Result<()> {
    let mut f = without_daemon("spawn-pass-env")?;
    for (pass, expected) in [
        ("nginx", "3;4; unset unset fd=3"),
        ("fd", "unset unset unset fd=3"),
    ] {
        let out = f.dir.join(format!("env-{pass}"));
        let script = format!(
            "echo \"${{NGINX-unset}} ${{LISTEN_FDS-unset}} ${{LISTEN_PID-unset}} $1\" > {}; \
             exec sleep 30",
            out.display()
        );
        let command = ["sh".into(), "-c".into(), script.into(), "sh".into()];
        let options = ["--sockets", "2", "--pass", pass];
        f.spawn(pass, &spawn_args(&options, &command, &["fd={fd}"]))?;
        assert_eq!(first_line(&out)?, expected);
    }
    Ok(())
}

#[test]
fn signals_reach_the_server_and_spawn_exits_with_its_status() -> Result<()> {
    // No daemon: spawn runs the server anyway and would register once one starts.
    let mut f = without_daemon("spawn-signals")?;
    let dir = apps(&f)?;
    let seen = dir.join("seen");
    let script = dir.join("signals.py").display().to_string();
    let command = [
        python().into(),
        script.into(),
        seen.clone().into_os_string(),
    ];
    let spawn = f.spawn("signals", &spawn_args(&[], &command, &[]))?;
    let lines = |n: usize| -> Result<Vec<String>> {
        let mut got = Vec::new();
        wait::until(
            START_LIMIT,
            format!("{n} lines in {}", seen.display()),
            || {
                got = fs::read_to_string(&seen)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect();
                got.len() >= n
            },
        )?;
        Ok(got)
    };
    lines(1)?;
    let forwarded = [
        (libc::SIGHUP, "HUP"),
        (libc::SIGINT, "INT"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
    ];
    for (i, (sig, name)) in forwarded.iter().enumerate() {
        signal(spawn, *sig)?;
        let got = lines(i + 2)?;
        assert_eq!(got[i + 1], *name, "{got:?}");
    }
    signal(spawn, libc::SIGTERM)?;
    let status = exit_of(&mut f, 0, STOP_LIMIT)?;
    assert_eq!(lines(7)?.last().map(String::as_str), Some("TERM"));
    // The script exits with 3 after TERM.
    assert_eq!(status.code(), Some(3), "{}", f.logs());

    // An exit code, and death by a signal as a shell reports it (128 + 9).
    for (script, code) in [("exit 7", 7), ("kill -9 $$", 137)] {
        let index = f.workers.len();
        let command = ["sh".into(), "-c".into(), script.into()];
        f.spawn(&format!("sh{index}"), &spawn_args(&[], &command, &[]))?;
        let status = exit_of(&mut f, index, START_LIMIT)?;
        assert_eq!(status.code(), Some(code), "{script}: {}", f.logs());
    }
    Ok(())
}

#[test]
fn spawn_serves_before_the_daemon_starts_and_registers_again_after_it_restarts() -> Result<()> {
    let mut f = without_daemon("spawn-nodaemon")?;
    let dir = apps(&f)?;
    let script = dir.join("pidserver.py").display().to_string();
    let command = [python().into(), script.into()];
    let spawn = f.spawn("pid", &spawn_args(&["--sockets", "2"], &command, &[]))?;
    let server = server_of(spawn)?;
    // The kernel's hash alone, served by the process spawn started.
    f.wait_answers(1)?;
    assert_eq!(f.load_ok(20), BTreeMap::from([(server, 20)]));

    f.start_daemon(&[])?;
    f.wait_workers(2)?;
    assert_eq!(f.load_ok(20), BTreeMap::from([(server, 20)]));
    let selected: u64 = f.status()?.workers.iter().map(|w| w.selected).sum();
    assert_eq!(selected, 20, "the daemon's program steered them");

    f.stop_daemon(libc::SIGTERM)?;
    f.start_daemon(&[])?;
    f.wait_workers(2)?;
    assert_eq!(f.load_ok(20), BTreeMap::from([(server, 20)]));
    Ok(())
}

#[test]
fn status_shows_the_server_spawn_started_not_spawn() -> Result<()> {
    let mut f = Fixture::new("spawn-pid")?;
    let command = ["sleep".into(), "30".into()];
    let spawn = f.spawn("sleep", &spawn_args(&[], &command, &[]))?;
    let server = server_of(spawn)?;
    let status = f.wait_workers(1)?;
    assert_eq!(status.workers[0].pid, server, "spawn is {spawn}");
    Ok(())
}

#[test]
fn a_server_that_never_accepts_from_its_socket_is_named_in_one_warning() -> Result<()> {
    let mut f = without_daemon("spawn-ignored")?;
    let command = ["sleep".into(), "30".into()];
    f.spawn("sleeper", &spawn_args(&[], &command, &[]))?;
    // Handshakes complete in the kernel: the connections wait in the queue of a listener
    // that nobody accepts from.
    let mut clients = Vec::new();
    wait::until(START_LIMIT, "connected", || {
        TcpStream::connect(f.addr).is_ok_and(|c| {
            clients.push(c);
            true
        })
    })?;
    for _ in 0..2 {
        clients.push(TcpStream::connect(f.addr)?);
    }
    let log = f.dir.join("sleeper.log");
    let warnings = || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("has accepted nothing from descriptor 3")
            .count()
    };
    wait::until(Duration::from_secs(6), "the warning", || warnings() > 0)?;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(warnings(), 1, "{}", f.logs());
    Ok(())
}

#[test]
fn a_refused_registration_stops_before_the_server_runs() -> Result<()> {
    let f = Fixture::new("spawn-refused")?;
    let mark = f.dir.join("ran");
    let spawn = |args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new(binary::locate()?)
            .arg("spawn")
            .arg("--control")
            .arg(&f.control)
            .args(args)
            .output()?)
    };
    // The daemon serves 127.0.0.1:8080 only.
    let touch = format!("touch {}", mark.display());
    let out = spawn(&["--listen", "127.0.0.1:9090", "--", "sh", "-c", &touch])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Refused by the daemon: exit code 4 (README, "Exit codes").
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("no group listens on 127.0.0.1:9090"),
        "{stderr}"
    );
    assert!(!mark.exists(), "the command ran");

    let out = spawn(&["--", "/nonexistent/server"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/server"), "{stderr}");
    Ok(())
}

#[test]
fn without_listen_spawn_joins_the_daemons_only_group() -> Result<()> {
    let f = Fixture::new("spawn-default-group")?;
    let mut spawn = std::process::Command::new(binary::locate()?)
        .args(["spawn", "--name", "dflt", "--control"])
        .arg(&f.control)
        .args(["--", "sleep", "30"])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let joined = f.wait_worker(START_LIMIT, "the spawned worker", |w| w.name == "dflt");
    let _ = spawn.kill();
    let _ = spawn.wait();
    joined?;
    Ok(())
}
