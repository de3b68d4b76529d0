//! Defects found by attacking the daemon as a hostile local user would: each test reproduces one
//! and fails on the code before its fix.

use std::{
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use reuseport_testing::{binary, daemon::Fixture, fresh_netns, wait, TestResult as Result};
use reuseport_worker::{fdpass, ControlClient, Request};

/// Sends one line with `fds` attached and returns the reply line as JSON.
fn send_line_with_fds(control: &Path, line: &[u8], fds: &[i32]) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(control)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let sent = fdpass::send_with_fds(&stream, line, fds)?;
    // The daemon may close as soon as it sees the descriptors; the rest is best effort.
    let _ = (&stream).write_all(&line[sent..]);
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    Ok(serde_json::from_str(&reply)?)
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Issue: a register line with more descriptors than the receive buffer held leaked the ones
/// that fit, 4 per message, until the daemon hit its open-file limit and refused everyone.
#[test]
fn descriptors_sent_with_a_refused_line_are_all_closed() -> Result {
    let mut f = Fixture::new("fd-flood")?;
    f.echo("w0")?;
    f.wait_workers(1)?;
    let daemon = f.daemon_pid().ok_or("no daemon")?;
    let before = open_fds(daemon)?;
    let listener = reuseport_worker::bind_listener(f.addr, 16)?;
    let fd = listener.as_raw_fd();
    for count in [5, 16, 253] {
        for _ in 0..50 {
            let reply =
                send_line_with_fds(&f.control, b"{\"op\":\"register\"}\n", &vec![fd; count])?;
            assert_eq!(reply["code"], "too_many_fds", "{reply}");
        }
    }
    // Descriptors sent with a line that is not a registration.
    for _ in 0..50 {
        let reply = send_line_with_fds(&f.control, b"{\"op\":\"status\"}\n", &[fd, fd])?;
        assert_eq!(reply["ok"], false, "{reply}");
    }
    let mut now = 0;
    let settled = wait::until(
        Duration::from_secs(5),
        "the flood's descriptors closed",
        || {
            now = open_fds(daemon).unwrap_or(usize::MAX);
            now <= before + 2
        },
    );
    assert!(
        settled.is_ok(),
        "the daemon holds {now} descriptors after the flood, {before} before"
    );
    // The copies are gone from the kernel group too, and a good registration still works.
    let mut client = ControlClient::connect(&f.control)?;
    let reply = client.request_with_fd(
        &Request::Register {
            name: Some("after".into()),
            weight: None,
            pid: None,
        },
        std::os::fd::AsFd::as_fd(&listener),
    )?;
    assert!(reply.slot.is_some());
    f.wait_workers(2)?;
    Ok(())
}

/// Issue: `reuseport run --control FILE` deleted a regular file (connect() said ECONNREFUSED,
/// which was taken for a stale socket).
#[test]
fn the_daemon_refuses_to_replace_a_file_that_is_not_a_socket() -> Result {
    fresh_netns()?;
    let dir = std::env::temp_dir().join(format!("reuseport-notsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("precious.txt");
    std::fs::write(&file, "keep me")?;
    let out = Command::new(binary::locate()?)
        .args(["run", "--listen", "127.0.0.1:8080", "--no-pin", "--control"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the daemon started: {stderr}");
    assert!(
        stderr.contains("is not a socket") && stderr.contains("--control"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file)?, "keep me");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Issue: the Python worker sent its `load` reports with a blocking `sendall`, so a daemon slow
/// to read stalled the worker's own requests for up to 2 s at a time. Here a stand-in daemon
/// accepts the registration and then never reads again: the worker must keep serving promptly.
#[test]
fn a_python_worker_never_waits_for_a_slow_daemon() -> Result {
    fresh_netns()?;
    let dir = std::env::temp_dir().join(format!("reuseport-slowd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let control = dir.join("control.sock");
    let daemon = std::os::unix::net::UnixListener::bind(&control)?;
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/worker.py");
    let worker = Command::new("python3")
        .arg(&script)
        .args(["--listen", &addr.to_string(), "--name", "py", "--control"])
        .arg(&control)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Killed on every way out, a failed assertion included.
    let _worker = KillOnDrop(worker);
    let outcome = (|| -> Result {
        let (conn, _) = daemon.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        let mut reader = BufReader::new(&conn);
        reader.read_line(&mut line)?;
        assert!(line.contains("\"register\""), "{line}");
        (&conn).write_all(b"{\"ok\":true,\"slot\":0,\"group\":\"127.0.0.1:8080\"}\n")?;
        // From here on nobody reads: the worker's reports fill the socket buffer.
        for i in 0..1500 {
            let start = std::time::Instant::now();
            reuseport_testing::loadgen::request(addr, "/", Duration::from_secs(2))?;
            let took = start.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "request {i} waited {took:?} for the worker's reports to the daemon"
            );
        }
        drop(conn);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue: with `--listen [::]:8090`, a v6-only worker and a dual-stack worker both registered,
/// though the kernel keeps them in different reuseport groups: every selection of the other
/// kind failed with EBADFD and round-robin over three workers became 200/100/0.
#[test]
fn a_socket_of_the_other_ipv6_kind_is_refused_naming_the_flag() -> Result {
    let f = Fixture::new_on("v6only", "[::]:8090".parse()?)?;
    let first = reuseport_testing::listeners::v6(f.addr, false)?;
    let mut client = ControlClient::connect(&f.control)?;
    let register = Request::Register {
        name: Some("dual".into()),
        weight: None,
        pid: None,
    };
    client.request_with_fd(&register, std::os::fd::AsFd::as_fd(&first))?;
    let v6only = reuseport_testing::listeners::v6(f.addr, true)?;
    let refused = ControlClient::connect(&f.control)?
        .request_with_fd(&register, std::os::fd::AsFd::as_fd(&v6only))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.contains("IPV6_V6ONLY to 0") && refused.contains("separate reuseport groups"),
        "{refused}"
    );
    f.wait_workers(1)?;
    // Only the dual-stack socket is in the group: every connection selects it, none errs.
    for _ in 0..10 {
        std::net::TcpStream::connect("[::1]:8090")?;
        std::net::TcpStream::connect("127.0.0.1:8090")?;
    }
    let status = f.status()?;
    assert_eq!(status.select_errors.values().sum::<u64>(), 0, "{status:?}");
    assert_eq!(status.workers[0].selected, 20, "{status:?}");
    drop(client);
    Ok(())
}

/// Issue: a user in another network namespace (`unshare -Urn`) registered listeners bound to
/// the group's address of its own namespace; they caused EBADFD selection errors and fallbacks.
#[test]
fn a_socket_of_another_network_namespace_is_refused() -> Result {
    let mut f = Fixture::new("other-netns")?;
    f.echo("w0")?;
    f.wait_workers(1)?;
    let addr = f.addr;
    // A listener on the same address, made in a namespace of its own.
    let foreign = std::thread::spawn(move || -> std::result::Result<socket2::Socket, String> {
        fresh_netns().map_err(|e| e.to_string())?;
        let sock = reuseport_testing::listeners::listener(addr, true).map_err(|e| e.to_string())?;
        Ok(sock)
    })
    .join()
    .map_err(|_| "thread panicked")??;
    let refused = ControlClient::connect(&f.control)?
        .request_with_fd(
            &Request::Register {
                name: Some("intruder".into()),
                weight: None,
                pid: None,
            },
            std::os::fd::AsFd::as_fd(&foreign),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(refused.contains("another network namespace"), "{refused}");
    let counts = f.load_ok(40);
    assert_eq!(counts.values().sum::<u64>(), 40);
    let status = f.wait_workers(1)?;
    assert_eq!(status.select_errors.values().sum::<u64>(), 0, "{status:?}");
    assert_eq!(status.fallbacks, 0, "{status:?}");
    Ok(())
}

/// Issue: under `ip netns exec` the daemon mounted a bpffs on the private /sys that command
/// gives it, so the pins died with the daemon: policy, weights and drains reset on a restart.
#[test]
fn pinned_state_survives_a_restart_under_ip_netns_exec() -> Result {
    let name = format!("reuseport-pins-{}", std::process::id());
    let netns = NamedNetns::add(&name)?;
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir)?;
    let control = dir.join("control.sock");
    let bin = binary::locate()?;
    let run = |extra: &[&str]| -> Result<KillOnDrop> {
        let child = Command::new("ip")
            .args(["netns", "exec", &name])
            .arg(&bin)
            .args(["run", "--listen", "127.0.0.1:8080", "--control"])
            .arg(&control)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log"))?)
            .spawn()?;
        let daemon = KillOnDrop(child);
        wait::until(Duration::from_secs(10), "the daemon answers", || {
            ControlClient::connect(&control).is_ok()
        })?;
        Ok(daemon)
    };
    let policy = || -> Result<String> {
        let out = Command::new(&bin)
            .args(["policy", "get", "--control"])
            .arg(&control)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let outcome = (|| -> Result {
        let first = run(&["--policy", "weighted"])?;
        assert_eq!(policy()?, "127.0.0.1:8080 weighted");
        stop(first)?;
        // No --policy: a daemon that found nothing would start with round-robin.
        let second = run(&[])?;
        let log = std::fs::read_to_string(dir.join("daemon.log"))?;
        assert_eq!(policy()?, "127.0.0.1:8080 weighted", "{log}");
        assert!(log.contains("took over the pinned state"), "{log}");
        stop(second)?;
        Ok(())
    })();
    // The pins went to the default directory of that namespace, on the host's bpffs.
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/reuseport/netns-{}", netns.inode()?));
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// Stops a daemon with SIGTERM and waits for it.
fn stop(mut daemon: KillOnDrop) -> Result {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    daemon.0.wait()?;
    Ok(())
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn add(name: &str) -> Result<Self> {
        let status = Command::new("ip").args(["netns", "add", name]).status()?;
        if !status.success() {
            return Err(format!("ip netns add {name}: {status}").into());
        }
        Ok(Self(name.to_owned()))
    }

    fn inode(&self) -> Result<u64> {
        Ok(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(
            format!("/run/netns/{}", self.0),
        )?))
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Issue: a worker name with escape sequences and a newline rewrote the operator's terminal and
/// forged a table line in `status`; a 65,000-character name broke every `status` reply.
#[test]
fn names_that_could_forge_output_are_refused() -> Result {
    let f = Fixture::new("names")?;
    let listener = reuseport_worker::bind_listener(f.addr, 16)?;
    let register = |name: String| {
        ControlClient::connect(&f.control).and_then(|mut c| {
            c.request_with_fd(
                &Request::Register {
                    name: Some(name),
                    weight: None,
                    pid: None,
                },
                std::os::fd::AsFd::as_fd(&listener),
            )
        })
    };
    for bad in [
        "w1\x1b[2J\x1b[H".to_owned(),
        "w1\n     0        1  root-worker  active".to_owned(),
        "x".repeat(65_000),
    ] {
        match register(bad) {
            Err(reuseport_worker::ClientError::Rejected { code, message }) => {
                assert_eq!(code.to_string(), "bad_name", "{message}");
            }
            other => panic!("a bad name was not refused: {other:?}"),
        }
    }
    let mut good = ControlClient::connect(&f.control)?;
    good.request_with_fd(
        &Request::Register {
            name: Some("plain-name".into()),
            weight: None,
            pid: None,
        },
        std::os::fd::AsFd::as_fd(&listener),
    )?;
    let status = f.wait_workers(1)?;
    assert_eq!(status.workers[0].name, "plain-name");
    Ok(())
}

/// Issue: SIGHUP, the conventional reload signal, killed the daemon silently and left its
/// socket file behind.
#[test]
fn sighup_neither_stops_the_daemon_nor_loses_its_socket() -> Result {
    let mut f = Fixture::new("sighup")?;
    f.echo("w0")?;
    f.wait_workers(1)?;
    let daemon = f.daemon_pid().ok_or("no daemon")?;
    for _ in 0..3 {
        reuseport_testing::daemon::signal(daemon, libc::SIGHUP)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(f.control.exists(), "the control socket is gone");
    let status = f.wait_workers(1)?;
    assert_eq!(status.workers.len(), 1);
    assert_eq!(f.load_ok(12).values().sum::<u64>(), 12);
    assert!(f.logs().contains("SIGHUP"), "{}", f.logs());
    Ok(())
}

/// A registration may name another process as the worker's only when it is the registrant's
/// descendant with the same uid (`reuseport spawn`); otherwise a worker could pass for any
/// process, and the daemon would watch the wrong one.
#[test]
fn a_registration_naming_an_unrelated_pid_is_refused() -> Result {
    let f = Fixture::new("foreign-pid")?;
    let listener = reuseport_worker::bind_listener(f.addr, 16)?;
    let refused = ControlClient::connect(&f.control)?
        .request_with_fd(
            &Request::Register {
                name: Some("liar".into()),
                weight: None,
                pid: Some(1),
            },
            std::os::fd::AsFd::as_fd(&listener),
        )
        .err();
    match refused {
        Some(reuseport_worker::ClientError::Rejected { code, message }) => {
            assert_eq!(code.to_string(), "foreign_pid", "{message}");
        }
        other => panic!("pid 1 was accepted: {other:?}"),
    }
    // Naming itself is fine, and shown.
    let mut own = ControlClient::connect(&f.control)?;
    own.request_with_fd(
        &Request::Register {
            name: Some("honest".into()),
            weight: None,
            pid: Some(std::process::id()),
        },
        std::os::fd::AsFd::as_fd(&listener),
    )?;
    let status = f.wait_workers(1)?;
    assert_eq!(status.workers[0].pid, std::process::id());
    Ok(())
}

/// Pins left by a version with another map layout stop a daemon that would take them over
/// (with the directory named and `--fresh` as the fix); `--fresh` discards them before loading.
#[test]
fn fresh_discards_pins_of_another_layout() -> Result {
    let mut f = Fixture::new("fresh")?;
    f.stop_daemon(libc::SIGTERM)?;
    // What an older version left: its CONFIG map (a directory stands in for the pin).
    let dir = reuseport_steer::pin::group_dir(&f.pins, f.addr);
    std::fs::create_dir_all(dir.join("CONFIG"))?;
    let refused = f.start_daemon(&[]);
    assert!(
        refused.is_err(),
        "the daemon took over pins of another layout"
    );
    assert!(
        f.logs().contains("--fresh") || f.logs().contains("rm -r"),
        "{}",
        f.logs()
    );
    f.stop_daemon(libc::SIGKILL)?;
    f.start_daemon(&["--fresh"])?;
    f.echo("w0")?;
    f.wait_workers(1)?;
    assert_eq!(f.load_ok(12).values().sum::<u64>(), 12);
    assert!(!dir.join("CONFIG").exists());
    Ok(())
}

/// Every event `status` lists is also one log line with the same fields: here a worker
/// stopped with connections queued is found stuck, and the JSON log has a `reuseport::event`
/// line with its slot, pid and name.
#[test]
fn status_events_are_json_log_lines_with_the_same_fields() -> Result {
    let mut f = Fixture::new("event-log")?;
    f.stop_daemon(libc::SIGTERM)?;
    f.start_daemon(&["--log-format", "json", "--on-stuck", "skip"])?;
    let pids = f.echo_workers(2)?;
    f.wait_workers(2)?;
    reuseport_testing::daemon::signal(pids[0], libc::SIGSTOP)?;
    let addr = f.addr;
    let clients =
        std::thread::spawn(move || reuseport_testing::loadgen::Load::new(addr, 8, 8).run());
    let stuck = f.wait_worker(Duration::from_secs(5), "worker 0 stuck", |w| {
        w.pid == pids[0] && w.state == reuseport_worker::protocol::WorkerState::Stuck
    })?;
    reuseport_testing::daemon::signal(pids[0], libc::SIGCONT)?;
    let _ = clients.join();
    let logs = f.logs();
    let event = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "reuseport::event" && v["fields"]["event"] == "stuck")
        .ok_or_else(|| format!("no stuck event line in the log:\n{logs}"))?;
    let fields = &event["fields"];
    assert_eq!(fields["slot"], stuck.slot, "{event}");
    assert_eq!(fields["pid"], stuck.pid, "{event}");
    assert_eq!(fields["name"], stuck.name.as_str(), "{event}");
    assert_eq!(fields["group"], "127.0.0.1:8080", "{event}");
    assert_eq!(event["level"], "WARN", "{event}");
    Ok(())
}
