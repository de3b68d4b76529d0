//! The Prometheus text exposition of the daemon's state (`reuseport run --metrics ADDR:PORT`),
//! built from the same status every other view uses, with the prometheus-client crate.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use reuseport_worker::GroupStatus;

type Labels = Vec<(String, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Renders the metrics of every group in the text format.
pub fn render(groups: &[GroupStatus]) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("reuseport");
    let selected = counter_family(
        &mut registry,
        "connections_selected",
        "New connections the program sent to a worker's slot",
    );
    let migrated = counter_family(
        &mut registry,
        "connections_migrated",
        "Queued connections moved to a worker's slot from a closing listener",
    );
    let queue = gauge_family(
        &mut registry,
        "queue_depth",
        "Connections waiting in a worker's accept queue at the last sample",
    );
    let load = gauge_family(
        &mut registry,
        "load",
        "Load the least-loaded and p2c policies see for a worker",
    );
    let inflight = gauge_family(
        &mut registry,
        "inflight_requests",
        "Requests in flight, as last reported by the worker",
    );
    let state = gauge_family(
        &mut registry,
        "worker_state",
        "1 for the state a worker is in (active, draining, stuck, evicted)",
    );
    let weight = gauge_family(&mut registry, "worker_weight", "A worker's weight");
    let stuck = counter_family(
        &mut registry,
        "stuck_events",
        "Times a worker of the group was found stuck",
    );
    let fallbacks = counter_family(
        &mut registry,
        "fallbacks",
        "Connections handed to the kernel's hash because no active slot could take them",
    );
    let drops = counter_family(
        &mut registry,
        "drops",
        "Connections refused because no active slot could take them (on-empty drop)",
    );
    let errors = counter_family(
        &mut registry,
        "select_errors",
        "Failed socket selections in the program, by errno",
    );
    let runs = counter_family(
        &mut registry,
        "program_runs",
        "Program runs (counted while kernel.bpf_stats_enabled is on)",
    );
    let run_time = counter_family(
        &mut registry,
        "program_run_time_nanoseconds",
        "Time spent in the program (counted while kernel.bpf_stats_enabled is on)",
    );
    let policy = gauge_family(&mut registry, "policy", "1 for the group's current policy");

    for g in groups {
        let listen = g.listen.to_string();
        let group = labels(&[("group", &listen)]);
        stuck.get_or_create(&group).inc_by(g.stuck_events);
        fallbacks.get_or_create(&group).inc_by(g.fallbacks);
        drops.get_or_create(&group).inc_by(g.drops);
        runs.get_or_create(&group).inc_by(g.program_runs);
        run_time.get_or_create(&group).inc_by(g.program_run_ns);
        policy
            .get_or_create(&labels(&[("group", &listen), ("policy", g.policy.name())]))
            .set(1);
        for (errno, &count) in &g.select_errors {
            errors
                .get_or_create(&labels(&[("group", &listen), ("errno", errno)]))
                .inc_by(count);
        }
        for w in &g.workers {
            let slot = w.slot.to_string();
            let pid = w.pid.to_string();
            let worker = labels(&[
                ("group", &listen),
                ("slot", &slot),
                ("pid", &pid),
                ("name", &w.name),
            ]);
            selected.get_or_create(&worker).inc_by(w.selected);
            migrated.get_or_create(&worker).inc_by(w.migrated);
            queue.get_or_create(&worker).set(i64::from(w.queue));
            load.get_or_create(&worker)
                .set(i64::try_from(w.load).unwrap_or(i64::MAX));
            inflight.get_or_create(&worker).set(i64::from(w.inflight));
            weight.get_or_create(&worker).set(i64::from(w.weight));
            let mut with_state = worker.clone();
            with_state.push(("state".into(), w.state.name().into()));
            state.get_or_create(&with_state).set(1);
        }
    }
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reuseport_worker::{
        protocol::{AttachMode, OnEmpty, Policy, WorkerState},
        WorkerStatus,
    };

    #[test]
    fn renders_counters_with_their_labels() -> Result<(), std::fmt::Error> {
        let text = render(&[GroupStatus {
            fallbacks: 2,
            workers: vec![WorkerStatus {
                slot: 3,
                pid: 42,
                name: "w".into(),
                state: WorkerState::Active,
                selected: 17,
                queue: 5,
                ..WorkerStatus::default()
            }],
            ..GroupStatus::new(
                std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
                Policy::RoundRobin,
                OnEmpty::Pass,
                AttachMode::SelectOrMigrate,
            )
        }])?;
        assert!(text.contains(
            "reuseport_connections_selected_total{group=\"127.0.0.1:8080\",slot=\"3\",pid=\"42\",name=\"w\"} 17"
        ), "{text}");
        assert!(text.contains("reuseport_fallbacks_total{group=\"127.0.0.1:8080\"} 2"));
        assert!(text.contains(
            "reuseport_queue_depth{group=\"127.0.0.1:8080\",slot=\"3\",pid=\"42\",name=\"w\"} 5"
        ));
        assert!(text.contains("state=\"active\"} 1"));
        assert!(text.ends_with("# EOF\n"));
        Ok(())
    }
}
