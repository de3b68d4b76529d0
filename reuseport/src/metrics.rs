//! The metrics of the daemon's state (`reuseport run --metrics ADDR:PORT`), built from the
//! same status every other view uses, with the prometheus-client crate, in the two formats a
//! scraper may ask for: the Prometheus text format 0.0.4 (what `promtool check metrics` lints,
//! and what curl gets) and OpenMetrics 1.0 (what Prometheus asks for first).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{prometheus_text, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
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

/// One exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics when it ranks
    /// `application/openmetrics-text` at least as high as any text type it accepts, else the
    /// Prometheus text format (also without a header: curl, a browser).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// What runs: the `reuseport_build_info` labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// The tags the kernel gave the steering programs this process has loaded (as `bpftool
    /// prog` shows them), comma-separated; empty before any is loaded.
    pub program_tag: String,
    /// The fingerprint of the embedded eBPF object, as `reuseport --version` prints it.
    pub object: String,
}

impl BuildInfo {
    /// This process's: the program tags are read from the kernel's description of the
    /// process's own program descriptors (`/proc/self/fdinfo`), because the steering library
    /// keeps its programs to itself.
    pub fn of_this_process() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|r| r.trim().to_owned())
                .unwrap_or_default(),
            program_tag: loaded_program_tags().join(","),
            object: reuseport_steer::object_fingerprint(),
        }
    }
}

/// `BPF_PROG_TYPE_SK_REUSEPORT` in `prog_type:` of a program descriptor's fdinfo.
const SK_REUSEPORT_PROG_TYPE: &str = "21";

/// The distinct tags of the SK_REUSEPORT programs this process holds a descriptor of, sorted.
fn loaded_program_tags() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    let mut tags: Vec<String> = entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| {
            info.lines().any(|l| {
                l.split_once(':').map(|(k, v)| (k, v.trim()))
                    == Some(("prog_type", SK_REUSEPORT_PROG_TYPE))
            })
        })
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_tag:"))
                .map(|t| t.trim().to_owned())
        })
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Renders the metrics of every group, and the build information, in `format`.
pub fn render(groups: &[GroupStatus], format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("reuseport");
    let build = BuildInfo::of_this_process();
    gauge_family(
        &mut registry,
        "build_info",
        "Always 1: the version, kernel release, loaded program tags and eBPF object fingerprint",
    )
    .get_or_create(&labels(&[
        ("version", &build.version),
        ("kernel", &build.kernel),
        ("program_tag", &build.program_tag),
        ("object", &build.object),
    ]))
    .set(1);
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
    let run_time = Family::<Labels, Counter<f64, AtomicU64>>::default();
    registry.register_with_unit(
        "program_run_time",
        "Time spent in the program (counted while kernel.bpf_stats_enabled is on)",
        Unit::Seconds,
        run_time.clone(),
    );
    let policy = gauge_family(&mut registry, "policy", "1 for the group's current policy");

    for g in groups {
        let listen = g.name();
        let group = labels(&[("group", &listen)]);
        stuck.get_or_create(&group).inc_by(g.stuck_events);
        fallbacks.get_or_create(&group).inc_by(g.fallbacks);
        drops.get_or_create(&group).inc_by(g.drops);
        runs.get_or_create(&group).inc_by(g.program_runs);
        run_time
            .get_or_create(&group)
            .inc_by(g.program_run_ns as f64 / 1e9);
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
    match format {
        Format::Prometheus => prometheus_text::encode(&mut out, &registry)?,
        Format::OpenMetrics => text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reuseport_worker::{
        protocol::{AttachMode, OnEmpty, Policy, WorkerState},
        WorkerStatus,
    };

    fn one_group() -> Vec<GroupStatus> {
        vec![GroupStatus {
            fallbacks: 2,
            program_run_ns: 1_500_000_000,
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
        }]
    }

    #[test]
    fn renders_counters_with_their_labels() -> Result<(), std::fmt::Error> {
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = render(&one_group(), format)?;
            assert!(text.contains(
                "reuseport_connections_selected_total{group=\"127.0.0.1:8080\",slot=\"3\",pid=\"42\",name=\"w\"} 17"
            ), "{text}");
            assert!(text.contains("reuseport_fallbacks_total{group=\"127.0.0.1:8080\"} 2"));
            assert!(text.contains(
                "reuseport_queue_depth{group=\"127.0.0.1:8080\",slot=\"3\",pid=\"42\",name=\"w\"} 5"
            ));
            assert!(text.contains("state=\"active\"} 1"));
            assert!(
                text.contains(
                    "reuseport_program_run_time_seconds_total{group=\"127.0.0.1:8080\"} 1.5"
                ),
                "{text}"
            );
            assert!(text.contains(&format!(
                "reuseport_build_info{{version=\"{}\",",
                env!("CARGO_PKG_VERSION")
            )));
        }
        Ok(())
    }

    /// Only OpenMetrics ends with `# EOF` and names counter families without `_total`; the
    /// 0.0.4 text names them with it in HELP and TYPE, as promtool wants.
    #[test]
    fn each_format_has_its_own_framing() -> Result<(), std::fmt::Error> {
        let open = render(&one_group(), Format::OpenMetrics)?;
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE reuseport_drops counter\n"), "{open}");
        assert!(open.contains("# UNIT reuseport_program_run_time_seconds seconds\n"));
        let text = render(&one_group(), Format::Prometheus)?;
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE reuseport_drops_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP reuseport_drops_total "), "{text}");
        Ok(())
    }

    #[test]
    fn accept_picks_the_format() {
        let prometheus_2 = "application/openmetrics-text;version=1.0.0;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(Some(prometheus_2)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0,text/plain")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9,application/openmetrics-text;q=0.1")),
            Format::Prometheus
        );
    }
}
