//! `--doc`: the benchmark document (docs/benchmarks.md) generated from the results of the
//! latest run: a fixed head (what and how), the run's machine and load, every scenario's
//! Markdown in registry order, its plots copied beside the document, and the raw CSV files
//! behind it into `bench-data/` beside it, so every figure can be checked against its data.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{machine::Machine, registry};

const HEAD: &str = include_str!("../doc/head.md");
const NOTES: &str = include_str!("../doc/notes.md");
/// Written into the results directory at the start of a run.
pub const RUN_INFO: &str = "run-info.md";
/// Beside the document: the CSV files of the run it shows.
pub const DATA_DIR: &str = "bench-data";
/// CSV files larger than this (the per-request ones) are stored gzipped in [`DATA_DIR`].
const GZIP_ABOVE: u64 = 128 * 1024;

/// The facts of this run, for the document: machine, load before it, command line, time, and
/// the operator's note about the conditions (e.g. other work on the machine).
pub fn run_info(args: &[String], note: Option<&str>) -> String {
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "unknown".into());
    let date = now();
    let mut out = String::new();
    let _ = writeln!(out, "- Machine: {}", Machine::current().describe());
    let _ = writeln!(
        out,
        "- Load average (1 / 5 / 15 min) when the run started: {load}"
    );
    let _ = writeln!(out, "- Run started: {date}");
    let _ = writeln!(out, "- Command: `reuseport-bench {}`", command_line(args));
    if let Some(note) = note {
        let _ = writeln!(out, "- Conditions (`--note`): {note}");
    }
    out
}

/// The arguments as a shell would take them back (quoted where needed), the note's text
/// left out: it is printed on a line of its own.
fn command_line(args: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut note = false;
    for a in args {
        if note {
            out.push("TEXT".into());
        } else if a.is_empty()
            || a.contains(|c: char| !(c.is_ascii_alphanumeric() || "-_./=,:".contains(c)))
        {
            out.push(format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            out.push(a.clone());
        }
        note = a == "--note";
    }
    out.join(" ")
}

/// The lines appended to the run's facts when it ends: when (so the document tells how long a
/// run takes), and the load then.
pub fn run_end() -> String {
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "- Run ended: {}\n- Load average (1 / 5 / 15 min) when the run ended: {load}\n",
        now()
    )
}

fn now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Copies the CSV files of `scenarios` from `results` into `data` (emptied of CSV files first,
/// so it holds exactly the run shown), gzipping the large ones; returns the files written.
fn copy_data(results: &Path, data: &Path, scenarios: &[&str]) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    for entry in fs::read_dir(data).with_context(|| format!("reading {}", data.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|f| f.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.ends_with(".csv") || n.ends_with(".csv.gz")) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(results).with_context(|| format!("reading {}", results.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let ours = scenarios
            .iter()
            .any(|s| name == format!("{s}.csv") || name.starts_with(&format!("{s}-")));
        if ours && name.ends_with(".csv") {
            names.push(name);
        }
    }
    names.sort();
    let mut written = Vec::new();
    for name in names {
        let from = results.join(&name);
        let size = fs::metadata(&from)?.len();
        if size > GZIP_ABOVE {
            let to = data.join(format!("{name}.gz"));
            let out =
                fs::File::create(&to).with_context(|| format!("creating {}", to.display()))?;
            let status = std::process::Command::new("gzip")
                .args(["-9", "-n", "-c"])
                .arg(&from)
                .stdout(out)
                .status()
                .context("running gzip")?;
            anyhow::ensure!(status.success(), "gzip {} failed: {status}", from.display());
            written.push(to);
        } else {
            let to = data.join(&name);
            fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
            written.push(to);
        }
    }
    Ok(written)
}

/// Writes `doc` from the results in `results`; returns the files written.
pub fn write(results: &Path, doc: &Path) -> Result<Vec<PathBuf>> {
    let doc_dir = doc.parent().unwrap_or(Path::new("."));
    let plots_dir = doc_dir.join("bench");
    fs::create_dir_all(&plots_dir).with_context(|| format!("creating {}", plots_dir.display()))?;
    let mut text = HEAD.to_owned();
    text.push_str("\n## This run\n\n");
    match fs::read_to_string(results.join(RUN_INFO)) {
        Ok(info) => text.push_str(&info),
        Err(_) => text.push_str("- (no run-info.md in the results: run facts unknown)\n"),
    }
    let mut written = Vec::new();
    let mut included = Vec::new();
    let mut body = String::new();
    for scenario in registry() {
        let name = scenario.name();
        let Ok(md) = fs::read_to_string(results.join(format!("{name}.md"))) else {
            continue;
        };
        included.push(name);
        // Scenario headings move one level down under "Results".
        let md = md
            .lines()
            .map(|l| {
                if l.starts_with('#') {
                    format!("#{l}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let md = md.replace(&format!("]({name}-"), &format!("](bench/{name}-"));
        let _ = write!(body, "\n{md}\n");
        for entry in
            fs::read_dir(results).with_context(|| format!("reading {}", results.display()))?
        {
            let path = entry?.path();
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
            if let Some(file) = file {
                if file.starts_with(&format!("{name}-")) && file.ends_with(".svg") {
                    let to = plots_dir.join(&file);
                    fs::copy(&path, &to).with_context(|| format!("copying {}", path.display()))?;
                    written.push(to);
                }
            }
        }
    }
    let _ = writeln!(
        text,
        "- Scenarios: {}; the CSV files behind every figure are in [`{DATA_DIR}/`]({DATA_DIR}/) \
         beside this document (the per-request ones gzipped)",
        included.join(", ")
    );
    written.extend(copy_data(results, &doc_dir.join(DATA_DIR), &included)?);
    let goals = goals(results);
    if !goals.rows.is_empty() {
        text.push_str("\n## Goals\n\nEach goal, what this run measured, and how far it is.\n\n");
        text.push_str(&goals.markdown());
    }
    text.push_str("\n## Headlines\n\n");
    text.push_str(&headlines(results));
    text.push_str("\n## Reading the results\n\n");
    text.push_str(NOTES);
    text.push_str("\n## Results\n");
    text.push_str(&body);
    fs::write(doc, text).with_context(|| format!("writing {}", doc.display()))?;
    written.push(doc.to_owned());
    Ok(written)
}

/// A results CSV as (header, rows); `None` when the scenario did not run.
fn read_csv(path: &Path) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let text = fs::read_to_string(path).ok()?;
    let mut lines = text
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect::<Vec<_>>());
    let header = lines.next()?;
    Some((header, lines.collect()))
}

fn field<'a>(header: &[String], row: &'a [String], name: &str) -> &'a str {
    header
        .iter()
        .position(|h| h == name)
        .and_then(|i| row.get(i))
        .map_or("", String::as_str)
}

fn ms(value: &str) -> String {
    value
        .parse::<f64>()
        .map_or_else(|_| "-".into(), crate::report::num)
}

/// The goals of the tool, from the CSV files of the scenarios that measure them: one row per
/// goal and subject, with the measured value and how far it is from the goal.
fn goals(results: &Path) -> crate::report::Table {
    use crate::scenarios::{cost, latency};
    let mut table = crate::report::Table::new(&["goal", "subject", "measured", "verdict"]);
    let number = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
    if let Some((h, rows)) = read_csv(&results.join("scale.csv")) {
        let at = |policy: &str, slots: &str, column: &str| {
            rows.iter()
                .find(|r| {
                    field(&h, r, "steering") == policy
                        && field(&h, r, "slots") == slots
                        && field(&h, r, "active_slots") == slots
                })
                .map_or(f64::NAN, |r| number(field(&h, r, column)))
        };
        let mut policies: Vec<&str> = Vec::new();
        for r in &rows {
            let p = field(&h, r, "steering");
            if !field(&h, r, "net_ns_per_run_median").is_empty() && !policies.contains(&p) {
                policies.push(p);
            }
        }
        for p in &policies {
            let net = at(p, "1024", "net_ns_per_run_median");
            table.push(vec![
                format!(
                    "net of the no-op program, 1,024 slots: ≤ {:.0} ns/run",
                    cost::NET_GOAL_NS
                ),
                (*p).to_owned(),
                format!("{} ns", crate::report::num(net)),
                cost::against_ceiling(net, cost::NET_GOAL_NS),
            ]);
        }
        for p in &policies {
            let (two, big) = (
                at(p, "2", "ns_per_run_median"),
                at(p, "1024", "ns_per_run_median"),
            );
            let growth = 100.0 * (big / two - 1.0);
            let ceiling = 100.0 * (cost::FLAT_GOAL - 1.0);
            table.push(vec![
                format!("flat from 2 to 1,024 slots: ≤ {ceiling:.0}% growth"),
                (*p).to_owned(),
                format!(
                    "{} → {} ns ({growth:+.0}%)",
                    crate::report::num(two),
                    crate::report::num(big)
                ),
                match growth - ceiling {
                    off if !off.is_finite() => "not measured".into(),
                    off if off <= 0.0 => format!("met ({:.0} points under)", -off),
                    off => format!("missed ({off:.0} points over)"),
                },
            ]);
        }
    }
    if let Some((h, rows)) = read_csv(&results.join("mixed.csv")) {
        let p99 = |label: &str| {
            rows.iter()
                .find(|r| field(&h, r, "steering") == label)
                .map_or(f64::NAN, |r| number(field(&h, r, "fast_p99_ms")))
        };
        let ll = p99("least-loaded");
        for (reference, ceiling) in [
            (
                crate::steering::Steering::Prefork.label(),
                latency::FAST_P99_VS_PREFORK,
            ),
            ("kernel hash".to_owned(), latency::FAST_P99_VS_HASH),
        ] {
            let ratio = ll / p99(&reference);
            table.push(vec![
                format!("mixed, fast-request p99: ≤ {ceiling}× {reference}'s"),
                "least-loaded".into(),
                format!(
                    "{} ms against {} ms: {ratio:.2}×",
                    crate::report::num(ll),
                    crate::report::num(p99(&reference))
                ),
                cost::against_ceiling(ratio, ceiling),
            ]);
        }
    }
    if let Some((h, rows)) = read_csv(&results.join("monitor.csv")) {
        let loaded: Vec<f64> = rows
            .iter()
            .filter(|r| field(&h, r, "sample_ms") == "5" && field(&h, r, "phase") == "under load")
            .map(|r| number(field(&h, r, "core_percent")))
            .collect();
        if let Some(s) = crate::samples::Summary::of(&loaded) {
            table.push(vec![
                format!(
                    "monitor, 64 workers under load, `--sample-ms 5`: ≤ {}% of one core",
                    crate::scenarios::monitor::GOAL_PERCENT
                ),
                "daemon".into(),
                format!(
                    "{:.2}% (median of {} windows, {:.2}–{:.2}%)",
                    s.median, s.n, s.min, s.max
                ),
                cost::against_ceiling(s.median, crate::scenarios::monitor::GOAL_PERCENT),
            ]);
        }
    }
    table
}

/// One line per scenario with the figures that matter, taken from the CSV files.
fn headlines(results: &Path) -> String {
    let mut out = String::new();
    for (name, what) in [
        ("stuck", "Stuck worker (1 of 4 stopped), p50 / p99 / max"),
        (
            "mixed",
            "Mixed workload (10% of requests 50x slower), p50 / p99 / max",
        ),
    ] {
        if let Some((h, rows)) = read_csv(&results.join(format!("{name}.csv"))) {
            let parts: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {} / **{}** / {} ms",
                        field(&h, r, "steering"),
                        ms(field(&h, r, "p50_ms")),
                        ms(field(&h, r, "p99_ms")),
                        ms(field(&h, r, "max_ms"))
                    )
                })
                .collect();
            let _ = writeln!(out, "- **{what}**: {}.", parts.join("; "));
        }
    }
    if let Some((h, rows)) = read_csv(&results.join("mixed.csv")) {
        let p99 = |label: &str| {
            rows.iter()
                .find(|r| field(&h, r, "steering") == label)
                .and_then(|r| field(&h, r, "fast_p99_ms").parse::<f64>().ok())
        };
        let parts: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} **{}**",
                    field(&h, r, "steering"),
                    ms(field(&h, r, "fast_p99_ms"))
                )
            })
            .collect();
        let mut line = format!(
            "- **Mixed workload, the fast requests' p99** (ms): {}",
            parts.join("; ")
        );
        if let (Some(ll), Some(prefork), Some(hash)) = (
            p99("least-loaded"),
            p99(&crate::steering::Steering::Prefork.label()),
            p99("kernel hash"),
        ) {
            let _ = write!(
                line,
                ". least-loaded against prefork: {:.2}× (goal ≤ 1.2×: {}); against the kernel \
                 hash: {:.2}× (goal ≤ 0.5×: {})",
                ll / prefork,
                crate::scenarios::cost::against_ceiling(ll / prefork, 1.2),
                ll / hash,
                crate::scenarios::cost::against_ceiling(ll / hash, 0.5),
            );
        }
        let _ = writeln!(out, "{line}.");
    }
    if let Some((h, rows)) = read_csv(&results.join("throughput.csv")) {
        let mut modes: Vec<&str> = Vec::new();
        for r in &rows {
            let m = field(&h, r, "connections");
            if !modes.contains(&m) {
                modes.push(m);
            }
        }
        for mode in modes {
            let parts: Vec<String> = rows
                .iter()
                .filter(|r| field(&h, r, "connections") == mode)
                .map(|r| {
                    format!(
                        "{} {} ({} µs)",
                        field(&h, r, "steering"),
                        ms(field(&h, r, "requests_per_s_median")),
                        ms(field(&h, r, "machine_us_per_request_median"))
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "- **Throughput, {mode}** (requests/s, and machine CPU per request): {}.",
                parts.join("; ")
            );
        }
    }
    if let Some((h, rows)) = read_csv(&results.join("monitor.csv")) {
        let mut periods: Vec<&str> = Vec::new();
        for r in &rows {
            let p = field(&h, r, "sample_ms");
            if !periods.contains(&p) {
                periods.push(p);
            }
        }
        let median = |period: &str, phase: &str| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| field(&h, r, "phase") == phase && field(&h, r, "sample_ms") == period)
                .filter_map(|r| field(&h, r, "core_percent").parse().ok())
                .collect();
            crate::samples::Summary::of(&v).map_or("-".into(), |s| format!("{:.2}%", s.median))
        };
        let parts: Vec<String> = periods
            .iter()
            .map(|p| {
                format!(
                    "`--sample-ms {p}`: {} of one core idle, {} under load",
                    median(p, "idle"),
                    median(p, "under load")
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- **Monitoring 64 workers** (daemon CPU): {}.",
            parts.join("; ")
        );
    }
    if let Some((h, rows)) = read_csv(&results.join("overhead.csv")) {
        let parts: Vec<String> = rows
            .iter()
            .filter(|r| !field(&h, r, "steering").starts_with("none"))
            .map(|r| {
                let ratio: f64 = field(&h, r, "rate_ratio_median")
                    .parse()
                    .unwrap_or(f64::NAN);
                format!(
                    "{} {:.2} ({} ns)",
                    field(&h, r, "steering"),
                    ratio,
                    ms(field(&h, r, "ns_per_run_median"))
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- **Overhead** (4 slots), connection rate as a ratio of the no-program rate, and \
             program run time per connection: {}.",
            parts.join("; ")
        );
    }
    if let Some((h, rows)) = read_csv(&results.join("scale.csv")) {
        let mut by_policy: Vec<(String, Vec<String>)> = Vec::new();
        let mut sizes: Vec<String> = Vec::new();
        for r in rows
            .iter()
            .filter(|r| !field(&h, r, "steering").starts_with("none"))
        {
            let (slots, active) = (field(&h, r, "slots"), field(&h, r, "active_slots"));
            let size = if slots == active {
                slots.to_owned()
            } else {
                format!("{slots} ({active} active)")
            };
            if !sizes.contains(&size) {
                sizes.push(size);
            }
            let policy = field(&h, r, "steering").to_owned();
            let cost = ms(field(&h, r, "ns_per_run_median"));
            match by_policy.iter_mut().find(|(p, _)| *p == policy) {
                Some((_, v)) => v.push(cost),
                None => by_policy.push((policy, vec![cost])),
            }
        }
        let parts: Vec<String> = by_policy
            .iter()
            .map(|(p, v)| format!("{p} {}", v.join(" / ")))
            .collect();
        let _ = writeln!(
            out,
            "- **Scale**, program ns per connection with {} slots: {}.",
            sizes.join(" / "),
            parts.join("; ")
        );
        let net: Vec<String> = rows
            .iter()
            .filter(|r| field(&h, r, "slots") == "1024" && field(&h, r, "active_slots") == "1024")
            .filter(|r| !field(&h, r, "net_ns_per_run_median").is_empty())
            .map(|r| {
                let v: f64 = field(&h, r, "net_ns_per_run_median")
                    .parse()
                    .unwrap_or(f64::NAN);
                format!(
                    "{} {} ({})",
                    field(&h, r, "steering"),
                    crate::report::num(v),
                    crate::scenarios::cost::against_ceiling(v, crate::scenarios::cost::NET_GOAL_NS)
                )
            })
            .collect();
        if !net.is_empty() {
            let _ = writeln!(
                out,
                "- **Net of the no-op program at 1,024 slots** (ns per run; goal ≤ {:.0}): {}.",
                crate::scenarios::cost::NET_GOAL_NS,
                net.join("; ")
            );
        }
    }
    if let Some((h, rows)) = read_csv(&results.join("churn.csv")) {
        let mut totals: Vec<(String, u64, u64)> = Vec::new();
        for r in &rows {
            let steering = field(&h, r, "steering").to_owned();
            let requests: u64 = field(&h, r, "requests").parse().unwrap_or(0);
            let failed: u64 = field(&h, r, "failed").parse().unwrap_or(0);
            match totals.iter_mut().find(|t| t.0 == steering) {
                Some(t) => {
                    t.1 += requests;
                    t.2 += failed;
                }
                None => totals.push((steering, requests, failed)),
            }
        }
        let parts: Vec<String> = totals
            .iter()
            .map(|(s, n, f)| format!("{s} {f} failed of {n}"))
            .collect();
        let _ = writeln!(
            out,
            "- **Churn** (every worker replaced under load; with the daemon, policy swapped every \
             10 ms): {}.",
            parts.join("; ")
        );
    }
    if let Some((h, rows)) = read_csv(&results.join("fairness-summary.csv")) {
        let parts: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} max/min {} Jain {}",
                    field(&h, r, "steering"),
                    field(&h, r, "max/min"),
                    field(&h, r, "Jain")
                )
            })
            .collect();
        let _ = writeln!(out, "- **Fairness** (8 listeners): {}.", parts.join("; "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_quoted_and_the_note_left_out() {
        let args: Vec<String> = ["--out", "a b", "--note", "busy machine", "it's"]
            .map(String::from)
            .to_vec();
        assert_eq!(command_line(&args), "--out 'a b' --note TEXT 'it'\\''s'");
        let info = run_info(&args, Some("busy machine"));
        assert!(
            info.contains("- Conditions (`--note`): busy machine\n"),
            "{info}"
        );
    }

    #[test]
    fn stitches_results_and_moves_plots() {
        let base = std::env::temp_dir().join(format!("reuseport-bench-doc-{}", std::process::id()));
        let results = base.join("results");
        fs::create_dir_all(&results).unwrap();
        fs::write(
            results.join("stuck.md"),
            "## Stuck\n\n![cdf](stuck-cdf.svg)\n",
        )
        .unwrap();
        fs::write(results.join("stuck-cdf.svg"), "<svg/>").unwrap();
        fs::write(results.join(RUN_INFO), "- Machine: test\n").unwrap();
        fs::write(
            results.join("stuck.csv"),
            "steering,requests,failed,p50_ms,p90_ms,p99_ms,p999_ms,max_ms\nkernel hash,10,0,2.5,3,480.2,500,501\n",
        )
        .unwrap();
        fs::write(
            results.join("monitor.csv"),
            "sample_ms,phase,wall_s,cpu_s,core_percent,requests\n5,idle,1,0.01,1.0,0\n5,idle,1,0.02,2.0,0\n5,under load,1,0.03,3.0,9\n",
        )
        .unwrap();
        fs::write(results.join("stuck-requests.csv"), "x\n".repeat(100_000)).unwrap();
        fs::write(results.join("other.csv"), "not ours\n").unwrap();
        let data = base.join("docs").join(DATA_DIR);
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("stale.csv"), "from an older run\n").unwrap();
        let doc = base.join("docs/benchmarks.md");
        write(&results, &doc).unwrap();
        // The data beside the document: exactly the included scenarios' CSV files, the large
        // ones gzipped, nothing stale.
        let mut files: Vec<String> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["stuck-requests.csv.gz", "stuck.csv"]);
        assert_eq!(
            fs::read_to_string(data.join("stuck.csv")).unwrap(),
            fs::read_to_string(results.join("stuck.csv")).unwrap()
        );
        let text = fs::read_to_string(&doc).unwrap();
        assert!(text.contains("### Stuck"), "{text}");
        assert!(text.contains("](bench/stuck-cdf.svg)"), "{text}");
        assert!(text.contains("- Machine: test"));
        assert!(text.contains("- Scenarios: stuck"));
        assert!(
            text.contains("kernel hash 2.50 / **480** / 501 ms"),
            "{text}"
        );
        assert!(
            text.contains("1.50% of one core idle, 3.00% under load"),
            "{text}"
        );
        assert!(
            text.contains(
                "| daemon | 3.00% (median of 1 windows, 3.00–3.00%) | missed (500% over) |"
            ),
            "{text}"
        );
        assert!(base.join("docs/bench/stuck-cdf.svg").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
