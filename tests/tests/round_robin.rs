//! Exact round-robin against the real kernel: over any M connections each of N listeners gets
//! floor(M/N) or ceil(M/N), even with many clients at once, on IPv4 and IPv6, in both attach
//! modes; and the program's counters agree with what the clients saw.

use std::{net::UdpSocket, time::Duration};

use anyhow::Result;
use reuseport_steer::{AttachMode, Family, Group, GroupOptions, Policy};
use reuseport_testing::{clients, expect, fresh_netns, listeners, steer, wait};

const THREADS: usize = 8;

fn options(mode: AttachMode) -> GroupOptions {
    GroupOptions {
        mode,
        policy: Policy::RoundRobin,
        ..GroupOptions::default()
    }
}

/// Runs `THREADS` x `per_thread` connections at a round-robin group of `n` listeners and checks
/// the split is exact.
fn exact_round_robin(family: Family, mode: AttachMode, n: usize, per_thread: u64) -> Result<()> {
    let (pool, _group) = steer::pool(family, n, options(mode))?;
    let out = clients::run(pool.addr(), n, THREADS, per_thread);
    assert!(out.is_clean(), "{out}");
    assert_eq!(out.served(), THREADS as u64 * per_thread, "{out}");
    assert!(
        expect::is_exact_round_robin(&out.counts),
        "not exact: {out}"
    );
    assert_eq!(pool.accepted(), out.counts, "servers and clients disagree");
    assert!(pool.errors().is_empty(), "{:?}", pool.errors());
    Ok(())
}

#[test]
fn round_robin_is_exact_over_4_listeners() -> Result<()> {
    fresh_netns()?;
    exact_round_robin(Family::Ipv4, AttachMode::SelectOrMigrate, 4, 125)
}

#[test]
fn round_robin_is_exact_over_16_listeners() -> Result<()> {
    fresh_netns()?;
    // 1032 connections over 16 listeners: eight get 65, eight get 64.
    exact_round_robin(Family::Ipv4, AttachMode::SelectOrMigrate, 16, 129)
}

#[test]
fn round_robin_is_exact_on_ipv6_loopback() -> Result<()> {
    fresh_netns()?;
    // 600 over 4: 150 each.
    exact_round_robin(Family::Ipv6, AttachMode::SelectOrMigrate, 4, 75)
}

#[test]
fn select_mode_without_migration_is_exact_too() -> Result<()> {
    fresh_netns()?;
    exact_round_robin(Family::Ipv4, AttachMode::Select, 4, 75)
}

#[test]
fn counters_equal_what_the_clients_observed() -> Result<()> {
    fresh_netns()?;
    for family in [Family::Ipv4, Family::Ipv6] {
        let n = 4;
        let (pool, group) = steer::pool(family, n, options(AttachMode::SelectOrMigrate))?;
        let before = reuseport_testing::netstat::TcpCounters::read();
        let out = clients::run(pool.addr(), n, THREADS, 50);
        assert!(out.is_clean(), "{family}: {out}");

        let stats = group.stats()?;
        steer::assert_runs_match(&stats, &out.counts, before);
        assert_eq!(stats.global.migrations, 0, "{family}: {stats:?}");
        assert_eq!(stats.global.fallbacks, 0, "{family}: {stats:?}");
        assert_eq!(stats.global.drops, 0, "{family}: {stats:?}");
        assert_eq!(steer::select_errors(&stats), 0, "{family}: {stats:?}");
        assert!(stats.slots.iter().all(|s| s.migrated == 0), "{stats:?}");
    }
    Ok(())
}

/// UDP: the program runs per datagram, so round-robin splits even one flow's datagrams exactly.
#[test]
fn udp_datagrams_are_round_robined() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (addr, socks) = listeners::udp_group(Family::Ipv4, n)?;
    let mut group = Group::load(options(AttachMode::Select))?;
    for s in &socks {
        group.insert(s)?;
        s.set_nonblocking(true)?;
    }
    group.attach(&socks[0])?;
    let servers: Vec<UdpSocket> = socks.into_iter().map(UdpSocket::from).collect();

    let sent = 400u64;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..sent {
        client.send_to(&i.to_le_bytes(), addr)?;
    }
    let mut counts = vec![0u64; n];
    let mut buf = [0u8; 64];
    // On a time-out, the assertion below says what is missing.
    let _ = wait::until_every(
        Duration::from_millis(1),
        clients::TIMEOUT,
        "the datagrams received",
        || {
            for (i, s) in servers.iter().enumerate() {
                while s.recv(&mut buf).is_ok() {
                    counts[i] += 1;
                }
            }
            counts.iter().sum::<u64>() >= sent
        },
    );
    assert_eq!(counts, vec![sent / n as u64; n]);
    let stats = group.stats()?;
    assert_eq!(steer::selected(&stats, n), counts, "{stats:?}");
    assert_eq!(stats.global.runs, sent, "{stats:?}");
    Ok(())
}
