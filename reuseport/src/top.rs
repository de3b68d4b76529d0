//! `reuseport top`: a live view of every group over the control socket, refreshed each
//! interval: per worker its state, connections per second, queue, load and share of the last
//! interval as a bar. `q` (or Esc, Ctrl-C) quits; `--once` prints one frame for scripts.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyModifiers},
    execute, terminal,
};

use reuseport_worker::{protocol::WorkerState, GroupStatus};

use crate::cli::fetch_status;

/// Width of the share bar, in cells.
const BAR: usize = 24;

/// One frame: the rates are the difference between two status snapshots `elapsed` apart.
pub fn frame(before: &[GroupStatus], now: &[GroupStatus], elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut out = String::new();
    for g in now {
        let previous = before.iter().find(|p| p.listen == g.listen);
        let deltas: Vec<u64> = g
            .workers
            .iter()
            .map(|w| {
                let was = previous
                    .and_then(|p| {
                        p.workers.iter().find(|x| {
                            x.slot == w.slot && x.pid == w.pid && x.state != WorkerState::Evicted
                        })
                    })
                    .map_or(0, |x| x.selected + x.migrated);
                (w.selected + w.migrated).saturating_sub(was)
            })
            .collect();
        let total: u64 = deltas.iter().sum();
        let _ = writeln!(
            out,
            "group {}  policy {}  {:.0} conn/s  workers {}  stuck events {}  fallbacks {}  drops {}",
            g.listen,
            g.policy,
            total as f64 / secs,
            g.workers.len(),
            g.stuck_events,
            g.fallbacks,
            g.drops
        );
        let _ = writeln!(
            out,
            "  {:>4} {:>7} {:<14} {:<9} {:>9} {:>6} {:>6}  SHARE",
            "SLOT", "PID", "NAME", "STATE", "CONN/S", "QUEUE", "LOAD"
        );
        for (w, &delta) in g.workers.iter().zip(&deltas) {
            let share = if total == 0 {
                0.0
            } else {
                delta as f64 / total as f64
            };
            let cells = (share * BAR as f64).round() as usize;
            let _ = writeln!(
                out,
                "  {:>4} {:>7} {:<14} {:<9} {:>9.0} {:>6} {:>6}  {:<BAR$} {:>5.1}%",
                w.slot,
                w.pid,
                truncate(&reuseport_worker::names::printable(&w.name), 14),
                w.state,
                delta as f64 / secs,
                w.queue,
                w.load,
                "#".repeat(cells.min(BAR)),
                share * 100.0,
            );
        }
        out.push('\n');
    }
    if now.is_empty() {
        out.push_str("(the daemon serves no group)\n");
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Runs the live view until `q`, or prints one frame with `once`.
pub fn run(control: &Path, once: bool, interval: Duration) -> anyhow::Result<()> {
    let mut before = fetch_status(control)?;
    let mut at = Instant::now();
    if once {
        std::thread::sleep(interval);
        let now = fetch_status(control)?;
        print!("{}", frame(&before, &now, at.elapsed()));
        return Ok(());
    }
    let _screen = Screen::enter()?;
    let mut stdout = std::io::stdout();
    loop {
        if quit_requested(interval)? {
            return Ok(());
        }
        let now = fetch_status(control)?;
        let text = frame(&before, &now, at.elapsed());
        at = Instant::now();
        before = now;
        execute!(
            stdout,
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )?;
        // Raw mode: lines need an explicit carriage return.
        write!(stdout, "{}", text.replace('\n', "\r\n"))?;
        write!(stdout, "q quits\r\n")?;
        stdout.flush()?;
    }
}

/// Waits up to `timeout` for a key; true for q, Esc or Ctrl-C.
fn quit_requested(timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !event::poll(left)? {
            return Ok(false);
        }
        if let Event::Key(key) = event::read()? {
            let ctrl_c =
                key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                return Ok(true);
            }
        }
    }
}

/// Raw mode on an alternate screen, restored on drop (also on errors).
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        terminal::enable_raw_mode()?;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(Self)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reuseport_worker::{
        protocol::{AttachMode, OnEmpty, Policy},
        WorkerStatus,
    };
    use std::net::SocketAddr;

    fn group(selected: &[u64]) -> GroupStatus {
        GroupStatus {
            workers: selected
                .iter()
                .enumerate()
                .map(|(i, &s)| WorkerStatus {
                    slot: i as u32,
                    pid: 100 + i as u32,
                    name: format!("w{i}"),
                    state: WorkerState::Active,
                    selected: s,
                    ..WorkerStatus::default()
                })
                .collect(),
            ..GroupStatus::new(
                SocketAddr::from(([127, 0, 0, 1], 8080)),
                Policy::RoundRobin,
                OnEmpty::Pass,
                AttachMode::SelectOrMigrate,
            )
        }
    }

    #[test]
    fn rates_and_shares_come_from_the_difference() {
        let text = frame(
            &[group(&[10, 10])],
            &[group(&[40, 20])],
            Duration::from_secs(1),
        );
        assert!(text.contains("40 conn/s"), "{text}");
        assert!(text.contains(" 75.0%") && text.contains(" 25.0%"), "{text}");
        assert!(text.contains(&"#".repeat(18)), "{text}");
    }
}
