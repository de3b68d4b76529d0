//! Waiting for something another thread or process does: polled, with a deadline, and an error
//! that says what did not happen.

use std::{
    fmt, thread,
    time::{Duration, Instant},
};

/// How often a condition is checked.
pub const POLL: Duration = Duration::from_millis(5);

/// Checks `done` every [`POLL`] until it holds; fails with `what` after `limit`.
pub fn until(
    limit: Duration,
    what: impl fmt::Display,
    done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    until_every(POLL, limit, what, done)
}

/// [`until`], checking every `poll`: finer for a wait that is itself measured.
pub fn until_every(
    poll: Duration,
    limit: Duration,
    what: impl fmt::Display,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within {limit:?}");
        }
        thread::sleep(poll);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_did_not_happen() {
        let mut calls = 0;
        assert!(until(Duration::from_millis(50), "ready", || {
            calls += 1;
            calls == 3
        })
        .is_ok());
        let e = until(Duration::from_millis(20), "the worker registered", || false);
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("the worker registered: not within"),
            "{msg}"
        );
    }
}
