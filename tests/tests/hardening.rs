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
                took < Duration::from_millis(500),
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
