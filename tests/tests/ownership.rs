//! Who may do what on the control socket (docs/security.md): a slot belongs to the uid that
//! registered its worker, group-wide settings to the daemon's uid and `--admin-uid` uids, and
//! `status` to every allowed uid. Each rule is tried with real processes of other uids: the CLI
//! and `reuseport echo` workers run setuid from a copy of the binary those uids can reach.

use std::{
    fs,
    net::SocketAddr,
    process::{Child, Stdio},
    time::Duration,
};

use reuseport_testing::{
    child::NOBODY,
    daemon::{signal, Fixture},
    wait, TestResult as Result,
};
use reuseport_worker::{
    protocol::{EventKind, WorkerState},
    GroupStatus, Request,
};

/// A second unprivileged uid, for "uid A cannot touch uid B's slot".
const OTHER: u32 = 65533;

/// What a CLI command run as another uid did.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `reuseport ARGS --control ...` as `uid`.
fn cli_as(f: &Fixture, uid: u32, args: &[&str]) -> Result<Ran> {
    let out = f
        .command_as(uid)?
        .args(args)
        .arg("--control")
        .arg(&f.control)
        .stdin(Stdio::null())
        .output()?;
    Ok(Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs a CLI command as `uid` that must be refused with a message containing every one of
/// `says`.
fn refused_as(f: &Fixture, uid: u32, args: &[&str], says: &[&str]) -> Result {
    let ran = cli_as(f, uid, args)?;
    assert!(!ran.ok, "uid {uid} was let {args:?}: {}", ran.stdout);
    for s in says {
        assert!(
            ran.stderr.contains(s),
            "{args:?}: {s:?} not in {}",
            ran.stderr
        );
    }
    Ok(())
}

/// Runs a CLI command as `uid` that must succeed.
fn allowed_as(f: &Fixture, uid: u32, args: &[&str]) -> Result<String> {
    let ran = cli_as(f, uid, args)?;
    assert!(ran.ok, "uid {uid} was refused {args:?}: {}", ran.stderr);
    Ok(ran.stdout)
}

/// Processes started as other uids, killed on drop.
#[derive(Default)]
struct Workers(Vec<Child>);

impl Workers {
    /// Starts `reuseport echo` as `uid` on `addr`, registering with the fixture's daemon.
    fn echo_as(&mut self, f: &Fixture, uid: u32, name: &str, addr: SocketAddr) -> Result<u32> {
        let log = fs::File::create(f.dir.join(format!("{name}.log")))?;
        let child = f
            .command_as(uid)?
            .args(["echo", "--listen", &addr.to_string(), "--name", name])
            .arg("--control")
            .arg(&f.control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let pid = child.id();
        self.0.push(child);
        Ok(pid)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The status of every group of the daemon.
fn groups(f: &Fixture) -> Result<Vec<GroupStatus>> {
    Ok(f.request(&Request::Status)?.groups.ok_or("no groups")?)
}

/// A daemon with `extra` flags and two workers of root (the daemon's uid) in slots 0 and 1.
fn with_root_workers(name: &str, extra: &[&str]) -> Result<Fixture> {
    let mut f = Fixture::with_daemon_args(name, extra)?;
    f.echo_workers(2)?;
    f.wait_active(2)?;
    Ok(f)
}

/// Rule: `status` and `policy get` are readable by every allowed uid.
#[test]
fn every_allowed_uid_reads_the_status_and_the_policy() -> Result {
    let f = with_root_workers("own-read", &["--allow-uid", "65534"])?;
    let table = allowed_as(&f, NOBODY, &["status"])?;
    assert!(table.contains("w0") && table.contains("w1"), "{table}");
    let json = allowed_as(&f, NOBODY, &["status", "--json"])?;
    assert!(json.contains("\"uid\": 0"), "{json}");
    let policy = allowed_as(&f, NOBODY, &["policy", "get"])?;
    assert_eq!(policy.trim(), "127.0.0.1:8080 round-robin");
    Ok(())
}

/// Rule: group-wide settings belong to the daemon's uid and `--admin-uid` uids. Before, an
/// allowed uid switched the policy of root's group.
#[test]
fn an_allowed_uid_may_not_set_the_policy() -> Result {
    let f = with_root_workers("own-policy", &["--allow-uid", "65534"])?;
    refused_as(
        &f,
        NOBODY,
        &["policy", "set", "weighted"],
        &["uid 65534 may not set the policy", "--admin-uid 65534"],
    )?;
    assert_eq!(f.status()?.policy.to_string(), "round-robin");
    // The daemon's uid may.
    allowed_as(&f, 0, &["policy", "set", "weighted"])?;
    assert_eq!(f.status()?.policy.to_string(), "weighted");
    Ok(())
}

/// Rule: a uid may weight, drain, undrain and close only the slots it registered. Before, an
/// allowed uid re-weighted, drained and `drain --close`d root's workers.
#[test]
fn an_allowed_uid_may_not_touch_the_slots_of_another_uid() -> Result {
    let f = with_root_workers("own-slots", &["--allow-uid", "65534"])?;
    let before = f.status()?;
    f.request(&Request::Drain {
        slot: 1,
        group: None,
        close: None,
    })?;
    for (args, verb) in [
        (&["weight", "0", "5"][..], "re-weight"),
        (&["drain", "0"][..], "drain"),
        (&["drain", "0", "--close"][..], "drain --close"),
        (&["undrain", "1"][..], "undrain"),
    ] {
        let slot = args[1];
        refused_as(
            &f,
            NOBODY,
            args,
            &[
                &format!("slot {slot} belongs to uid 0"),
                "only its owner or an admin",
                &format!("may {verb} it"),
            ],
        )?;
    }
    // Nothing changed: same workers, weights and states, both still serving as before.
    let after = f.status()?;
    let view = |s: &GroupStatus| {
        s.workers
            .iter()
            .map(|w| (w.slot, w.pid, w.weight))
            .collect::<Vec<_>>()
    };
    assert_eq!(view(&after), view(&before));
    assert_eq!(after.workers[0].state, WorkerState::Active);
    assert_eq!(after.workers[1].state, WorkerState::Draining);
    Ok(())
}

/// Rule: a uid may weight, drain, undrain and close the slots it registered; the daemon's uid
/// may act on them too.
#[test]
fn a_uid_acts_on_the_slots_it_registered() -> Result {
    let f = Fixture::with_daemon_args("own-mine", &["--allow-uid", "65534"])?;
    let mut workers = Workers::default();
    let pids = [
        workers.echo_as(&f, NOBODY, "n0", f.addr)?,
        workers.echo_as(&f, NOBODY, "n1", f.addr)?,
    ];
    let status = f.wait_active(2)?;
    assert!(status.workers.iter().all(|w| w.uid == NOBODY), "{status:?}");
    let slot_of = |pid: u32| -> Result<String> {
        let s = f.status()?;
        let w = s.workers.iter().find(|w| w.pid == pid).ok_or("no worker")?;
        Ok(w.slot.to_string())
    };
    let (s0, s1) = (slot_of(pids[0])?, slot_of(pids[1])?);
    allowed_as(&f, NOBODY, &["weight", &s0, "7"])?;
    allowed_as(&f, NOBODY, &["drain", &s0])?;
    let w = f.wait_worker(Duration::from_secs(5), "n0 draining, weight 7", |w| {
        w.pid == pids[0] && w.state == WorkerState::Draining && w.weight == 7
    })?;
    assert_eq!(w.uid, NOBODY);
    allowed_as(&f, NOBODY, &["undrain", &s0])?;
    allowed_as(&f, NOBODY, &["drain", &s1, "--close"])?;
    // Its listener shut down (it joins again with a new one, which starts draining).
    f.wait_status(Duration::from_secs(5), "n1 closed by its owner", |s| {
        s.events
            .iter()
            .any(|e| e.pid == pids[1] && e.what == EventKind::Closed)
    })?;
    // The daemon's uid is an admin: it may act on another uid's slot.
    allowed_as(&f, 0, &["drain", &s0])?;
    f.wait_worker(Duration::from_secs(5), "n0 drained by root", |w| {
        w.pid == pids[0] && w.state == WorkerState::Draining
    })?;
    Ok(())
}

/// Rule: `--admin-uid` uids may set the policy and act on every slot, and may connect without
/// `--allow-uid`.
#[test]
fn an_admin_uid_sets_the_policy_and_acts_on_every_slot() -> Result {
    let f = with_root_workers("own-admin", &["--admin-uid", "65534"])?;
    allowed_as(&f, NOBODY, &["policy", "set", "weighted"])?;
    allowed_as(&f, NOBODY, &["weight", "0", "3"])?;
    allowed_as(&f, NOBODY, &["drain", "1"])?;
    let s = f.status()?;
    assert_eq!(s.policy.to_string(), "weighted");
    assert_eq!(
        (s.workers[0].weight, s.workers[1].state),
        (3, WorkerState::Draining)
    );
    allowed_as(&f, NOBODY, &["undrain", "1"])?;
    assert_eq!(f.status()?.workers[1].state, WorkerState::Active);
    Ok(())
}

/// Rule: uid A cannot touch uid B's slot. The kernel keeps two uids out of one reuseport group
/// (a socket of another effective uid cannot bind the port), so they meet in two groups of one
/// daemon; this also shows that one uid cannot steal another's port.
#[test]
fn one_uid_cannot_touch_the_slot_of_another_nor_join_its_group() -> Result {
    let f = Fixture::with_daemon_args(
        "own-two-uids",
        &[
            "--listen",
            "127.0.0.1:8081",
            "--allow-uid",
            "65534",
            "--allow-uid",
            "65533",
        ],
    )?;
    let other_addr: SocketAddr = "127.0.0.1:8081".parse()?;
    let mut workers = Workers::default();
    workers.echo_as(&f, NOBODY, "nobody", f.addr)?;
    workers.echo_as(&f, OTHER, "other", other_addr)?;
    wait::until(Duration::from_secs(15), "both workers registered", || {
        groups(&f).is_ok_and(|g| g.iter().all(|g| g.workers.len() == 1))
    })?;
    let (mine, theirs) = (other_addr.to_string(), f.addr.to_string());
    refused_as(
        &f,
        OTHER,
        &["drain", "0", "--group", &theirs],
        &["slot 0 belongs to uid 65534", "may drain it"],
    )?;
    refused_as(
        &f,
        NOBODY,
        &["weight", "0", "9", "--group", &mine],
        &["slot 0 belongs to uid 65533", "may re-weight it"],
    )?;
    allowed_as(&f, OTHER, &["drain", "0", "--group", &mine])?;
    let g = groups(&f)?;
    let state = |i: usize| g[i].workers[0].state;
    assert_eq!(
        (state(0), state(1)),
        (WorkerState::Active, WorkerState::Draining)
    );
    assert_eq!((g[0].workers[0].uid, g[1].workers[0].uid), (NOBODY, OTHER));

    // uid 65533 cannot put a listener of its own in uid 65534's group: bind fails.
    let mut intruder = f
        .command_as(OTHER)?
        .args(["echo", "--no-register", "--listen", &theirs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut exited = None;
    let waited = wait::until(Duration::from_secs(10), "the intruder to give up", || {
        exited = intruder.try_wait().ok().flatten();
        exited.is_some()
    });
    if waited.is_err() {
        let _ = intruder.kill();
        let _ = intruder.wait();
        return Err("uid 65533 bound a listener in uid 65534's group".into());
    }
    let out = intruder.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("in use"), "{stderr}");
    Ok(())
}

/// Rule: a slot taken over from pinned state after a daemon restart has no owner until its
/// worker registers again (only admins may act on it), then belongs to that worker's uid.
#[test]
fn a_taken_over_slot_is_the_admins_until_its_worker_registers_again() -> Result {
    let args = ["--allow-uid", "65534"];
    let mut f = Fixture::with_daemon_args("own-taken-over", &args)?;
    let mut workers = Workers::default();
    let pid = workers.echo_as(&f, NOBODY, "n0", f.addr)?;
    f.wait_active(1)?;
    // Stopped, the worker cannot register with the next daemon until it is let go.
    signal(pid, libc::SIGSTOP)?;
    let outcome = (|| -> Result {
        f.stop_daemon(libc::SIGTERM)?;
        f.start_daemon(&args)?;
        let taken = f.wait_worker(Duration::from_secs(5), "slot 0 taken over", |w| {
            w.slot == 0 && w.pid == 0
        })?;
        assert_eq!(taken.name, "");
        refused_as(
            &f,
            NOBODY,
            &["drain", "0"],
            &["slot 0 was taken over", "only an admin", "may drain it"],
        )?;
        allowed_as(&f, 0, &["weight", "0", "4"])?;
        Ok(())
    })();
    signal(pid, libc::SIGCONT)?;
    outcome?;
    f.wait_worker(Duration::from_secs(10), "n0 registered again", |w| {
        w.pid == pid && w.uid == NOBODY
    })?;
    allowed_as(&f, NOBODY, &["drain", "0"])?;
    let w = f.wait_worker(Duration::from_secs(5), "n0 drained by its owner", |w| {
        w.pid == pid && w.state == WorkerState::Draining
    })?;
    assert_eq!(w.weight, 4, "the admin's weight was kept");
    Ok(())
}
