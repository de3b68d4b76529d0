//! What a control connection may cost the daemon: a cap on connections (`--max-connections`),
//! a deadline for the rest of a line (`--control-line-ms`) and for the next request of a
//! connection that holds no worker (`--control-idle-ms`). Registered workers are never cut.

use std::{
    io::{BufRead, BufReader, Write},
    os::{fd::AsFd, unix::net::UnixStream},
    path::Path,
    time::{Duration, Instant},
};

use reuseport_testing::{daemon::Fixture, limits, wait, TestResult as Result};
use reuseport_worker::{ControlClient, Reply, Request};

/// A raw connection with a read timeout.
fn connect(control: &Path) -> Result<UnixStream> {
    let stream = UnixStream::connect(control)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// Reads one reply line; `None` at end of stream.
fn read_reply(reader: &mut BufReader<&UnixStream>) -> Result<Option<Reply>> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(serde_json::from_str(&line)?)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sends `status` on `stream` and returns the reply.
fn status_on(stream: &UnixStream) -> Result<Reply> {
    (&*stream).write_all(b"{\"op\":\"status\"}\n")?;
    read_reply(&mut BufReader::new(stream))?.ok_or_else(|| "closed without a reply".into())
}

#[test]
fn connections_beyond_the_cap_get_a_clear_error_and_the_rest_are_served() -> Result {
    let mut f = Fixture::with_daemon_args("cap", &["--max-connections", "8"])?;
    // A registered worker holds a connection of its own.
    f.echo("w0")?;
    f.wait_workers(1)?;
    // Seven more, each answered (the fixture's probes may take a moment to be let go).
    let mut held = Vec::new();
    wait::until(Duration::from_secs(10), "7 connections served", || {
        let served = connect(&f.control)
            .ok()
            .filter(|s| status_on(s).is_ok_and(|r| r.ok));
        match served {
            Some(s) => held.push(s),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
        held.len() == 7
    })?;
    for _ in 0..3 {
        let beyond = connect(&f.control)?;
        let reply = read_reply(&mut BufReader::new(&beyond))?.ok_or("no reply")?;
        assert_eq!(
            reply.code.map(|c| c.to_string()).as_deref(),
            Some("too_many_connections")
        );
        let message = reply.error.unwrap_or_default();
        assert!(
            message.contains("8 control connections") && message.contains("--max-connections"),
            "{message}"
        );
    }
    // One closes: a new one is served again, and the worker kept its place throughout.
    held.pop();
    wait::until(Duration::from_secs(5), "a connection served again", || {
        connect(&f.control).is_ok_and(|s| status_on(&s).is_ok_and(|r| r.ok))
    })?;
    drop(held);
    assert_eq!(f.wait_workers(1)?.workers[0].name, "w0");
    f.load_ok(20);
    Ok(())
}

#[test]
fn a_half_line_is_dropped_after_its_deadline_with_an_error_line() -> Result {
    let f = Fixture::with_daemon_args("line-deadline", &["--control-line-ms", "300"])?;
    // Halves 100 ms apart are within the deadline.
    let slow = connect(&f.control)?;
    (&slow).write_all(b"{\"op\":")?;
    std::thread::sleep(Duration::from_millis(100));
    (&slow).write_all(b"\"status\"}\n")?;
    assert!(read_reply(&mut BufReader::new(&slow))?.is_some_and(|r| r.ok));

    let stalled = connect(&f.control)?;
    let start = Instant::now();
    (&stalled).write_all(b"{\"op\":\"sta")?;
    cut_after_deadline(&stalled, start, "line_timeout", "--control-line-ms 300")
}

/// `conn` gets one error line with `code`, naming `flag`, about 300 ms after `start`, and is
/// closed.
fn cut_after_deadline(conn: &UnixStream, start: Instant, code: &str, flag: &str) -> Result {
    let mut reader = BufReader::new(conn);
    let reply = read_reply(&mut reader)?.ok_or("closed without an error line")?;
    let took = start.elapsed();
    assert_eq!(reply.code.map(|c| c.to_string()).as_deref(), Some(code));
    let message = reply.error.unwrap_or_default();
    assert!(message.contains(flag), "{message}");
    assert!(
        (Duration::from_millis(250)..Duration::from_secs(3)).contains(&took),
        "cut after {took:?}"
    );
    assert!(
        read_reply(&mut reader)?.is_none(),
        "the connection stayed open"
    );
    Ok(())
}

#[test]
fn an_idle_connection_holding_no_worker_is_closed_after_its_deadline() -> Result {
    let f = Fixture::with_daemon_args("idle-deadline", &["--control-idle-ms", "300"])?;
    // A client that keeps asking (as `top` does) is not idle.
    let busy = connect(&f.control)?;
    for _ in 0..10 {
        assert!(status_on(&busy)?.ok);
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle = connect(&f.control)?;
    cut_after_deadline(
        &idle,
        Instant::now(),
        "idle_timeout",
        "--control-idle-ms 300",
    )
}

/// A client that sends requests but never reads the replies: once the daemon's writes are
/// blocked for the idle deadline it closes the connection instead of holding the reply.
#[test]
fn a_client_that_never_reads_its_replies_is_closed() -> Result {
    let mut f = Fixture::with_daemon_args("unread", &["--control-idle-ms", "300"])?;
    f.echo_workers(2)?;
    f.wait_workers(2)?;
    let stream = connect(&f.control)?;
    stream.set_nonblocking(true)?;
    let requests = b"{\"op\":\"status\"}\n".repeat(200_000);
    let (mut offset, start) = (0, Instant::now());
    let closed = loop {
        if start.elapsed() > Duration::from_secs(10) || offset == requests.len() {
            break None;
        }
        match (&stream).write(&requests[offset..]) {
            Ok(n) => offset += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => break Some(e),
        }
    };
    let took = start.elapsed();
    assert!(
        closed.as_ref().is_some_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )),
        "still open after {took:?} and {offset} bytes of requests: {closed:?}"
    );
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // The others are served as before.
    assert!(f.status()?.workers.len() == 2);
    f.load_ok(20);
    Ok(())
}

#[test]
fn registered_workers_are_never_cut_by_the_deadlines() -> Result {
    let mut f = Fixture::with_daemon_args(
        "never-cut",
        &["--control-idle-ms", "200", "--control-line-ms", "200"],
    )?;
    let pids = f.echo_workers(2)?;
    // A worker of its own that never sends anything after registering.
    let listener = reuseport_worker::bind_listener(f.addr, 64)?;
    let mut quiet = ControlClient::connect(&f.control)?;
    let joined = quiet.request_with_fd(
        &Request::Register {
            name: Some("quiet".into()),
            weight: None,
            pid: None,
        },
        listener.as_fd(),
    )?;
    let before = f.wait_workers(3)?;
    // Ten idle deadlines.
    std::thread::sleep(Duration::from_secs(2));
    let after = f.status()?;
    let view = |s: &reuseport_worker::GroupStatus| {
        s.workers
            .iter()
            .map(|w| (w.slot, w.pid, w.name.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(view(&after), view(&before));
    assert!(after
        .workers
        .iter()
        .any(|w| Some(w.slot) == joined.slot && w.name == "quiet"));
    assert!(pids
        .iter()
        .all(|p| after.workers.iter().any(|w| w.pid == *p)));
    // The quiet worker accepts nothing: out of rotation, the echo workers serve everything.
    f.request(&Request::Drain {
        slot: joined.slot.ok_or("no slot")?,
        group: None,
        close: None,
    })?;
    let counts = f.load_ok(40);
    assert_eq!(counts.values().sum::<u64>(), 40);
    // Its connection still answers.
    assert!(quiet.request(&Request::Status)?.ok);
    Ok(())
}

/// The idle deadline spares a connection only while it holds a worker: once its worker shut
/// its listener down (the slot is freed), the connection is idle like any other.
#[test]
fn a_connection_whose_worker_left_is_idle_again() -> Result {
    let f = Fixture::with_daemon_args("left", &["--control-idle-ms", "300"])?;
    let listener = reuseport_worker::bind_listener(f.addr, 16)?;
    let stream = connect(&f.control)?;
    let line = b"{\"op\":\"register\",\"name\":\"leaving\"}\n";
    let sent = reuseport_worker::fdpass::send_with_fds(
        &stream,
        line,
        &[std::os::fd::AsRawFd::as_raw_fd(&listener)],
    )?;
    (&stream).write_all(&line[sent..])?;
    let mut reader = BufReader::new(&stream);
    let joined = read_reply(&mut reader)?.ok_or("no reply")?;
    assert!(joined.ok, "{joined:?}");
    // Held for several idle deadlines while registered.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(f.wait_workers(1)?.workers[0].name, "leaving");
    let left = Instant::now();
    // SAFETY: shutdown(2) on a socket this test owns.
    if unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&listener), libc::SHUT_RDWR) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    f.wait_workers(0)?;
    let reply = read_reply(&mut reader)?.ok_or("closed without an error line")?;
    assert_eq!(
        reply.code.map(|c| c.to_string()).as_deref(),
        Some("idle_timeout")
    );
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "{:?}",
        left.elapsed()
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("no VmRSS value")?
        .parse()?)
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Before, each connection cost the daemon a 16 KiB read buffer of its own: 2,000 idle
/// connections took it from 14 to 46 MB. The buffer is now one per runtime thread.
#[test]
fn two_thousand_idle_connections_cost_the_daemon_little_memory() -> Result {
    const N: usize = 2000;
    limits::raise_nofile(8192, N as u64 + 256)?;
    let f = Fixture::new("idle-rss")?;
    let daemon = f.daemon_pid().ok_or("no daemon")?;
    f.status()?;
    let (fds_before, rss_before) = (open_fds(daemon)?, rss_kib(daemon)?);
    let mut held = Vec::with_capacity(N);
    for _ in 0..N {
        held.push(UnixStream::connect(&f.control)?);
    }
    // (The fixture's last probe may still be open in `fds_before`.)
    wait::until(Duration::from_secs(10), "every connection accepted", || {
        open_fds(daemon).is_ok_and(|n| n + 4 >= fds_before + N)
    })?;
    // Each session has run up to its first read.
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = rss_kib(daemon)?;
    let grew = rss_after.saturating_sub(rss_before);
    println!(
        "daemon RSS with {N} idle control connections: {rss_before} KiB -> {rss_after} KiB \
         (+{grew} KiB, {} bytes each)",
        grew * 1024 / N as u64
    );
    assert!(
        grew < 8 * 1024,
        "{N} idle connections cost the daemon {grew} KiB"
    );
    // Still answering.
    assert!(f.status().is_ok());
    drop(held);
    Ok(())
}
