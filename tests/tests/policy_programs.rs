//! Policy programs against the real kernel (docs/experiments.md): the examples built from
//! policies/template steer exactly as their code says, and a group goes from a policy program
//! back to a built-in policy with no connection lost while load flows.
//!
//! The objects come from `cargo xtask build-policy NAME` (which `cargo xtask test` runs first);
//! a test that finds one missing runs it itself.

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use reuseport_common::policy_program::{mix, spread};
use reuseport_steer::{AttachMode, Family, GroupOptions, Policy};
use reuseport_testing::{
    daemon::Fixture,
    fresh_netns,
    loadgen::{tally, Load},
    steer,
};
use reuseport_worker::{ControlClient, Request};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The object of the example policy `name`, built through `cargo xtask build-policy` if missing.
fn policy_object(name: &str) -> Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?
        .to_path_buf();
    let object = root.join("target/policies").join(format!("{name}.o"));
    if !object.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["xtask", "build-policy", name])
            .current_dir(&root)
            .status()?;
        ensure!(
            status.success(),
            "cargo xtask build-policy {name}: {status}"
        );
    }
    Ok(object)
}

fn options(mode: AttachMode) -> GroupOptions {
    GroupOptions {
        mode,
        policy: Policy::RoundRobin,
        ..GroupOptions::default()
    }
}

/// One connection from `source` (any port) to `addr`; the index the listener answered.
fn connect_from(source: IpAddr, addr: SocketAddr) -> Result<usize> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.set_write_timeout(Some(Duration::from_secs(10)))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.connect(&SockAddr::from(addr))?;
    let mut byte = [0u8; 1];
    (&socket).read_exact(&mut byte)?;
    Ok(usize::from(byte[0]))
}

#[test]
fn sticky_source_sends_each_client_address_where_its_code_says() -> Result<()> {
    fresh_netns()?;
    let object = policy_object("sticky_source")?;
    for mode in [AttachMode::SelectOrMigrate, AttachMode::Select] {
        let n = 4;
        let (pool, mut group) = steer::pool(Family::Ipv4, n, options(mode))?;
        let name = group.load_policy_program(&object)?;
        assert_eq!(name, "sticky_source");
        assert_eq!(group.policy_program(), Some("sticky_source"));
        let mut used = std::collections::BTreeSet::new();
        for host in 1..=24u8 {
            let source = Ipv4Addr::new(127, 0, 0, host);
            // The active list is slots 0..n, listener i in slot i.
            let expected = spread(mix(u32::from(source)), n as u32) as usize;
            for _ in 0..4 {
                let got = connect_from(IpAddr::V4(source), pool.addr())?;
                ensure!(
                    got == expected,
                    "{mode}: {source} went to {got}, its code says {expected}"
                );
            }
            used.insert(expected);
        }
        // 24 addresses cover the 4 slots (checked by the same formula above).
        assert_eq!(used.len(), n, "{used:?}");
        let stats = group.stats()?;
        assert_eq!(stats.global.fallbacks, 0, "{stats:?}");
        assert_eq!(steer::selected(&stats, n).iter().sum::<u64>(), 24 * 4);
    }
    Ok(())
}

#[test]
fn least_recent_takes_the_slots_in_turn_and_skips_a_drained_one() -> Result<()> {
    fresh_netns()?;
    let object = policy_object("least_recent")?;
    let n = 4;
    let (pool, mut group) = steer::pool(Family::Ipv4, n, options(AttachMode::SelectOrMigrate))?;
    group.load_policy_program(&object)?;
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let got: Vec<usize> = (0..12)
        .map(|_| connect_from(local, pool.addr()))
        .collect::<Result<_>>()?;
    assert_eq!(got, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]);

    // Slot 1 drained: out of the active list, so the policy never names it.
    group.set_state(1, reuseport_steer::SlotState::Draining)?;
    let got: Vec<usize> = (0..6)
        .map(|_| connect_from(local, pool.addr()))
        .collect::<Result<_>>()?;
    assert_eq!(got, [0, 2, 3, 0, 2, 3]);

    // Removed: the built-in round-robin decides again.
    group.remove_policy_program()?;
    assert_eq!(group.policy_program(), None);
    let got: Vec<usize> = (0..6)
        .map(|_| connect_from(local, pool.addr()))
        .collect::<Result<_>>()?;
    let mut counts = [0; 4];
    for i in got {
        counts[i] += 1;
    }
    assert_eq!(
        counts,
        [2, 0, 2, 2],
        "round-robin over the three active slots"
    );
    Ok(())
}

/// The policy of the next decision, as `trace` shows it.
fn traced_policy(fixture: &Fixture) -> Result<String> {
    let mut client = ControlClient::connect(&fixture.control)?;
    client.request(&Request::Trace {
        group: None,
        count: Some(1),
    })?;
    drop(std::net::TcpStream::connect(fixture.addr)?);
    Ok(client.next_reply()?.trace.context("no trace line")?.policy)
}

#[test]
fn a_policy_program_goes_in_and_out_live_with_no_connection_lost() -> Result<()> {
    let object = policy_object("template")?;
    let mut fixture = Fixture::new("policy-live")?;
    fixture.echo_workers(3)?;
    fixture.wait_active(3)?;
    fixture.wait_answers(1)?;

    let addr = fixture.addr;
    let load = std::thread::spawn(move || Load::new(addr, 1500, 4).run());
    let path = object.to_str().context("non-UTF-8 path")?;
    for _ in 0..3 {
        let out = fixture.cli(&["policy", "load", path])?;
        ensure!(out.status.success(), "policy load: {out:?}");
        assert_eq!(traced_policy(&fixture)?, "program");
        let shown = fixture.cli(&["policy", "get"])?;
        assert_eq!(
            String::from_utf8_lossy(&shown.stdout),
            format!("{addr} round-robin program template\n")
        );
        let out = fixture.cli(&["policy", "set", "round-robin"])?;
        ensure!(out.status.success(), "policy set: {out:?}");
        assert_eq!(traced_policy(&fixture)?, "round-robin");
        let shown = fixture.cli(&["policy", "get"])?;
        assert_eq!(
            String::from_utf8_lossy(&shown.stdout),
            format!("{addr} round-robin\n")
        );
    }
    let outcomes = match load.join() {
        Ok(outcomes) => outcomes,
        Err(_) => bail!("the load thread panicked"),
    };
    let (counts, errors) = tally(&outcomes);
    assert!(
        errors.is_empty(),
        "{} lost: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(counts.values().sum::<u64>(), 1500);

    // A relative path or a missing file is refused with a reason, and the daemon carries on.
    let out = fixture.cli(&["policy", "load", "/nonexistent/policy.o"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("build-policy"),
        "{out:?}"
    );
    let refused = ControlClient::connect(&fixture.control)?.request(&Request::PolicyLoad {
        path: "relative.o".into(),
        group: None,
    });
    assert!(
        matches!(&refused, Err(reuseport_worker::ClientError::Rejected { code, .. })
            if *code == reuseport_worker::ErrorCode::BadPolicyProgram),
        "{refused:?}"
    );
    fixture.load_ok(30);
    Ok(())
}
