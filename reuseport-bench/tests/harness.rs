//! The harness against the real kernel: each test enters its own network namespace (on its own
//! test thread; the threads it starts inherit it) and needs root.

use std::time::Duration;

use reuseport_bench::{bpf_stats, cell::SteeredPool, scenario, steering::Steering, Options};
use reuseport_steer::{netns, Policy};
use reuseport_testing::clients::{Exchange, Load, SourcePorts};

const WEIGHTS: [u32; 8] = [1, 1, 2, 2, 3, 3, 4, 4];

fn load(connections: u64, source_ports: SourcePorts) -> Load {
    Load {
        connections,
        threads: 4,
        exchange: Exchange::Reset,
        source_ports,
        time_limit: Duration::from_secs(30),
    }
}

#[test]
fn round_robin_and_weighted_counts_are_exact() {
    netns::enter_new().unwrap();
    let mut pool = SteeredPool::new(WEIGHTS.to_vec(), 2).unwrap();

    pool.steer(Steering::policy(Policy::RoundRobin)).unwrap();
    let rr = pool.measure(&load(800, SourcePorts::Kernel)).unwrap();
    assert_eq!(rr.per_slot, vec![100; 8]);
    assert_eq!(rr.program.selected, rr.per_slot);
    assert_eq!(rr.program.runs, 800);

    pool.steer(Steering::policy(Policy::Weighted)).unwrap();
    let weighted = pool
        .measure(&load(800, SourcePorts::Distinct { first: 20_000 }))
        .unwrap();
    let expected: Vec<u64> = WEIGHTS.iter().map(|&w| u64::from(w) * 40).collect();
    assert_eq!(weighted.per_slot, expected);
    assert_eq!(weighted.program.fallbacks, 0);
}

#[test]
fn without_a_program_the_kernel_hash_spreads_and_the_program_never_runs() {
    netns::enter_new().unwrap();
    let mut pool = SteeredPool::new(vec![1; 4], 1).unwrap();
    pool.steer(Steering::policy(Policy::Hash)).unwrap();
    pool.steer(Steering::KernelHash).unwrap();
    let m = pool
        .measure(&load(400, SourcePorts::Distinct { first: 20_000 }))
        .unwrap();
    assert_eq!(m.per_slot.iter().sum::<u64>(), 400);
    assert!(m.per_slot.iter().all(|&c| c > 0), "{:?}", m.per_slot);
    assert_eq!(m.program.runs, 0);
    assert!(!pool.group.is_attached());
}

#[test]
fn bpf_stats_count_one_run_per_connection() {
    netns::enter_new().unwrap();
    let _stats = bpf_stats::enable().unwrap();
    let mut pool = SteeredPool::new(vec![1; 4], 1).unwrap();
    pool.steer(Steering::policy(Policy::Hash)).unwrap();
    let m = pool.measure(&load(500, SourcePorts::Kernel)).unwrap();
    assert_eq!(m.runs.count, 500);
    let ns = m.runs.ns_per_run().unwrap();
    assert!(ns > 0.0 && ns < 100_000.0, "{ns} ns per run");
    assert!(m.rate() > 0.0);
}

#[test]
fn fairness_scenario_writes_its_tables() {
    netns::enter_new().unwrap();
    let fairness = scenario::find("fairness").unwrap();
    let options = Options {
        connections: Some(400),
        ..Options::default()
    };
    let report = fairness.run(&options).unwrap();
    let dir = std::env::temp_dir().join(format!("reuseport-bench-test-{}", std::process::id()));
    report.write(&dir).unwrap();
    let csv = std::fs::read_to_string(dir.join("fairness.csv")).unwrap();
    // Header plus 8 slots for each of the 4 steerings.
    assert_eq!(csv.lines().count(), 1 + 8 * 4);
    assert!(
        csv.contains("round-robin,0,1,50,0.125000,0.125000"),
        "{csv}"
    );
    let md = std::fs::read_to_string(dir.join("fairness.md")).unwrap();
    assert!(
        md.contains(
            "| round-robin | 50 | 50 | 50 | 50 | 50 | 50 | 50 | 50 | 400 | 1.00 | 1.0000 | 0.000 |"
        ),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn draining_slots_get_nothing() {
    netns::enter_new().unwrap();
    let mut pool = SteeredPool::new(vec![1; 8], 2).unwrap();
    pool.set_active(2).unwrap();
    pool.steer(Steering::policy(Policy::RoundRobin)).unwrap();
    let m = pool.measure(&load(200, SourcePorts::Kernel)).unwrap();
    assert_eq!(m.per_slot, [100, 100, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn the_noop_program_runs_once_per_connection_and_chooses_nothing() {
    netns::enter_new().unwrap();
    let _stats = bpf_stats::enable().unwrap();
    let mut pool = SteeredPool::new(vec![1; 4], 1).unwrap();
    // From the group's program to the no-op one and back: each swap replaces the other.
    pool.steer(Steering::policy(Policy::RoundRobin)).unwrap();
    pool.steer(Steering::Noop).unwrap();
    let noop = pool
        .measure(&load(400, SourcePorts::Distinct { first: 20_000 }))
        .unwrap();
    // Its own runs, none of the group's program: the kernel hashed every connection.
    assert_eq!(noop.runs.count, 400);
    assert_eq!(noop.program.runs, 0);
    assert!(noop.per_slot.iter().all(|&c| c > 0), "{:?}", noop.per_slot);
    pool.steer(Steering::policy(Policy::RoundRobin)).unwrap();
    let rr = pool.measure(&load(400, SourcePorts::Kernel)).unwrap();
    assert_eq!(rr.per_slot, vec![100; 4]);
    assert_eq!((rr.runs.count, rr.program.runs), (400, 400));
    pool.steer(Steering::Noop).unwrap();
    pool.steer(Steering::KernelHash).unwrap();
    let none = pool.measure(&load(100, SourcePorts::Kernel)).unwrap();
    assert_eq!((none.runs.count, none.program.runs), (0, 0));
    assert!(pool.steer(Steering::Prefork).is_err());
}
