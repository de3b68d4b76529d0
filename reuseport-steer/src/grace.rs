//! Grace periods waited for in the background, so a publication rarely waits for one.
//!
//! A copy of the publication ring may be rewritten only once every program run that could
//! have read it is over: an RCU grace period after it stopped being live. Waiting for one
//! takes a system call of ~15 ms (longer under load). A thread waits for them as soon as a copy
//! is retired; a publication waits only when it needs a copy whose grace period has not ended
//! yet (more than `PUBLICATION_COPIES - 1` publications within one grace period).

use std::{
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
};

use crate::sys::GracePeriod;

#[derive(Default)]
struct State {
    /// The last retirement asked to be covered.
    requested: u64,
    /// Every retirement up to this one is covered by a grace period that has ended.
    done: u64,
    /// Why the waiter stopped, if it failed.
    failed: Option<String>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The background waiter of one group.
pub(crate) struct Grace {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Grace {
    pub(crate) fn start() -> io::Result<Self> {
        let period = GracePeriod::new()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("reuseport-grace".into())
            .spawn(move || waiter(&theirs, &period))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for a grace period covering retirement `flip` (and every one before).
    pub(crate) fn retired(&self, flip: u64) {
        let mut state = self.shared.lock();
        state.requested = state.requested.max(flip);
        self.shared.changed.notify_all();
    }

    /// Returns once retirement `flip` is covered (at once, mostly).
    pub(crate) fn wait_past(&self, flip: u64) -> io::Result<()> {
        let mut state = self.shared.lock();
        state.requested = state.requested.max(flip);
        self.shared.changed.notify_all();
        while state.done < flip {
            if let Some(why) = &state.failed {
                return Err(io::Error::other(why.clone()));
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }
}

impl Drop for Grace {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn waiter(shared: &Shared, period: &GracePeriod) {
    let mut state = shared.lock();
    loop {
        if state.stop {
            return;
        }
        if state.requested <= state.done || state.failed.is_some() {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let target = state.requested;
        drop(state);
        let outcome = period.wait();
        state = shared.lock();
        match outcome {
            Ok(()) => state.done = state.done.max(target),
            Err(e) => state.failed = Some(format!("waiting for an RCU grace period: {e}")),
        }
        shared.changed.notify_all();
    }
}
