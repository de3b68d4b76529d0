//! The configuration file (`reuseport run --config PATH`, by default
//! `/etc/reuseport/reuseport.toml` when it exists): the groups and the daemon's settings, so a
//! service needs no long command line and can be changed by a reload. deploy/reuseport.toml is
//! the commented example.
//!
//! Parsing is in two steps: TOML into the file's own types (toml reports syntax, unknown keys
//! and bad values with their spans), then the checks TOML cannot express (a duplicate group, a
//! weight out of range, what is not built yet), each reported at the span of the offending
//! value. Flags given to `run` override the file ([`Flags::resolve`]), at start and on every
//! reload.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::daemon::{ControlLimits, DaemonConfig, GroupConfig, HealthConfig, OnStuck};
use reuseport_steer::{pin, AttachMode, OnEmpty, Policy, Protocol};

/// A `--listen` value: `ADDR:PORT`, or with the protocol said, `tcp://ADDR:PORT` or
/// `udp://ADDR:PORT` (in the file, `protocol = "udp"` in the `[[group]]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    /// `None`: not said (the file's, TCP by default).
    pub protocol: Option<Protocol>,
    pub addr: SocketAddr,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (protocol, rest) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let protocol = scheme.parse::<Protocol>().map_err(|e| {
                    format!("{e} (write udp://ADDR:PORT, tcp://ADDR:PORT or ADDR:PORT)")
                })?;
                (Some(protocol), rest)
            }
            None => (None, s),
        };
        let addr = rest.parse::<SocketAddr>().map_err(|_| {
            format!(
                "{rest:?} is not an ADDR:PORT (such as 0.0.0.0:8080 or [::]:53; prefix udp:// \
                 for a UDP group)"
            )
        })?;
        Ok(Self { protocol, addr })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Some(p) => write!(f, "{}://{}", p.name(), self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Where `run` looks for a configuration file when given no `--config`.
pub const DEFAULT_PATH: &str = "/etc/reuseport/reuseport.toml";

/// Bounds of a worker weight (those of the `weighted` policy's schedule).
const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=reuseport_common::MAX_WEIGHT;

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    control: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    /// `false`: keep no state in bpffs (`--no-pin`).
    pin: Option<bool>,
    metrics: Option<SocketAddr>,
    #[serde(default)]
    allowed_uids: Vec<u32>,
    #[serde(default)]
    admin_uids: Vec<u32>,
    #[serde(default)]
    health: HealthFile,
    #[serde(default, rename = "group")]
    groups: Vec<GroupFile>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    sample_ms: Option<Spanned<u64>>,
    stuck_ms: Option<u64>,
    on_stuck: Option<OnStuck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    listen: Spanned<SocketAddr>,
    protocol: Option<Spanned<Protocol>>,
    policy: Option<Policy>,
    on_empty: Option<OnEmpty>,
    mode: Option<AttachMode>,
    /// IPv6 groups: IPv6-only instead of dual-stack.
    v6only: Option<Spanned<bool>>,
    /// UDP groups: the flow table's idle time (0: no flow table).
    flow_idle_ms: Option<u64>,
    /// Adopt the listeners running servers hold on the address.
    adopt: Option<Spanned<bool>>,
    #[serde(default)]
    weights: BTreeMap<String, Spanned<u32>>,
}

/// What the file says, checked. `None`: not set in the file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub groups: Vec<GroupConfig>,
    pub control: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub pin: Option<bool>,
    pub metrics: Option<SocketAddr>,
    pub allow_uids: Vec<u32>,
    /// Uids that may change the daemon (policy, weights, drain, reload), besides its own.
    pub admin_uids: Vec<u32>,
    pub sample: Option<Duration>,
    pub stuck_after: Option<Duration>,
    pub on_stuck: Option<OnStuck>,
}

/// One thing wrong in the file, where it is (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A configuration file that cannot be used: every problem found, each with its place.
#[derive(Debug)]
pub struct Invalid {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not a valid configuration ({} problem{}):",
            self.path.display(),
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(
                f,
                "\n  {}:{}:{}: {}",
                self.path.display(),
                p.line,
                p.column,
                p.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Reads and checks the file at `path`. An unreadable file is an I/O error; a bad one is an
/// [`Invalid`] (in the chain, for the exit status).
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "reading the configuration file {}: {e}{}",
            path.display(),
            if e.kind() == std::io::ErrorKind::NotFound {
                " (give an existing file to --config; deploy/reuseport.toml is an example)"
            } else {
                ""
            }
        )
    })?;
    Ok(parse(&text, path)?)
}

/// Checks `text`, the content of `path` (named in the errors).
pub fn parse(text: &str, path: &Path) -> Result<Config, Invalid> {
    let invalid = |problems| Invalid {
        path: path.to_path_buf(),
        problems,
    };
    let file: File = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| place(text, s));
        invalid(vec![Problem {
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }])
    })?;
    let mut problems = Vec::new();
    let mut problem = |span: Range<usize>, message: String| {
        let (line, column) = place(text, span);
        problems.push(Problem {
            line,
            column,
            message,
        });
    };
    if let Some(sample) = &file.health.sample_ms {
        if *sample.get_ref() == 0 {
            problem(sample.span(), "sample_ms must be at least 1".into());
        }
    }
    let mut groups: Vec<GroupConfig> = Vec::new();
    for g in &file.groups {
        let listen = *g.listen.get_ref();
        let protocol = g.protocol.as_ref().map_or(Protocol::Tcp, |p| *p.get_ref());
        if groups
            .iter()
            .any(|seen| seen.listen == listen && seen.protocol == protocol)
        {
            problem(
                g.listen.span(),
                format!(
                    "group {listen} ({}) is listed twice: keep one [[group]] per address and \
                     protocol",
                    protocol.name()
                ),
            );
        }
        if let Some(adopt) = &g.adopt {
            let udp = g
                .protocol
                .as_ref()
                .is_some_and(|p| *p.get_ref() == Protocol::Udp);
            if *adopt.get_ref() && udp {
                problem(
                    adopt.span(),
                    "adopt = true applies to TCP groups (it takes running servers' listeners): \
                     remove the line from this UDP group, and start its servers with \
                     `reuseport spawn` or have them register"
                        .into(),
                );
            }
        }
        if let Some(v6only) = &g.v6only {
            if listen.is_ipv4() && *v6only.get_ref() {
                problem(
                    v6only.span(),
                    format!(
                        "v6only applies to IPv6 groups, {listen} is IPv4: remove the line, or \
                         listen on [::]:{} for an IPv6-only group",
                        listen.port()
                    ),
                );
            }
        }
        let mut weights = BTreeMap::new();
        for (name, weight) in &g.weights {
            if let Err(why) = reuseport_worker::names::check(name) {
                problem(weight.span(), format!("worker name {name:?}: {why}"));
            }
            let w = *weight.get_ref();
            if !WEIGHTS.contains(&w) {
                problem(
                    weight.span(),
                    format!(
                        "weight {w} for {name:?} is out of range: give {}..={}",
                        WEIGHTS.start(),
                        WEIGHTS.end()
                    ),
                );
            }
            weights.insert(name.clone(), w);
        }
        groups.push(GroupConfig {
            listen,
            protocol,
            flow_idle: g.flow_idle_ms.map(Duration::from_millis),
            mode: g.mode.unwrap_or_default(),
            policy: g.policy,
            on_empty: g.on_empty.unwrap_or_default(),
            v6only: listen.is_ipv6() && g.v6only.as_ref().is_some_and(|v| *v.get_ref()),
            weights,
            adopt: g.adopt.as_ref().is_some_and(|a| *a.get_ref()),
        });
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(Config {
        groups,
        control: file.control,
        pin_dir: file.pin_dir,
        pin: file.pin,
        metrics: file.metrics,
        allow_uids: file.allowed_uids,
        admin_uids: file.admin_uids,
        sample: file
            .health
            .sample_ms
            .map(|s| Duration::from_millis(*s.get_ref())),
        stuck_after: file.health.stuck_ms.map(Duration::from_millis),
        on_stuck: file.health.on_stuck,
    })
}

/// The 1-based line and column (in characters) where `span` starts.
fn place(text: &str, span: Range<usize>) -> (usize, usize) {
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, tail)| tail)
        .chars()
        .count()
        + 1;
    (line, column)
}

/// What `run` was given on its command line; each one set overrides the file.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// Replaces the file's groups: a listed address the file has keeps the file's settings,
    /// another gets the defaults (the flags below override both).
    pub listen: Vec<Listen>,
    /// UDP groups: `--flow-idle-ms`.
    pub flow_idle: Option<Duration>,
    pub policy: Option<Policy>,
    pub mode: Option<AttachMode>,
    pub on_empty: Option<OnEmpty>,
    /// `--v6only`: every IPv6 group is IPv6-only (over the file's `v6only`).
    pub v6only: bool,
    /// `--adopt`: every group adopts running servers' listeners (over the file's `adopt`).
    pub adopt: bool,
    pub allow_uids: Vec<u32>,
    pub admin_uids: Vec<u32>,
    /// Bounds on the control connections (flags only).
    pub limits: ControlLimits,
    pub pin_dir: Option<PathBuf>,
    pub no_pin: bool,
    pub fresh: bool,
    pub sample: Option<Duration>,
    pub stuck_after: Option<Duration>,
    pub on_stuck: Option<OnStuck>,
    pub metrics: Option<SocketAddr>,
    pub control: Option<PathBuf>,
}

impl Flags {
    /// The daemon's configuration: these flags over `file` (if any) over the defaults.
    pub fn resolve(&self, file: Option<&Config>) -> DaemonConfig {
        let file = file.cloned().unwrap_or_default();
        // `--listen` chooses the groups; one the file also describes keeps its settings there.
        let mut groups = if self.listen.is_empty() {
            file.groups
        } else {
            self.listen
                .iter()
                .map(|&Listen { protocol, addr }| {
                    let mut group = file
                        .groups
                        .iter()
                        .find(|g| g.listen == addr && protocol.is_none_or(|p| p == g.protocol))
                        .cloned()
                        .unwrap_or_else(|| GroupConfig {
                            listen: addr,
                            protocol: Protocol::Tcp,
                            flow_idle: None,
                            mode: AttachMode::default(),
                            policy: None,
                            on_empty: OnEmpty::default(),
                            v6only: false,
                            weights: BTreeMap::new(),
                            adopt: false,
                        });
                    // `udp://` (or `tcp://`) on the command line says it; a plain address
                    // keeps what the file says, TCP by default.
                    group.protocol = protocol.unwrap_or(group.protocol);
                    group.flow_idle = self.flow_idle.or(group.flow_idle);
                    group
                })
                .collect()
        };
        for g in &mut groups {
            g.mode = self.mode.unwrap_or(g.mode);
            g.policy = self.policy.or(g.policy);
            g.on_empty = self.on_empty.unwrap_or(g.on_empty);
            g.v6only = g.listen.is_ipv6() && (self.v6only || g.v6only);
            g.adopt |= self.adopt && g.protocol == Protocol::Tcp;
        }
        let defaults = HealthConfig::default();
        let pin = !self.no_pin && file.pin.unwrap_or(true);
        let mut allow_uids = file.allow_uids;
        allow_uids.extend(&self.allow_uids);
        let mut admin_uids = file.admin_uids;
        admin_uids.extend(&self.admin_uids);
        DaemonConfig {
            groups,
            pin_root: pin.then(|| {
                self.pin_dir
                    .clone()
                    .or(file.pin_dir)
                    .unwrap_or_else(pin::default_root)
            }),
            fresh: self.fresh,
            control: reuseport_worker::control_path(
                self.control.clone().or(file.control).as_deref(),
            ),
            allow_uids,
            admin_uids,
            limits: self.limits,
            health: HealthConfig {
                sample: self
                    .sample
                    .or(file.sample)
                    .unwrap_or(defaults.sample)
                    .max(Duration::from_millis(1)),
                stuck_after: self
                    .stuck_after
                    .or(file.stuck_after)
                    .unwrap_or(defaults.stuck_after),
                on_stuck: self.on_stuck.or(file.on_stuck).unwrap_or(defaults.on_stuck),
            },
            metrics: self.metrics.or(file.metrics),
        }
    }
}

/// `reuseport config check PATH`: the groups it would serve, or every problem.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let resolved = Flags::default().resolve(Some(&config));
    if resolved.groups.is_empty() {
        println!(
            "{}: valid, but it has no [[group]]: `reuseport run --config` needs --listen then",
            path.display()
        );
        return Ok(());
    }
    println!("{}: valid", path.display());
    for g in &resolved.groups {
        println!(
            "  group {} ({}{}) policy {} mode {} on-empty {}{}{}",
            g.listen,
            g.protocol.name(),
            match (g.listen.is_ipv6(), g.v6only) {
                (false, _) => "",
                (true, false) => ", dual-stack",
                (true, true) => ", IPv6-only",
            },
            g.policy.map_or_else(
                || "round-robin (or the pinned one)".to_owned(),
                |p| p.to_string()
            ),
            g.mode,
            g.on_empty,
            if g.adopt {
                "; adopts running servers"
            } else {
                ""
            },
            if g.weights.is_empty() {
                String::new()
            } else {
                format!(
                    "; weights {}",
                    g.weights
                        .iter()
                        .map(|(n, w)| format!("{n}={w}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<(usize, usize, String)> {
        match parse(text, Path::new("t.toml")) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| (p.line, p.column, p.message))
                .collect(),
        }
    }

    #[test]
    fn a_full_file_parses_into_typed_values() -> Result<(), Invalid> {
        let text = r#"
control = "/run/x/control.sock"
pin_dir = "/sys/fs/bpf/x"
metrics = "127.0.0.1:9100"
allowed_uids = [1000]
admin_uids = [1001]

[health]
sample_ms = 10
stuck_ms = 200
on_stuck = "evict"

[[group]]
listen = "0.0.0.0:8080"
protocol = "tcp"
policy = "weighted"
on_empty = "drop"
mode = "select"
adopt = false
weights = { api-1 = 3, api-2 = 1 }

[[group]]
listen = "[::1]:9090"
"#;
        let c = parse(text, Path::new("t.toml"))?;
        assert_eq!(c.groups.len(), 2);
        let g = &c.groups[0];
        assert_eq!(g.listen, "0.0.0.0:8080".parse().map_err(|_| unreachable())?);
        assert_eq!(
            (g.policy, g.mode, g.on_empty),
            (Some(Policy::Weighted), AttachMode::Select, OnEmpty::Drop)
        );
        assert_eq!(g.weights.get("api-1"), Some(&3));
        assert_eq!(c.groups[1].policy, None);
        assert_eq!(c.on_stuck, Some(OnStuck::Evict));
        assert_eq!(c.sample, Some(Duration::from_millis(10)));
        assert_eq!(
            (c.allow_uids.clone(), c.admin_uids.clone()),
            (vec![1000], vec![1001])
        );
        let d = Flags {
            policy: Some(Policy::Hash),
            stuck_after: Some(Duration::from_millis(70)),
            ..Flags::default()
        }
        .resolve(Some(&c));
        assert_eq!(
            d.groups[1].policy,
            Some(Policy::Hash),
            "a flag overrides the file"
        );
        assert_eq!(d.health.stuck_after, Duration::from_millis(70));
        assert_eq!(d.health.sample, Duration::from_millis(10));
        assert_eq!(d.control, PathBuf::from("/run/x/control.sock"));
        Ok(())
    }

    fn unreachable() -> Invalid {
        Invalid {
            path: PathBuf::new(),
            problems: Vec::new(),
        }
    }

    #[test]
    fn syntax_errors_have_their_place() {
        // An unterminated string: the end of its line.
        let p = problems("[[group]]\nlisten = \"127.0.0.1:80\n");
        assert_eq!((p[0].0, p[0].1), (2, 23), "{p:?}");
        assert!(p[0].2.contains("string"), "{p:?}");
    }

    #[test]
    fn unknown_values_and_keys_are_named_where_they_are() {
        let p = problems("[[group]]\nlisten = \"127.0.0.1:80\"\npolicy = \"fastest\"\n");
        assert_eq!((p[0].0, p[0].1), (3, 10), "{p:?}");
        assert!(
            p[0].2.contains("fastest") && p[0].2.contains("round-robin"),
            "{p:?}"
        );
        let p = problems("[[group]]\nlisten = \"127.0.0.1:80\"\npolicyy = \"hash\"\n");
        assert_eq!((p[0].0, p[0].1), (3, 1), "{p:?}");
        assert!(p[0].2.contains("policyy"), "{p:?}");
        let p = problems("[[group]]\nlisten = \"localhost:80\"\n");
        assert_eq!((p[0].0, p[0].1), (2, 10), "{p:?}");
        let p = problems("[health]\non_stuck = \"panic\"\n");
        assert_eq!(p[0].0, 2, "{p:?}");
    }

    #[test]
    fn semantic_errors_are_all_reported_at_the_value() {
        let text = "[[group]]\nlisten = \"127.0.0.1:80\"\nweights = { a = 0, b = 5000 }\n\
                    \n[[group]]\nlisten = \"127.0.0.1:80\"\n[[group]]\nlisten = \"127.0.0.1:81\"\n\
                    protocol = \"udp\"\nadopt = true\n";
        let p = problems(text);
        let at: Vec<(usize, usize)> = p.iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(at, vec![(3, 17), (3, 24), (6, 10), (10, 9)], "{p:?}");
        assert!(p[0].2.contains("out of range"), "{p:?}");
        assert!(p[2].2.contains("listed twice"), "{p:?}");
        assert!(p[3].2.contains("applies to TCP groups"), "{p:?}");
    }

    #[test]
    fn adopt_is_per_group_and_the_flag_applies_to_every_group() -> Result<(), Invalid> {
        let text = "[[group]]\nlisten = \"127.0.0.1:1\"\nadopt = true\n[[group]]\n\
                    listen = \"127.0.0.1:2\"\n";
        let c = parse(text, Path::new("t.toml"))?;
        let adopt = |d: &DaemonConfig| d.groups.iter().map(|g| g.adopt).collect::<Vec<_>>();
        assert_eq!(adopt(&Flags::default().resolve(Some(&c))), [true, false]);
        let flag = Flags {
            adopt: true,
            ..Flags::default()
        };
        assert_eq!(adopt(&flag.resolve(Some(&c))), [true, true]);
        let p = problems("[[group]]\nlisten = \"127.0.0.1:80\"\nadopt = \"yes\"\n");
        assert_eq!((p[0].0, p[0].1), (3, 9), "{p:?}");
        Ok(())
    }

    #[test]
    fn v6only_is_per_ipv6_group_and_the_flag_applies_to_every_ipv6_group() -> Result<(), Invalid> {
        let p = problems("[[group]]\nlisten = \"127.0.0.1:80\"\nv6only = true\n");
        assert_eq!((p[0].0, p[0].1), (3, 10), "{p:?}");
        assert!(p[0].2.contains("IPv6 groups"), "{p:?}");
        let text =
            "[[group]]\nlisten = \"[::]:1\"\nv6only = true\n[[group]]\nlisten = \"[::]:2\"\n\
                    [[group]]\nlisten = \"127.0.0.1:3\"\n";
        let c = parse(text, Path::new("t.toml"))?;
        let kinds = |d: &DaemonConfig| d.groups.iter().map(|g| g.v6only).collect::<Vec<_>>();
        assert_eq!(
            kinds(&Flags::default().resolve(Some(&c))),
            [true, false, false]
        );
        let flag = Flags {
            v6only: true,
            ..Flags::default()
        };
        assert_eq!(kinds(&flag.resolve(Some(&c))), [true, true, false]);
        Ok(())
    }

    #[test]
    fn udp_groups_by_file_or_by_scheme() -> Result<(), Invalid> {
        let c = parse(
            "[[group]]\nlisten = \"127.0.0.1:53\"\nprotocol = \"udp\"\nflow_idle_ms = 0\n",
            Path::new("t.toml"),
        )?;
        assert_eq!(c.groups[0].protocol, Protocol::Udp);
        assert_eq!(c.groups[0].flow_idle, Some(Duration::ZERO));
        let listen = |s: &str| s.parse::<Listen>();
        assert_eq!(
            listen("udp://[::]:53").map(|l| (l.protocol, l.addr.port())),
            Ok((Some(Protocol::Udp), 53))
        );
        assert_eq!(listen("127.0.0.1:80").map(|l| l.protocol), Ok(None));
        assert!(listen("sctp://127.0.0.1:80").is_err_and(|e| e.contains("udp://")));
        assert!(listen("udp://localhost:53").is_err_and(|e| e.contains("ADDR:PORT")));
        // A plain --listen keeps the file's protocol; udp:// makes a UDP group.
        let d = Flags {
            listen: vec![listen("127.0.0.1:53").map_err(|_| unreachable())?],
            ..Flags::default()
        }
        .resolve(Some(&c));
        assert_eq!(d.groups[0].protocol, Protocol::Udp);
        let d = Flags {
            listen: vec![listen("udp://127.0.0.1:54").map_err(|_| unreachable())?],
            ..Flags::default()
        }
        .resolve(None);
        assert_eq!(d.groups[0].protocol, Protocol::Udp);
        // A TCP and a UDP group may share an address; two UDP groups may not.
        let shared = "[[group]]\nlisten = \"127.0.0.1:53\"\n[[group]]\nlisten = \"127.0.0.1:53\"\n\
                      protocol = \"udp\"\n";
        assert_eq!(parse(shared, Path::new("t.toml"))?.groups.len(), 2);
        let twice = format!("{shared}[[group]]\nlisten = \"127.0.0.1:53\"\nprotocol = \"udp\"\n");
        let p = problems(&twice);
        assert!(
            p.len() == 1 && p[0].2.contains("(udp) is listed twice"),
            "{p:?}"
        );
        Ok(())
    }

    #[test]
    fn an_empty_file_is_valid_and_flags_supply_the_groups() -> Result<(), Invalid> {
        let c = parse("", Path::new("t.toml"))?;
        assert!(c.groups.is_empty());
        let d = Flags {
            listen: vec!["127.0.0.1:1".parse().map_err(|_| unreachable())?],
            ..Flags::default()
        }
        .resolve(Some(&c));
        assert_eq!(d.groups.len(), 1);
        assert_eq!(d.groups[0].policy, None);
        // A --listen address the file describes keeps the file's settings.
        let c = parse(
            "[[group]]\nlisten = \"127.0.0.1:1\"\npolicy = \"p2c\"\n[[group]]\nlisten = \"127.0.0.1:2\"\n",
            Path::new("t.toml"),
        )?;
        let d = Flags {
            listen: vec!["127.0.0.1:1".parse().map_err(|_| unreachable())?],
            ..Flags::default()
        }
        .resolve(Some(&c));
        assert_eq!(d.groups.len(), 1);
        assert_eq!(d.groups[0].policy, Some(Policy::P2c));
        Ok(())
    }
}
