//! Replays the inputs given on the command line (files), printing what each does with
//! `REUSEPORT_FUZZ_TRACE=1`: `cargo run -p reuseport-fuzz --example replay -- FILE...`.

use anyhow::{Context as _, Result};
use reuseport_fuzz::Harness;

fn main() -> Result<()> {
    let mut harness = Harness::start()?;
    for path in std::env::args_os().skip(1) {
        let data = std::fs::read(&path).with_context(|| format!("reading {path:?}"))?;
        eprintln!("== {}", path.to_string_lossy());
        let summary = harness
            .run(&data)
            .with_context(|| format!("input {path:?}"))?;
        eprintln!("   {summary:?}");
    }
    Ok(())
}
