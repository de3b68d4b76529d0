//! Load-aware policies against a worker busy with a slow request. A test binary of its own, so
//! no other test competes for the CPU while loads are sampled.

use std::time::Duration;

use reuseport_testing::loadgen::{request, tally, Load};
use reuseport_testing::{daemon::Fixture, TestResult as Result};

#[test]
fn least_loaded_and_p2c_avoid_a_worker_busy_with_slow_requests() -> Result {
    let mut f = Fixture::with_daemon_args(
        "leastloaded",
        &["--policy", "least-loaded", "--on-stuck", "skip"],
    )?;
    f.echo_workers(4)?;
    f.wait_workers(4)?;
    // 8 closed-loop clients: each connection sent to the busy worker stalls its client until
    // the long request ends. Round-robin, for contrast, soon stalls them all; loads are sampled
    // every 5 ms, so one may still land there before its queue shows.
    // Stalled clients (of 8), per policy: the allowed range.
    for (policy, min_stalled, max_stalled) in
        [("round-robin", 6, 8), ("least-loaded", 0, 1), ("p2c", 0, 1)]
    {
        let out = f.cli(&["policy", "set", policy])?;
        assert!(out.status.success());
        let addr = f.addr;
        // In-flight reports trail by up to one poll of the workers: start from all idle.
        f.wait_status(Duration::from_secs(2), "every worker idle", |s| {
            s.workers.iter().all(|w| w.load == 0)
        })?;
        let (busy_pid, outcomes) = std::thread::scope(|s| -> Result<_> {
            let blocker = s.spawn(move || request(addr, "/sleep?ms=2000", Duration::from_secs(5)));
            // Wait until the busy worker has been busy ~10 samples: "busy with a slow request".
            let busy = f.wait_worker(
                Duration::from_secs(2),
                "a worker busy for 10 samples",
                |w| w.load >= 10,
            )?;
            // Several clients, so one stuck behind the busy worker stalls little.
            let load = Load::new(addr, 128, 8);
            let outcomes = load.run();
            let served_by = blocker.join().map_err(|_| "blocker panicked")??;
            assert_eq!(served_by, busy.pid);
            Ok((busy.pid, outcomes))
        })?;
        let (_, errors) = tally(&outcomes);
        assert!(errors.is_empty(), "{policy}: {errors:?}");
        // Sent to the busy worker while it was busy: those waited for its long request.
        let stalled = outcomes
            .iter()
            .filter(|o| o.result.as_ref().is_ok_and(|&pid| pid == busy_pid))
            .filter(|o| o.latency > Duration::from_millis(500))
            .count();
        eprintln!("{policy}: {stalled} of 8 clients stalled behind the busy worker");
        assert!(
            (min_stalled..=max_stalled).contains(&stalled),
            "{policy}: {stalled} of {} new connections went to the busy worker",
            outcomes.len()
        );
    }
    Ok(())
}
