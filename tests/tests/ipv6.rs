//! IPv6 groups against the real kernel: `--listen [::]:PORT` is one dual-stack group that
//! steers IPv4 and IPv6 clients by one round-robin; `--v6only` makes it IPv6-only; a socket of
//! the other kind is refused by the daemon's configuration, whichever registers first; the
//! echo worker, `spawn` and the Python example make the socket the group needs.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    os::fd::AsFd,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use reuseport_testing::{
    binary, daemon::Fixture, fresh_netns, loadgen::request, servers, TestResult as Result,
};
use reuseport_worker::{ClientError, ControlClient, Request};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The same port on IPv4 and IPv6 loopback.
fn loopbacks(port: u16) -> Result<(SocketAddr, SocketAddr)> {
    Ok((
        format!("127.0.0.1:{port}").parse()?,
        format!("[::1]:{port}").parse()?,
    ))
}

/// `n` requests, one connection each, alternating IPv4 and IPv6 clients; answers per pid.
fn interleaved(port: u16, n: usize) -> Result<BTreeMap<u32, u64>> {
    let (v4, v6) = loopbacks(port)?;
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let addr = if i % 2 == 0 { v4 } else { v6 };
        let pid = request(addr, "/", TIMEOUT).map_err(|e| format!("request {i} to {addr}: {e}"))?;
        *counts.entry(pid).or_insert(0) += 1;
    }
    Ok(counts)
}

/// A fixture whose daemon serves `addr` with `extra` flags, in a fresh namespace.
fn daemon_on(name: &str, addr: SocketAddr, extra: &[&str]) -> Result<Fixture> {
    fresh_netns()?;
    let mut f = Fixture::on(addr, &format!("test-{name}"), binary::locate()?)?;
    f.start_daemon(extra)?;
    Ok(f)
}

/// Registers `sock` on a connection of its own; the connection (kept open while registered)
/// or the refusal.
fn register(
    f: &Fixture,
    name: &str,
    sock: &socket2::Socket,
) -> std::result::Result<ControlClient, ClientError> {
    let mut client = ControlClient::connect(&f.control)?;
    client.request_with_fd(
        &Request::Register {
            name: Some(name.into()),
            weight: None,
            pid: None,
        },
        sock.as_fd(),
    )?;
    Ok(client)
}

#[test]
fn a_dual_stack_group_round_robins_ipv4_and_ipv6_clients_together() -> Result {
    let mut f = Fixture::new_on("ipv6-dual", "[::]:8091".parse()?)?;
    let pids = f.echo_workers(4)?;
    let status = f.wait_workers(4)?;
    assert!(!status.v6only, "a [::] group is dual-stack by default");
    let counts = interleaved(8091, 400)?;
    let expected: BTreeMap<u32, u64> = pids.iter().map(|&p| (p, 100)).collect();
    assert_eq!(
        counts, expected,
        "one round-robin over IPv4 and IPv6 clients"
    );
    Ok(())
}

#[test]
fn an_ipv6_only_group_serves_ipv6_clients_and_no_ipv4_ones() -> Result {
    let mut f = daemon_on("ipv6-only", "[::]:8092".parse()?, &["--v6only"])?;
    // The echo workers ask the daemon which kind of socket the group needs.
    let pids = f.echo_workers(2)?;
    let status = f.wait_workers(2)?;
    assert!(status.v6only, "--v6only: {status:?}");
    let (v4, v6) = loopbacks(8092)?;
    let mut counts = BTreeMap::new();
    for _ in 0..100 {
        *counts.entry(request(v6, "/", TIMEOUT)?).or_insert(0u64) += 1;
    }
    let expected: BTreeMap<u32, u64> = pids.iter().map(|&p| (p, 50)).collect();
    assert_eq!(counts, expected);
    // Nothing listens for IPv4 clients on that port.
    for _ in 0..5 {
        match TcpStream::connect_timeout(&v4, TIMEOUT) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
            Ok(_) => return Err("an IPv4 client reached an IPv6-only group".into()),
        }
    }
    Ok(())
}

/// The refusal's code and message, or what happened instead.
fn refusal(result: std::result::Result<ControlClient, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Rejected { code, message }) => (code.to_string(), message),
        Err(other) => ("not a refusal".into(), other.to_string()),
        Ok(_) => ("accepted".into(), String::new()),
    }
}

#[test]
fn an_ipv6_only_socket_is_refused_by_a_dual_stack_group_even_first() -> Result {
    let f = Fixture::new_on("ipv6-mismatch-dual", "[::]:8093".parse()?)?;
    // The mismatching kind registers first: the daemon's configuration decides, not it.
    let v6only = reuseport_testing::listeners::v6(f.addr, true)?;
    let (code, message) = refusal(register(&f, "v6only", &v6only));
    assert_eq!(code, "wrong_v6only", "{message}");
    assert!(
        message.contains("IPV6_V6ONLY to 0") && message.contains("--v6only"),
        "the fix is named: {message}"
    );
    // Closed: left listening, it would be a kernel group of its own next to the daemon's.
    drop(v6only);
    let dual = reuseport_testing::listeners::v6(f.addr, false)?;
    let _kept = register(&f, "dual", &dual)?;
    let status = f.wait_workers(1)?;
    assert_eq!(status.workers[0].name, "dual");
    // Both families reach the one dual-stack socket.
    let (v4, v6) = loopbacks(8093)?;
    for addr in [v4, v6] {
        let client = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        dual.set_read_timeout(Some(TIMEOUT))?;
        let (accepted, _) = dual.accept()?;
        assert_eq!(
            accepted.local_addr()?.as_socket().map(|a| a.port()),
            Some(8093)
        );
        drop(client);
    }
    Ok(())
}

#[test]
fn a_dual_stack_socket_is_refused_by_an_ipv6_only_group_even_first() -> Result {
    let f = daemon_on("ipv6-mismatch-only", "[::]:8094".parse()?, &["--v6only"])?;
    let dual = reuseport_testing::listeners::v6(f.addr, false)?;
    let (code, message) = refusal(register(&f, "dual", &dual));
    assert_eq!(code, "wrong_v6only", "{message}");
    assert!(
        message.contains("IPV6_V6ONLY to 1") && message.contains("--v6only"),
        "the fix is named: {message}"
    );
    let v6only = reuseport_testing::listeners::v6(f.addr, true)?;
    let _kept = register(&f, "v6only", &v6only)?;
    let status = f.wait_workers(1)?;
    assert_eq!(status.workers[0].name, "v6only");
    // A second dual-stack one is refused too, with an IPv6-only socket in the group.
    let again = reuseport_testing::listeners::v6(f.addr, false)?;
    assert_eq!(refusal(register(&f, "dual2", &again)).0, "wrong_v6only");
    Ok(())
}

#[test]
fn a_specific_ipv6_address_is_one_ipv6_only_group() -> Result {
    let mut f = Fixture::new_on("ipv6-loopback", "[::1]:8095".parse()?)?;
    let pids = f.echo_workers(2)?;
    let status = f.wait_workers(2)?;
    // The kernel makes every socket bound to [::1] IPv6-only at bind(), whatever it set.
    assert!(status.v6only);
    let mut counts = BTreeMap::new();
    for _ in 0..40 {
        *counts.entry(request(f.addr, "/", TIMEOUT)?).or_insert(0u64) += 1;
    }
    let expected: BTreeMap<u32, u64> = pids.iter().map(|&p| (p, 20)).collect();
    assert_eq!(counts, expected);
    // So a socket that asked for dual-stack joins too: it is in the same kernel group.
    let dual = reuseport_testing::listeners::v6(f.addr, false)?;
    let _kept = register(&f, "asked-dual", &dual)?;
    f.wait_workers(3)?;
    Ok(())
}

#[test]
fn the_python_example_and_spawn_join_a_dual_stack_group() -> Result {
    let mut f = Fixture::new_on("ipv6-python-spawn", "[::]:8096".parse()?)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/worker.py");
    let child = Command::new("python3")
        .arg(&script)
        .args(["--listen", &f.addr.to_string(), "--name", "py", "--control"])
        .arg(&f.control)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let python = child.id();
    f.workers.push(child);
    let dir = f.dir.join("apps");
    std::fs::create_dir_all(&dir)?;
    servers::write_apps(&dir)?;
    let server = dir.join("pidserver.py").display().to_string();
    f.spawn("pid", &["--name", "pid", "--", "python3", &server])?;
    f.echo("echo")?;
    let status = f.wait_workers(3)?;
    assert!(!status.v6only);
    let counts = interleaved(8096, 300)?;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&c| c == 100),
        "round-robin: {counts:?}"
    );
    assert_eq!(counts.get(&python), Some(&100));
    Ok(())
}
