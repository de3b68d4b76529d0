//! libFuzzer target: every input is a script of client actions on the daemon's control socket
//! (see `reuseport_fuzz::input`), played against the daemon running in this process; a broken
//! invariant panics, which libFuzzer reports as a crash and saves. Run it with
//! `cargo xtask fuzz [SECS]` (as root: the daemon loads BPF programs).

#![no_main]

use std::sync::{Mutex, OnceLock, PoisonError};

use libfuzzer_sys::fuzz_target;
use reuseport_fuzz::Harness;

static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(|| match Harness::start() {
        Ok(harness) => Mutex::new(harness),
        Err(e) => panic!("cannot start the daemon: {e:#}"),
    });
    let mut harness = harness.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = harness.run(data) {
        panic!("invariant broken: {e:#}");
    }
});
