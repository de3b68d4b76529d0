//! `reuseport-bench --quick` end to end, as CI runs it: every scenario runs (small), writes its
//! files, and gives sane values. Checks counts and shapes exactly, and timings only against
//! ceilings far above what any working build gives. Needs root and the
//! `reuseport` binary built beside this one (`cargo build --workspace --bins`).

use std::{fs, path::Path, process::Command};

fn csv(dir: &Path, name: &str) -> Vec<Vec<String>> {
    let text = fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    text.lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

fn column(rows: &[Vec<String>], name: &str) -> usize {
    rows[0]
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn f(s: &str) -> f64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

#[test]
fn quick_run_writes_every_scenario_with_sane_values() {
    let base = std::env::temp_dir().join(format!("reuseport-bench-quick-{}", std::process::id()));
    let out = base.join("results");
    let doc = base.join("docs/benchmarks.md");
    let status = Command::new(env!("CARGO_BIN_EXE_reuseport-bench"))
        .args(["--quick", "--out"])
        .arg(&out)
        .arg("--doc")
        .arg(&doc)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "reuseport-bench --quick failed: {status}");

    for name in [
        "fairness",
        "overhead",
        "scale",
        "throughput",
        "stuck",
        "mixed",
        "churn",
        "monitor",
    ] {
        for ext in ["md", "csv"] {
            assert!(out.join(format!("{name}.{ext}")).exists(), "{name}.{ext}");
        }
    }
    for svg in [
        "fairness-workers",
        "stuck-cdf",
        "stuck-workers",
        "mixed-cdf",
        "mixed-workers",
    ] {
        let text = fs::read_to_string(out.join(format!("{svg}.svg"))).unwrap();
        assert!(text.starts_with("<svg"), "{svg}");
        assert!(
            base.join(format!("docs/bench/{svg}.svg")).exists(),
            "{svg} copied"
        );
    }

    // Fairness: round-robin is exact (800 connections over 8 listeners).
    let fairness = csv(&out, "fairness.csv");
    let rr: Vec<_> = fairness.iter().filter(|r| r[0] == "round-robin").collect();
    assert_eq!(rr.len(), 8);
    assert!(rr.iter().all(|r| r[3] == "100"), "{rr:?}");
    // Every steering placed all 800; weighted exactly by weight (800 is 40 periods of 1:1:2:2:
    // 3:3:4:4).
    let (weight, count) = (column(&fairness, "weight"), column(&fairness, "count"));
    let mut steerings: Vec<&str> = fairness[1..].iter().map(|r| r[0].as_str()).collect();
    steerings.dedup();
    assert!(steerings.len() >= 4, "{steerings:?}");
    for steering in steerings {
        let rows: Vec<_> = fairness[1..].iter().filter(|r| r[0] == steering).collect();
        let total: f64 = rows.iter().map(|r| f(&r[count])).sum();
        assert_eq!(total, 800.0, "{steering}: {rows:?}");
        if steering == "weighted" {
            let weights: f64 = rows.iter().map(|r| f(&r[weight])).sum();
            for r in &rows {
                assert_eq!(f(&r[count]), 800.0 * f(&r[weight]) / weights, "{rows:?}");
            }
        }
    }
    // The program ran once per connection, with no stray run, under every policy.
    let summary = csv(&out, "fairness-summary.csv");
    let (runs, stray) = (
        column(&summary, "program runs"),
        column(&summary, "stray runs"),
    );
    for r in summary[1..].iter().filter(|r| !r[0].starts_with("none")) {
        assert_eq!((r[runs].as_str(), r[stray].as_str()), ("800", "0"), "{r:?}");
    }

    // Overhead and scale: one row per group and steering (the no-op program among them); the
    // program ran once per connection, and each policy has a cost net of the no-op program.
    let overhead = csv(&out, "overhead.csv");
    assert_eq!(overhead.len(), 1 + 7);
    let scale = csv(&out, "scale.csv");
    assert_eq!(scale.len(), 1 + 2 * 7);
    for rows in [&overhead, &scale] {
        let (steering, net) = (
            column(rows, "steering"),
            column(rows, "net_ns_per_run_median"),
        );
        assert_eq!(
            rows[1..]
                .iter()
                .filter(|r| r[steering] == "no-op program")
                .count(),
            rows.len() / 7,
            "{rows:?}"
        );
        for r in &rows[1..] {
            let policy = !r[steering].starts_with("none") && r[steering] != "no-op program";
            // A number (it may be negative: two medians of a noisy machine), only for policies.
            assert_eq!(policy, r[net].parse::<f64>().is_ok(), "{r:?}");
        }
    }
    for rows in [&overhead, &scale] {
        let c = |name| column(rows, name);
        let (steering, runs, rate) = (
            c("steering"),
            c("runs_per_connection"),
            c("conn_per_s_median"),
        );
        let ns = [
            c("ns_per_run_min"),
            c("ns_per_run_median"),
            c("ns_per_run_max"),
        ];
        for r in &rows[1..] {
            assert!(f(&r[rate]) > 0.0, "{r:?}");
            if r[steering].starts_with("none") {
                // The baseline: no program, and the ratio of its own rate.
                assert_eq!(f(&r[runs]), 0.0, "{r:?}");
                assert_eq!(f(&r[c("rate_ratio_median")]), 1.0, "{r:?}");
                continue;
            }
            // A run of the program takes about 100-300 ns (JIT); 10 µs on average over a
            // round would be a program gone wrong (a loop over every slot, a lock).
            let [min, median, max] = ns.map(|i| f(&r[i]));
            assert!(
                0.0 < min && min <= median && median <= max && max < 10_000.0,
                "{r:?}"
            );
            assert!((f(&r[runs]) - 1.0).abs() < 0.05, "{r:?}");
        }
    }

    // Latency scenarios: every steering answered its requests, quantiles in order, and each
    // worker's count adds up.
    for (name, steerings) in [("stuck", 6), ("mixed", 7)] {
        let rows = csv(&out, &format!("{name}.csv"));
        assert_eq!(rows.len(), 1 + steerings, "{name}");
        let c = |n| column(&rows, n);
        for r in &rows[1..] {
            let requests = f(&r[c("requests")]);
            let failed = f(&r[c("failed")]);
            assert!(requests >= 50.0 && failed == 0.0, "{name}: {r:?}");
            let (p50, p99, max) = (f(&r[c("p50_ms")]), f(&r[c("p99_ms")]), f(&r[c("max_ms")]));
            assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{name}: {r:?}");
            let per_worker: f64 = r[c("per_worker")].split(' ').map(f).sum();
            assert_eq!(per_worker, requests - failed, "{name}: {r:?}");
        }
        // The anchors answered like the rest, prefork on its shared socket and HAProxy in front.
        for anchor in ["prefork (shared socket)", "haproxy leastconn"] {
            assert!(
                rows.iter().any(|r| r[0] == anchor),
                "{name}: {anchor} missing"
            );
        }
        // Every request is in the per-request file.
        let requests = csv(&out, &format!("{name}-requests.csv"));
        let total: f64 = rows[1..].iter().map(|r| f(&r[c("requests")])).sum();
        assert_eq!(requests.len() as f64 - 1.0, total, "{name}");
    }
    // Mixed: the fast requests (90%, `ms=1`) have their own percentiles, in order.
    let mixed = csv(&out, "mixed.csv");
    let c = |n| column(&mixed, n);
    for r in &mixed[1..] {
        let (all, fast) = (f(&r[c("requests")]), f(&r[c("fast_requests")]));
        assert!(fast > 0.7 * all && fast < all, "{r:?}");
        let (p50, p99, max) = (
            f(&r[c("fast_p50_ms")]),
            f(&r[c("fast_p99_ms")]),
            f(&r[c("fast_max_ms")]),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r:?}");
    }

    // Throughput: every steering and anchor in both connection modes served requests, none
    // failed, and each has a CPU cost per request.
    let throughput = csv(&out, "throughput.csv");
    assert_eq!(throughput.len(), 1 + 7 * 2, "{throughput:?}");
    let c = |n| column(&throughput, n);
    for r in &throughput[1..] {
        assert!(f(&r[c("requests_per_s_median")]) > 0.0, "{r:?}");
        assert_eq!(f(&r[c("failed")]), 0.0, "{r:?}");
        assert!(f(&r[c("processes_us_per_request_median")]) > 0.0, "{r:?}");
    }

    // With a daemon, the stopped worker is noticed.
    let stuck = csv(&out, "stuck.csv");
    let events = column(&stuck, "stuck_events");
    assert!(
        stuck[1..]
            .iter()
            .filter(|r| r[0].contains("--on-stuck"))
            .all(|r| f(&r[events]) >= 1.0),
        "{stuck:?}"
    );

    // Churn: all workers replaced in both cells; with the daemon, policies swapped.
    let churn = csv(&out, "churn.csv");
    assert_eq!(churn.len(), 1 + 2);
    let (replaced, swaps) = (
        column(&churn, "workers_replaced"),
        column(&churn, "policy_swaps"),
    );
    assert!(churn[1..].iter().all(|r| r[replaced] == "4"), "{churn:?}");
    assert!(churn[1..].iter().any(|r| f(&r[swaps]) > 10.0), "{churn:?}");
    // With the daemon (drain, then kill; queues migrate) nothing fails; under the kernel's hash
    // a killed worker's queue is reset, so that row may count failures.
    let (requests, failed) = (column(&churn, "requests"), column(&churn, "failed"));
    let daemon: Vec<_> = churn[1..]
        .iter()
        .filter(|r| r[0].starts_with("daemon"))
        .collect();
    assert_eq!(daemon.len(), 1, "{churn:?}");
    assert!(
        f(&daemon[0][requests]) > 0.0 && f(&daemon[0][failed]) == 0.0,
        "{churn:?}"
    );

    // Monitor: an idle and a loaded window, each a share of one core.
    let monitor = csv(&out, "monitor.csv");
    assert_eq!(monitor.len(), 1 + 2);
    let (phase, share, requests) = (
        column(&monitor, "phase"),
        column(&monitor, "core_percent"),
        column(&monitor, "requests"),
    );
    // The goal is 2% of a core idle at --sample-ms 5; a fifth of a core idle, or half a core
    // at 200 requests/s, is a monitor gone wrong (sampling in a busy loop), whatever else runs.
    for r in &monitor[1..] {
        let (core, answered) = (f(&r[share]), f(&r[requests]));
        match r[phase].as_str() {
            "idle" => assert!(core < 20.0 && answered == 0.0, "{r:?}"),
            "under load" => assert!(core < 50.0 && answered > 0.0 && answered <= 200.0, "{r:?}"),
            other => panic!("unknown phase {other:?}"),
        }
    }

    let text = fs::read_to_string(&doc).unwrap();
    for heading in [
        "### Stuck worker",
        "### Mixed workload",
        "### Monitor",
        "### Churn",
    ] {
        assert!(
            text.contains(heading),
            "{heading} missing from the document"
        );
    }
    assert!(text.contains("](bench/stuck-cdf.svg)"));
    // The CSV files behind the document are beside it.
    for data in ["throughput.csv", "mixed.csv", "overhead-rounds.csv"] {
        assert!(base.join("docs/bench-data").join(data).exists(), "{data}");
    }
    fs::remove_dir_all(&base).unwrap();
}
