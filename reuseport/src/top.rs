//! `reuseport top`: a live view of every group over the control socket, refreshed each
//! interval: per worker its state, connections per second, queue, load and share of the last
//! interval as a bar. `q` (or Esc, Ctrl-C) quits; `--once` prints one frame for scripts
//! (`--json` as JSON). Colors only on a terminal and without `NO_COLOR`; when the output is not
//! a terminal the live view prints plain frames one after the other.

use std::{
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyModifiers},
    execute,
    style::{Color, Stylize as _},
    terminal,
};
use serde::Serialize;

use reuseport_worker::{protocol::WorkerState, GroupStatus};

use crate::cli::fetch_status;

/// Width of the share bar, in cells.
const BAR: usize = 24;

/// What `top` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Refreshed in place until `q`.
    Live,
    /// One frame of text.
    Once,
    /// One frame as JSON.
    OnceJson,
}

/// One group over one interval.
#[derive(Debug, Serialize)]
pub struct GroupRates {
    pub listen: String,
    pub policy: String,
    pub conn_per_s: f64,
    pub stuck_events: u64,
    pub fallbacks: u64,
    pub drops: u64,
    pub workers: Vec<WorkerRates>,
}

/// One worker over one interval.
#[derive(Debug, Serialize)]
pub struct WorkerRates {
    pub slot: u32,
    pub pid: u32,
    pub name: String,
    pub state: String,
    pub conn_per_s: f64,
    /// Connections waiting to be accepted (RECV-Q).
    pub queue: u32,
    pub load: u64,
    /// Share of the group's new connections in the interval, 0 to 1.
    pub share: f64,
}

/// The rates are the difference between two status snapshots `elapsed` apart.
pub fn rates(before: &[GroupStatus], now: &[GroupStatus], elapsed: Duration) -> Vec<GroupRates> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    now.iter()
        .map(|g| {
            let previous = before.iter().find(|p| p.name() == g.name());
            let deltas: Vec<u64> = g
                .workers
                .iter()
                .map(|w| {
                    let was = previous
                        .and_then(|p| {
                            p.workers.iter().find(|x| {
                                x.slot == w.slot
                                    && x.pid == w.pid
                                    && x.state != WorkerState::Evicted
                            })
                        })
                        .map_or(0, |x| x.selected + x.migrated);
                    (w.selected + w.migrated).saturating_sub(was)
                })
                .collect();
            let total: u64 = deltas.iter().sum();
            GroupRates {
                listen: g.name(),
                policy: g.policy.to_string(),
                conn_per_s: total as f64 / secs,
                stuck_events: g.stuck_events,
                fallbacks: g.fallbacks,
                drops: g.drops,
                workers: g
                    .workers
                    .iter()
                    .zip(&deltas)
                    .map(|(w, &delta)| WorkerRates {
                        slot: w.slot,
                        pid: w.pid,
                        name: w.name.clone(),
                        state: w.state.to_string(),
                        conn_per_s: delta as f64 / secs,
                        queue: w.queue,
                        load: w.load,
                        share: if total == 0 {
                            0.0
                        } else {
                            delta as f64 / total as f64
                        },
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The text of a frame; `color` marks the states that need attention.
fn render(groups: &[GroupRates], color: bool) -> String {
    let mut out = String::new();
    for g in groups {
        // A UDP group's program runs per datagram: the rate is datagrams (the JSON keeps the
        // field's name).
        let (unit, head) = if g.listen.starts_with("udp://") {
            ("dgram/s", "DGRAM/S")
        } else {
            ("conn/s", "CONN/S")
        };
        let _ = writeln!(
            out,
            "group {}  policy {}  {:.0} {unit}  workers {}  stuck events {}  fallbacks {}  drops {}",
            g.listen,
            g.policy,
            g.conn_per_s,
            g.workers.len(),
            g.stuck_events,
            g.fallbacks,
            g.drops
        );
        let _ = writeln!(
            out,
            "  {:>4} {:>7} {:<14} {:<9} {:>9} {:>6} {:>6}  SHARE",
            "SLOT", "PID", "NAME", "STATE", head, "RECV-Q", "LOAD"
        );
        for w in &g.workers {
            let cells = (w.share * BAR as f64).round() as usize;
            let state = format!("{:<9}", w.state);
            let state = match state_color(&w.state) {
                Some(c) if color => state.with(c).to_string(),
                _ => state,
            };
            let _ = writeln!(
                out,
                "  {:>4} {:>7} {:<14} {state} {:>9.0} {:>6} {:>6}  {:<BAR$} {:>5.1}%",
                w.slot,
                w.pid,
                truncate(&reuseport_worker::names::printable(&w.name), 14),
                w.conn_per_s,
                w.queue,
                w.load,
                "#".repeat(cells.min(BAR)),
                w.share * 100.0,
            );
        }
        out.push('\n');
    }
    if groups.is_empty() {
        out.push_str("(the daemon serves no group)\n");
    }
    out
}

fn state_color(state: &str) -> Option<Color> {
    match state {
        "active" => Some(Color::Green),
        "draining" => Some(Color::Yellow),
        "stuck" | "evicted" => Some(Color::Red),
        _ => None,
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Colors on stdout: a terminal, and no `NO_COLOR` (https://no-color.org: set and not empty).
fn colors_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the live view until `q`, or prints one frame.
pub fn run(control: &Path, output: Output, interval: Duration) -> anyhow::Result<()> {
    let mut before = fetch_status(control)?;
    let mut at = Instant::now();
    let color = colors_wanted();
    match output {
        Output::Once | Output::OnceJson => {
            std::thread::sleep(interval);
            let now = fetch_status(control)?;
            let groups = rates(&before, &now, at.elapsed());
            if output == Output::OnceJson {
                let frame = serde_json::json!({
                    "interval_s": at.elapsed().as_secs_f64(),
                    "groups": groups,
                });
                println!("{}", serde_json::to_string_pretty(&frame)?);
            } else {
                print!("{}", render(&groups, color));
            }
            return Ok(());
        }
        Output::Live if !std::io::stdout().is_terminal() => loop {
            // Not a terminal (a pipe, a file): frames one after the other, no screen control.
            std::thread::sleep(interval);
            let now = fetch_status(control)?;
            let text = render(&rates(&before, &now, at.elapsed()), false);
            at = Instant::now();
            before = now;
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r?,
            }
        },
        Output::Live => {}
    }
    let _screen = Screen::enter()?;
    let mut stdout = std::io::stdout();
    loop {
        if quit_requested(interval)? {
            return Ok(());
        }
        let now = fetch_status(control)?;
        let text = render(&rates(&before, &now, at.elapsed()), color);
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
        let groups = rates(
            &[group(&[10, 10])],
            &[group(&[40, 20])],
            Duration::from_secs(1),
        );
        let text = render(&groups, false);
        assert!(text.contains("40 conn/s"), "{text}");
        assert!(text.contains(" 75.0%") && text.contains(" 25.0%"), "{text}");
        assert!(text.contains(&"#".repeat(18)), "{text}");
        assert!(
            !text.contains('\x1b'),
            "no escape sequences without color: {text}"
        );
    }

    #[test]
    fn color_marks_the_state_only_when_asked() {
        let mut now = group(&[40]);
        now.workers[0].state = WorkerState::Stuck;
        let groups = rates(&[group(&[10])], &[now], Duration::from_secs(1));
        let colored = render(&groups, true);
        assert!(colored.contains("\x1b["), "{colored}");
        assert!(!render(&groups, false).contains('\x1b'));
    }
}
