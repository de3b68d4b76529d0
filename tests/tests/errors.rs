//! Every error of the `Group` API that a real kernel and real sockets can produce, checked by
//! variant. (KernelTooOld is unit-tested in the library; NotAttached and Ebpf need a broken
//! object.) NotPermitted and BpfUnavailable re-run one test of this binary as a child with
//! fewer rights: as `nobody`, or behind a seccomp filter that fails bpf(2) with ENOSYS.

use std::{
    net::{SocketAddr, UdpSocket},
    os::unix::net::UnixDatagram,
};

use anyhow::Result;
use reuseport_steer::{
    pin, AttachMode, Error, Family, Group, GroupOptions, Protocol, MAX_SLOTS, MAX_WEIGHT,
};
use reuseport_testing::{child, fresh_netns, limits, listeners};

fn load() -> Result<Group> {
    Ok(Group::load(GroupOptions::default())?)
}

fn any_port(family: Family) -> SocketAddr {
    SocketAddr::new(listeners::loopback(family), 0)
}

#[test]
fn a_socket_without_reuseport_is_refused_by_attach_and_insert() -> Result<()> {
    fresh_netns()?;
    let mut group = load()?;
    let plain = listeners::listener(any_port(Family::Ipv4), false)?;
    assert!(matches!(group.attach(&plain), Err(Error::NoReuseport)));
    assert!(matches!(group.insert(&plain), Err(Error::NoReuseport)));
    assert!(matches!(
        group.insert_at(3, &plain),
        Err(Error::NoReuseport)
    ));
    assert!(!group.is_attached());
    assert!(group.slots().is_empty());
    Ok(())
}

#[test]
fn unbound_and_not_listening_sockets_are_refused() -> Result<()> {
    fresh_netns()?;
    let mut group = load()?;
    let unbound = listeners::socket(any_port(Family::Ipv4), socket2::Type::STREAM, true)?;
    assert!(matches!(group.insert(&unbound), Err(Error::NotBound)));
    let bound = listeners::bound(any_port(Family::Ipv4), true)?;
    assert!(matches!(group.insert(&bound), Err(Error::NotListening)));
    assert!(matches!(group.attach(&bound), Err(Error::NotListening)));
    assert!(group.slots().is_empty());
    Ok(())
}

#[test]
fn sockets_of_another_group_are_refused() -> Result<()> {
    fresh_netns()?;
    let mut group = load()?;
    let (addr, socks) = listeners::group(Family::Ipv4, 1)?;
    group.insert(&socks[0])?;

    let other_port = listeners::listener(any_port(Family::Ipv4), true)?;
    let got = listeners::local_addr(&other_port)?;
    match group.insert(&other_port) {
        Err(Error::WrongAddress { want, got: g }) => assert_eq!((want, g), (addr, got)),
        other => panic!("other port: {other:?}"),
    }
    assert!(matches!(
        group.attach(&other_port),
        Err(Error::WrongAddress { .. })
    ));

    // Same port, another loopback address.
    let other_ip: SocketAddr = format!("127.0.0.2:{}", addr.port()).parse()?;
    let other_ip_sock = listeners::listener(other_ip, true)?;
    match group.insert(&other_ip_sock) {
        Err(Error::WrongAddress { want, got }) => assert_eq!((want, got), (addr, other_ip)),
        other => panic!("other address: {other:?}"),
    }

    let udp = listeners::udp(addr, true)?;
    match group.insert(&udp) {
        Err(Error::WrongProtocol { want, got }) => {
            assert_eq!((want, got), (Protocol::Tcp, Protocol::Udp))
        }
        other => panic!("UDP into a TCP group: {other:?}"),
    }

    let v6 = listeners::listener(
        SocketAddr::new(listeners::loopback(Family::Ipv6), addr.port()),
        true,
    )?;
    match group.insert(&v6) {
        Err(Error::WrongFamily { want, got }) => {
            assert_eq!((want, got), (Family::Ipv4, Family::Ipv6))
        }
        other => panic!("IPv6 into an IPv4 group: {other:?}"),
    }
    assert_eq!(group.slots().len(), 1, "a refused socket took a slot");
    Ok(())
}

/// A socket bound to a device (SO_BINDTODEVICE) sits in another kernel reuseport group than
/// the group's unbound sockets, though it binds the same address: every selection of it would
/// fail, so it is refused.
#[test]
fn a_socket_bound_to_another_device_is_refused() -> Result<()> {
    fresh_netns()?;
    let mut group = load()?;
    let (addr, socks) = listeners::group(Family::Ipv4, 1)?;
    group.insert(&socks[0])?;
    let on_lo = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    on_lo.set_reuse_port(true)?;
    on_lo.bind_device(Some(b"lo"))?;
    on_lo.bind(&addr.into())?;
    on_lo.listen(16)?;
    match group.insert(&on_lo) {
        Err(Error::WrongDevice { want, got }) => {
            assert_eq!(want, 0);
            assert_ne!(got, 0);
        }
        other => panic!("a socket bound to lo: {other:?}"),
    }
    assert_eq!(group.slots().len(), 1, "a refused socket took a slot");
    Ok(())
}

#[test]
fn what_is_not_an_inet_socket_is_refused() -> Result<()> {
    fresh_netns()?;
    let mut group = load()?;
    let unix = UnixDatagram::unbound()?;
    assert!(matches!(group.insert(&unix), Err(Error::UnsupportedSocket)));

    // No socket at all: the sender's mistake, not an I/O error.
    let file = std::fs::File::open("/proc/self/status")?;
    match group.insert(&file) {
        Err(Error::UnsupportedSocket) => {}
        other => panic!("a file: {other:?}"),
    }

    // A UDP socket is checked like a TCP one.
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    assert!(matches!(group.insert(&udp), Err(Error::NoReuseport)));
    Ok(())
}

#[test]
fn slot_errors() -> Result<()> {
    fresh_netns()?;
    let mut group = load()?;
    let (_, socks) = listeners::group(Family::Ipv4, 2)?;
    let (a, b) = (&socks[0], &socks[1]);

    match group.insert_at(MAX_SLOTS, a) {
        Err(Error::SlotOutOfRange { slot, max }) => assert_eq!((slot, max), (1024, 1024)),
        other => panic!("insert_at(1024): {other:?}"),
    }
    assert!(matches!(
        group.set_state(MAX_SLOTS, reuseport_steer::SlotState::Draining),
        Err(Error::SlotOutOfRange { .. })
    ));
    assert!(matches!(
        group.remove(u32::MAX),
        Err(Error::SlotOutOfRange { .. })
    ));

    assert!(matches!(group.remove(7), Err(Error::SlotEmpty(7))));
    assert!(matches!(
        group.set_state(7, reuseport_steer::SlotState::Draining),
        Err(Error::SlotEmpty(7))
    ));
    assert!(matches!(group.set_weight(7, 2), Err(Error::SlotEmpty(7))));

    group.insert_at(3, a)?;
    assert!(matches!(group.insert_at(3, b), Err(Error::SlotTaken(3))));

    assert!(matches!(group.insert(a), Err(Error::AlreadyInGroup(3))));
    assert!(matches!(
        group.insert_at(5, a),
        Err(Error::AlreadyInGroup(3))
    ));
    let dup = a.try_clone()?;
    assert!(matches!(group.insert(&dup), Err(Error::AlreadyInGroup(3))));

    for bad in [0, MAX_WEIGHT + 1] {
        match group.set_weight(3, bad) {
            Err(Error::InvalidWeight { weight, max }) => assert_eq!((weight, max), (bad, 1000)),
            other => panic!("weight {bad}: {other:?}"),
        }
    }
    assert_eq!(group.slot(3).map(|s| s.weight), Some(1));

    group.remove(3)?;
    assert!(matches!(group.remove(3), Err(Error::SlotEmpty(3))));
    assert_eq!(group.insert(b)?, 0);
    Ok(())
}

#[test]
fn a_schedule_too_long_is_refused_and_the_weight_kept() -> Result<()> {
    fresh_netns()?;
    let mut group = load()?;
    let (_, socks) = listeners::group(Family::Ipv4, 9)?;
    for s in &socks {
        group.insert(s)?;
    }
    // 1000 + 999 + ... + 993 = 7972 and two slots of weight 1: fits in 8192.
    for slot in 0..8 {
        group.set_weight(slot, 1000 - slot)?;
    }
    // Slot 8 at 992 makes 7972 + 992 = 8964 (the weights have no common divisor).
    match group.set_weight(8, 992) {
        Err(Error::ScheduleTooLong { len, max }) => assert_eq!((len, max), (8964, 8192)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        group.slot(8).map(|s| s.weight),
        Some(1),
        "weight not rolled back"
    );
    group.set_weight(8, 2)?;
    Ok(())
}

#[test]
fn all_1024_slots_taken_gives_slots_full() -> Result<()> {
    fresh_netns()?;
    limits::raise_nofile(4096, 4096)?;
    let (_, socks) = listeners::group(Family::Ipv4, MAX_SLOTS as usize + 1)?;
    let mut group = load()?;
    // All 1025 at once: refused whole, nothing placed.
    match group.insert_all(&socks) {
        Err(Error::SlotsFull { max }) => assert_eq!(max, 1024),
        other => panic!("1025 sockets: {other:?}"),
    }
    assert!(group.slots().is_empty());
    // The first 1024, in one publication.
    let slots = group.insert_all(&socks[..MAX_SLOTS as usize])?;
    assert_eq!(slots, (0..MAX_SLOTS).collect::<Vec<_>>());
    assert_eq!(group.active_slots(), (0..MAX_SLOTS).collect::<Vec<_>>());
    match group.insert(&socks[MAX_SLOTS as usize]) {
        Err(Error::SlotsFull { max }) => assert_eq!(max, 1024),
        other => panic!("1025th socket: {other:?}"),
    }
    group.attach(&socks[0])?;
    assert_eq!(group.active_slots().len(), 1024);
    Ok(())
}

#[test]
fn detaching_twice_is_nothing_to_detach() -> Result<()> {
    fresh_netns()?;
    let mut group = load()?;
    let (_, socks) = listeners::group(Family::Ipv4, 2)?;
    // Nothing attached at all yet.
    assert!(matches!(
        group.detach(&socks[0]),
        Err(Error::NothingToDetach(_))
    ));
    group.attach(&socks[0])?;
    group.detach(&socks[1])?;
    match group.detach(&socks[0]) {
        Err(Error::NothingToDetach(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
        other => panic!("second detach: {other:?}"),
    }
    Ok(())
}

const NOT_PERMITTED_TEST: &str = "loading_without_privileges_is_not_permitted";

#[test]
fn loading_without_privileges_is_not_permitted() -> Result<()> {
    if child::role().as_deref() == Some("nobody") {
        child::report(match Group::load(GroupOptions::default()) {
            Err(Error::NotPermitted) => format!("NotPermitted: {}", Error::NotPermitted),
            Err(e) => format!("other error: {e:?}"),
            Ok(_) => "loaded".to_owned(),
        });
        return Ok(());
    }
    fresh_netns()?;
    let ran = child::run(NOT_PERMITTED_TEST, "nobody", Some(child::NOBODY))?;
    assert!(ran.status.success(), "{ran}");
    assert_eq!(
        ran.reports,
        vec![format!("NotPermitted: {}", Error::NotPermitted)],
        "{ran}"
    );
    Ok(())
}

const BPF_UNAVAILABLE_TEST: &str = "loading_without_the_bpf_syscall_is_bpf_unavailable";

#[test]
fn loading_without_the_bpf_syscall_is_bpf_unavailable() -> Result<()> {
    if child::role().as_deref() == Some("no-bpf") {
        reuseport_testing::seccomp::deny_bpf()?;
        for mode in [AttachMode::Select, AttachMode::SelectOrMigrate] {
            child::report(
                match Group::load(GroupOptions {
                    mode,
                    ..GroupOptions::default()
                }) {
                    Err(e @ Error::BpfUnavailable(_)) => format!("BpfUnavailable: {e}"),
                    Err(e) => format!("other error: {e:?}"),
                    Ok(_) => "loaded".to_owned(),
                },
            );
        }
        return Ok(());
    }
    fresh_netns()?;
    let ran = child::run(BPF_UNAVAILABLE_TEST, "no-bpf", None)?;
    assert!(ran.status.success(), "{ran}");
    let want = Error::BpfUnavailable(std::io::Error::from_raw_os_error(libc::ENOSYS));
    assert_eq!(
        ran.reports,
        vec![format!("BpfUnavailable: {want}"); 2],
        "{ran}"
    );
    Ok(())
}

/// Pinned maps of another shape (a build with another layout), or a map this layout no longer
/// has (a build from before publications were one value), are refused before anything is loaded
/// against them, with the directory named; pins of this layout are taken over.
#[test]
fn pins_of_another_map_layout_are_refused() -> Result<()> {
    fresh_netns()?;
    let dir = std::path::Path::new(pin::BPFFS)
        .join(format!("reuseport-test-layout-{}", std::process::id()));
    let options = || GroupOptions {
        pin: Some(dir.clone()),
        ..GroupOptions::default()
    };
    let refused = |what: &str| -> Result<()> {
        match Group::load(options()) {
            Err(e @ Error::IncompatiblePin { .. })
                if e.to_string().contains(&*dir.to_string_lossy()) =>
            {
                Ok(())
            }
            Err(e) => anyhow::bail!(
                "{what}: expected IncompatiblePin naming {}, got {e:?}",
                dir.display()
            ),
            Ok(_) => anyhow::bail!("{what}: pins of another layout were taken over"),
        }
    };
    let outcome = (|| -> Result<()> {
        drop(Group::load(options())?);
        anyhow::ensure!(
            Group::load(options())?.adopted(),
            "pins of this layout not taken over"
        );
        // A map of another shape where LEAST should be: CURSORS' two entries.
        std::fs::remove_file(dir.join("LEAST"))?;
        std::fs::rename(dir.join("CURSORS"), dir.join("LEAST"))?;
        refused("another shape")?;
        pin::unpin(&dir)?;

        // A map named as one of an older layout.
        drop(Group::load(options())?);
        std::fs::rename(dir.join("CURSORS"), dir.join("CONFIG"))?;
        refused("an older layout")
    })();
    pin::unpin(&dir)?;
    outcome
}
