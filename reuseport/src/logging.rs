//! The daemon's and the CLI's log: `tracing` events (the `log` macros of the libraries are
//! bridged in), written to stderr as human lines or JSON lines.
//!
//! Human lines carry a timestamp, except under journald (`JOURNAL_STREAM` names stderr), which
//! stamps every line itself; colour only on a terminal and without `NO_COLOR`. `RUST_LOG`
//! filters as usual (default `info`). Every event `status` lists (stuck, recovered, evicted,
//! closed) is one line with the same fields (`event`, `group`, `slot`, `pid`, `name`, `why`),
//! target `reuseport::event`.

use std::{io::IsTerminal as _, os::unix::fs::MetadataExt as _};

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for a person.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

/// Installs the subscriber for the process (once; later calls are no-ops).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let builder = builder.with_ansi(color);
            if under_journald() {
                builder.without_time().try_init()
            } else {
                builder.try_init()
            }
        }
    };
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` of the
/// stream it gave the service, which stays true only while stderr is that very stream.
pub fn under_journald() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_is_recognised_only_by_its_stream() {
        // Not under systemd in a test (or JOURNAL_STREAM names another stream).
        if std::env::var_os("JOURNAL_STREAM").is_none() {
            assert!(!under_journald());
        }
    }
}
