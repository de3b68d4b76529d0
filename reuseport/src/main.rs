//! The `reuseport` command: daemon, CLI and demo worker.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
mod cli;
mod demo;
mod echo;
mod top;

use demo::DemoOptions;
use echo::EchoOptions;
use reuseport::daemon::{self, DaemonConfig, GroupSetup, HealthConfig, OnStuck};
use reuseport_steer::{pin, AttachMode, OnEmpty, Policy};
use reuseport_worker::protocol::GroupRef;

#[derive(Parser)]
#[command(
    name = "reuseport",
    version,
    about = "Steer a SO_REUSEPORT group with eBPF"
)]
struct Args {
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
    /// Run the daemon: steer the groups on the given addresses.
    Run {
        /// Address of a group to steer (repeat for several groups)
        #[arg(long, required = true, value_name = "ADDR:PORT")]
        listen: Vec<SocketAddr>,
        /// Balancing policy [default: the pinned group's, else round-robin]
        #[arg(long, value_enum)]
        policy: Option<Policy>,
        /// Which program: select-or-migrate also moves the queued connections of closing listeners
        #[arg(long, value_enum, default_value_t = AttachMode::SelectOrMigrate)]
        mode: AttachMode,
        /// When no active worker can take a connection: pass (kernel hash) or drop
        #[arg(long, value_enum, default_value_t = OnEmpty::Pass)]
        on_empty: OnEmpty,
        /// Another uid allowed on the control socket (repeatable)
        #[arg(long, value_name = "UID")]
        allow_uid: Vec<u32>,
        /// Where the maps are pinned [default: /sys/fs/bpf/reuseport/netns-<inode>]
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
        /// Keep no state in bpffs (a restarted daemon cannot take over)
        #[arg(long, conflicts_with = "pin_dir")]
        no_pin: bool,
        /// Discard the pinned state of an earlier daemon instead of taking it over
        #[arg(long)]
        fresh: bool,
        /// How often queues are sampled, in milliseconds
        #[arg(long, default_value_t = 5)]
        sample_ms: u64,
        /// A worker with connections waiting that accepts none for this long is stuck
        #[arg(long, default_value_t = 50)]
        stuck_ms: u64,
        /// skip: no new connections while stuck; evict: also shut its listener down so its
        /// queued connections move to healthy workers
        #[arg(long, default_value = "skip")]
        on_stuck: OnStuck,
        /// Serve Prometheus metrics on http://ADDR:PORT/metrics
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<SocketAddr>,
        #[command(flatten)]
        control: Control,
    },
    /// Show groups and workers.
    Status {
        /// Machine-readable output
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
        #[command(flatten)]
        control: Control,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Print the policy of each group.
    Get {
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        #[command(flatten)]
        control: Control,
    },
    /// Switch the policy live (all groups unless --group).
    Set {
        #[arg(value_enum)]
        policy: Policy,
        #[arg(long, value_name = "ADDR:PORT")]
        group: Option<GroupRef>,
        #[command(flatten)]
        control: Control,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match dispatch(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            listen,
            policy,
            mode,
            on_empty,
            allow_uid,
            pin_dir,
            no_pin,
            fresh,
            sample_ms,
            stuck_ms,
            on_stuck,
            metrics,
            control,
        } => {
            let config = DaemonConfig {
                listen,
                setup: GroupSetup {
                    mode,
                    policy,
                    on_empty,
                    pin_root: (!no_pin).then(|| pin_dir.unwrap_or_else(pin::default_root)),
                    fresh,
                },
                control: cli::path(control.control),
                allow_uids: allow_uid,
                health: HealthConfig {
                    sample: Duration::from_millis(sample_ms.max(1)),
                    stuck_after: Duration::from_millis(stuck_ms),
                    on_stuck,
                },
                metrics,
            };
            // The sessions' runtime (the owner of the daemon's state has a thread of its own).
            // Two threads: a session busy with a big reply (`status` of a thousand workers) or
            // a client flooding its connection then holds up no other session. More buy
            // nothing: every state change goes through the one owner anyway.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(daemon::run(config, daemon::termination()))
        }
        Command::Status { json, control } => cli::status(&cli::path(control.control), json),
        Command::Top {
            once,
            interval_ms,
            control,
        } => top::run(
            &cli::path(control.control),
            once,
            Duration::from_millis(interval_ms.max(50)),
        ),
        Command::Policy { action } => match action {
            PolicyAction::Get { group, control } => {
                cli::policy_get(&cli::path(control.control), group)
            }
            PolicyAction::Set {
                policy,
                group,
                control,
            } => cli::policy_set(&cli::path(control.control), policy, group),
        },
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
        Command::Echo {
            listen,
            no_register,
            name,
            weight,
            control,
        } => echo::run(&EchoOptions {
            listen,
            control: control.control,
            register: !no_register,
            name,
            weight,
        }),
    }
}
