//! The `reuseport` command: daemon, CLI and demo worker.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
mod adopt;
mod cli;
mod demo;
mod echo;
mod echo_service;
mod exit;
mod logging;
mod man;
mod spawn;
mod top;

use config::Flags;
use daemon::{ControlLimits, Deadlines, OnStuck, Source};
use demo::DemoOptions;
use echo::EchoOptions;
use exit::{Exit, UsageError};
// The daemon and its configuration are the library (the fuzz harness runs the daemon too).
use reuseport::{config, daemon};
use reuseport_steer::{AttachMode, OnEmpty, Policy};
use reuseport_worker::protocol::GroupRef;

#[derive(Parser)]
#[command(name = "reuseport", about = "Steer a SO_REUSEPORT group with eBPF")]
struct Args {
    /// Log lines as text (a timestamp unless journald stamps them) or JSON
    #[arg(
        long,
        value_enum,
        default_value_t,
        global = true,
        env = "REUSEPORT_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The control socket option every client command takes.
#[derive(clap::Args, Clone)]
struct Control {
    /// Control socket of the daemon [default: /run/reuseport/control.sock]
    #[arg(long, env = "REUSEPORT_CONTROL", global = true)]
    control: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: steer the groups of the configuration file, or on the given addresses.
    Run {
        /// Configuration file [default: /etc/reuseport/reuseport.toml when it exists]; the
        /// flags below override it
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Address of a group to steer (repeat for several groups; udp://ADDR:PORT for a UDP
        /// group); replaces the file's groups
        #[arg(long, value_name = "[udp://]ADDR:PORT")]
        listen: Vec<config::Listen>,
        /// UDP groups: how long a flow with no datagram keeps its worker (the flow table that
        /// lets a draining worker keep its flows); 0 turns the flow table off [default: 30000]
        #[arg(long, value_name = "MS")]
        flow_idle_ms: Option<u64>,
        /// Balancing policy [default: the pinned group's, else round-robin]
        #[arg(long, value_enum)]
        policy: Option<Policy>,
        /// Which program: select-or-migrate also moves the queued connections of closing
        /// listeners [default: select-or-migrate]
        #[arg(long, value_enum)]
        mode: Option<AttachMode>,
        /// When no active worker can take a connection: pass (kernel hash) or drop [default:
        /// pass]
        #[arg(long, value_enum)]
        on_empty: Option<OnEmpty>,
        /// Make the IPv6 groups IPv6-only (workers set IPV6_V6ONLY=1); without it an IPv6
        /// group such as [::]:PORT is dual-stack and serves IPv4 clients too
        #[arg(long)]
        v6only: bool,
        /// Adopt the SO_REUSEPORT listeners running servers hold on the groups' addresses (of
        /// the daemon's uid and --allow-uid uids), and follow them: new ones are adopted, a
        /// socket no server holds any more is released
        #[arg(long)]
        adopt: bool,
        /// Another uid allowed on the control socket: it may register workers, act on their
        /// slots and read the status (repeatable)
        #[arg(long, value_name = "UID")]
        allow_uid: Vec<u32>,
        /// A uid that may also set the policy and act on every slot, as the daemon's uid does
        /// (repeatable; allowed on the control socket too)
        #[arg(long, value_name = "UID")]
        admin_uid: Vec<u32>,
        /// Control connections served at once; more get `too_many_connections`
        #[arg(long, value_name = "N", default_value_t = ControlLimits::MAX_CONNECTIONS,
              value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
        max_connections: u32,
        /// How long the rest of a request line may take once part of it arrived, in ms
        #[arg(long, value_name = "MS", default_value_t = ControlLimits::LINE_MS,
              value_parser = clap::value_parser!(u64).range(1..=ControlLimits::MAX_MS))]
        control_line_ms: u64,
        /// How long a control connection holding no worker may wait between requests, in ms
        #[arg(long, value_name = "MS", default_value_t = ControlLimits::IDLE_MS,
              value_parser = clap::value_parser!(u64).range(1..=ControlLimits::MAX_MS))]
        control_idle_ms: u64,
        /// Where the maps are pinned [default: /sys/fs/bpf/reuseport/netns-<inode>]
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
        /// Keep no state in bpffs (a restarted daemon cannot take over)
        #[arg(long, conflicts_with = "pin_dir")]
        no_pin: bool,
        /// Discard the pinned state of an earlier daemon instead of taking it over
        #[arg(long)]
        fresh: bool,
        /// How often queues are sampled, in milliseconds [default: 5]
        #[arg(long)]
        sample_ms: Option<u64>,
        /// A worker with connections waiting that accepts none for this long is stuck
        /// [default: 50]
        #[arg(long)]
        stuck_ms: Option<u64>,
        /// evict: shut a stuck worker's listener down so its queued connections move to
        /// healthy workers, and take it back when it runs again; skip: only send it no new
        /// connections while stuck [default: evict]
        #[arg(long)]
        on_stuck: Option<OnStuck>,
        /// Serve Prometheus metrics on http://ADDR:PORT/metrics
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<SocketAddr>,
        #[command(flatten)]
        control: Control,
    },
    /// Make the daemon re-read its configuration file and apply what changed (as SIGHUP does).
    Reload {
        #[command(flatten)]
        control: Control,
    },
    /// Check a configuration file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Show groups and workers (RECV-Q: connections waiting to be accepted, as in `ss -l`).
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: Control,
    },
    /// Stream every decision of the steering program: time, kind, slot, first choice, policy,
    /// outcome, flow hash, load (docs/experiments.md).
    Trace {
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        /// Stop after N decisions
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: Control,
    },
    /// Show or change the balancing policy.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Set a worker's weight for the weighted policy.
    Weight {
        slot: u32,
        weight: u32,
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        #[command(flatten)]
        control: Control,
    },
    /// Stop sending new connections to a worker; it keeps serving what it has.
    Drain {
        slot: u32,
        /// Also shut its listener down: its queued connections move to the other workers now
        #[arg(long)]
        close: bool,
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        #[command(flatten)]
        control: Control,
    },
    /// Send new connections to a drained worker again.
    Undrain {
        slot: u32,
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        #[command(flatten)]
        control: Control,
    },
    /// Live view of the groups: per worker state, connections/s, queue, load and share.
    Top {
        /// Print one frame (rates over --interval) and exit
        #[arg(long)]
        once: bool,
        /// With --once: print the frame as JSON
        #[arg(long, requires = "once")]
        json: bool,
        /// Refresh interval in milliseconds
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[command(flatten)]
        control: Control,
    },
    /// Show the whole story: kernel hash, then round-robin and weighted, in a private namespace.
    Demo {
        /// New connections per policy
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Adopt the listeners a running server holds on the daemon's groups (its master's pid, or
    /// any of its processes').
    Adopt(adopt::AdoptArgs),
    /// Run an unmodified server on listeners of the group, registered on its behalf: systemd
    /// socket activation (gunicorn, uvicorn --fd {fd}) or NGINX (nginx).
    Spawn(spawn::SpawnArgs),
    /// A single-threaded HTTP echo worker that joins the group.
    Echo {
        #[arg(long, value_name = "ADDR:PORT")]
        listen: SocketAddr,
        /// Serve without registering with the daemon
        #[arg(long)]
        no_register: bool,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
        /// IPv6: an IPv6-only socket (IPV6_V6ONLY=1), for a daemon run with --v6only [default:
        /// the group's kind as the daemon reports it, else dual-stack]
        #[arg(long)]
        v6only: bool,
        /// IPv6: a dual-stack socket (IPV6_V6ONLY=0) whatever the daemon reports
        #[arg(long, conflicts_with = "v6only")]
        dual_stack: bool,
        /// A UDP socket, for a UDP group: every datagram is answered with pid=<PID>
        #[arg(long)]
        udp: bool,

        /// Serve the listening socket inherited as descriptor FD, shared with other workers
        /// (one accept queue for all: the prefork model the benchmark compares with), instead of
        /// binding one
        #[arg(long, value_name = "FD", requires = "no_register")]
        shared_fd: Option<i32>,

        /// This worker's own service time, added to every request: fixed:MS, uniform:MIN:MAX,
        /// exp:MEAN or bimodal:FAST:SLOW:FRACTION (bench scenario files)
        #[arg(long, value_name = "SPEC", hide = true)]
        service_ms: Option<echo_service::ServiceTime>,
        #[command(flatten)]
        control: Control,
    },
    /// Print a completion script for SHELL (e.g. `reuseport completions bash >
    /// /etc/bash_completion.d/reuseport`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (reuseport.1 and one per command) into DIR; `cargo xtask man` runs
    /// this.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate PATH: every problem with its line and column (exit status 2), or the groups it
    /// describes.
    Check {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Print the policy of each group.
    Get {
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: Control,
    },
    /// Install a policy program (an eBPF object built from policies/template) live; `policy
    /// set` goes back to a built-in policy.
    Load {
        /// The object, e.g. target/policies/sticky_source.o
        path: PathBuf,
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        #[command(flatten)]
        control: Control,
    },
    /// Switch the policy live (all groups unless --group); removes a policy program.
    Set {
        #[arg(value_enum)]
        policy: Policy,
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        #[command(flatten)]
        control: Control,
    },
}

/// The version line: the crate's version and which eBPF program the binary carries.
fn version() -> String {
    format!(
        "{} (eBPF object {}, FNV-1a 64)",
        env!("CARGO_PKG_VERSION"),
        reuseport_steer::object_fingerprint()
    )
}

/// The command line definition, complete: version and the exit status table.
fn cli_definition() -> clap::Command {
    Args::command().version(version()).after_help(Exit::help())
}

/// `command` without its hidden subcommands (`man`), which completions would offer: clap
/// cannot remove a subcommand, so this is a copy with the visible ones only.
fn visible(command: &clap::Command) -> clap::Command {
    let mut copy = clap::Command::new(command.get_name().to_owned())
        .args(command.get_arguments().cloned())
        .subcommand_required(true)
        .subcommands(
            command
                .get_subcommands()
                .filter(|c| !c.is_hide_set())
                .cloned(),
        );
    if let Some(about) = command.get_about() {
        copy = copy.about(about.clone());
    }
    if let Some(version) = command.get_version() {
        copy = copy.version(version.to_owned());
    }
    copy
}

fn main() -> ExitCode {
    // A usage error exits with clap's status 2 (Exit::Usage), --help and --version with 0.
    let args = Args::from_arg_matches(&cli_definition().get_matches()).unwrap_or_else(|e| e.exit());
    logging::init(args.log_format);
    match dispatch(args.command) {
        Ok(()) => Exit::Success.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::of(&e).into()
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            listen,
            flow_idle_ms,
            policy,
            mode,
            on_empty,
            v6only,
            adopt,
            allow_uid,
            admin_uid,
            max_connections,
            control_line_ms,
            control_idle_ms,
            pin_dir,
            no_pin,
            fresh,
            sample_ms,
            stuck_ms,
            on_stuck,
            metrics,
            control,
        } => {
            let flags = Flags {
                listen,
                flow_idle: flow_idle_ms.map(Duration::from_millis),
                policy,
                mode,
                on_empty,
                v6only,
                adopt,
                allow_uids: allow_uid,
                admin_uids: admin_uid,
                limits: ControlLimits {
                    max_connections: max_connections as usize,
                    deadlines: Deadlines {
                        line: Duration::from_millis(control_line_ms),
                        idle: Duration::from_millis(control_idle_ms),
                    },
                },
                pin_dir,
                no_pin,
                fresh,
                sample: sample_ms.map(Duration::from_millis),
                stuck_after: stuck_ms.map(Duration::from_millis),
                on_stuck,
                metrics,
                control: control.control,
            };
            let file = config.or_else(|| {
                let default = PathBuf::from(config::DEFAULT_PATH);
                default.exists().then_some(default)
            });
            let loaded = file.as_deref().map(config::load).transpose()?;
            let resolved = flags.resolve(loaded.as_ref());
            if resolved.groups.is_empty() {
                return Err(anyhow::Error::new(UsageError(format!(
                    "nothing to serve: give --listen ADDR:PORT or --config PATH with a \
                     [[group]]{}",
                    file.map_or_else(String::new, |f| format!(" ({} has none)", f.display()))
                ))));
            }
            // The sessions' runtime (the owner of the daemon's state has a thread of its own).
            // Two threads: a session busy with a big reply (`status` of a thousand workers) or
            // a client flooding its connection then holds up no other session. More buy
            // nothing: every state change goes through the one owner anyway.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(daemon::run(
                    resolved,
                    Source { file, flags },
                    daemon::termination(),
                ))
        }
        Command::Reload { control } => cli::reload(&cli::path(control.control)),
        Command::Config {
            action: ConfigAction::Check { path },
        } => config::check(&path),
        Command::Status { json, control } => cli::status(&cli::path(control.control), json),
        Command::Top {
            once,
            json,
            interval_ms,
            control,
        } => top::run(
            &cli::path(control.control),
            match (once, json) {
                (false, _) => top::Output::Live,
                (true, false) => top::Output::Once,
                (true, true) => top::Output::OnceJson,
            },
            Duration::from_millis(interval_ms.max(50)),
        ),
        Command::Policy { action } => match action {
            PolicyAction::Get {
                group,
                json,
                control,
            } => cli::policy_get(&cli::path(control.control), group, json),
            PolicyAction::Set {
                policy,
                group,
                control,
            } => cli::policy_set(&cli::path(control.control), policy, group),
            PolicyAction::Load {
                path,
                group,
                control,
            } => cli::policy_load::run(&cli::path(control.control), &path, group),
        },
        Command::Trace {
            group,
            count,
            json,
            control,
        } => cli::trace::run(&cli::path(control.control), group, count, json),
        Command::Weight {
            slot,
            weight,
            group,
            control,
        } => cli::weight(&cli::path(control.control), slot, weight, group),
        Command::Drain {
            slot,
            close,
            group,
            control,
        } => cli::drain(&cli::path(control.control), slot, group, Some(close)),
        Command::Undrain {
            slot,
            group,
            control,
        } => cli::drain(&cli::path(control.control), slot, group, None),
        Command::Demo { connections, port } => demo::run(&DemoOptions {
            connections,
            port,
            ..DemoOptions::default()
        }),
        Command::Adopt(args) => adopt::run(args),
        Command::Spawn(args) => spawn::run(args),
        Command::Echo {
            listen,
            no_register,
            name,
            weight,
            v6only,
            dual_stack,
            udp,

            shared_fd,

            service_ms,
            control,
        } => echo::run(&EchoOptions {
            listen,
            control: control.control,
            register: !no_register,
            name,
            weight,
            v6only: (v6only || dual_stack).then_some(v6only),
            udp,

            shared_fd,

            service: service_ms,
        }),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut visible(&cli_definition()),
                "reuseport",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { out } => man::write_all(cli_definition(), &out),
    }
}
