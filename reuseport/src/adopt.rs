//! `reuseport adopt PID`: asks a running daemon to adopt the listeners a running server holds
//! on its groups (each goes into a slot shown with the process that accepts from it, and is
//! followed from then on), and prints the slots filled and what was skipped.

use reuseport_worker::{control_path, ControlClient, Request};

#[derive(clap::Args)]
pub struct AdoptArgs {
    /// The server: its master or any process holding its listeners
    #[arg(value_name = "PID")]
    pid: u32,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    control: crate::Control,
}

pub fn run(args: AdoptArgs) -> anyhow::Result<()> {
    let control = control_path(args.control.control.as_deref());
    let reply = ControlClient::connect(&control)?.request(&Request::Adopt { pid: args.pid })?;
    let slots = reply.adopted.unwrap_or_default();
    let skipped = reply.changes.unwrap_or_default();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "adopted": slots,
                "skipped": skipped,
            }))?
        );
        return Ok(());
    }
    for s in &slots {
        println!("{} slot {}", s.group, s.slot);
    }
    for why in &skipped {
        println!("skipped: {why}");
    }
    Ok(())
}
