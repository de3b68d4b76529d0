//! `--doc`: the benchmark document (docs/benchmarks.md) generated from the results of the
//! latest run: a fixed head (what and how), the run's machine and load, every scenario's
//! Markdown in registry order, and its plots copied beside the document.

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

/// The facts of this run, for the document: machine, load before it, command line, time.
pub fn run_info(args: &[String]) -> String {
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "unknown".into());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "- Machine: {}", Machine::current().describe());
    let _ = writeln!(
        out,
        "- Load average (1 / 5 / 15 min) when the run started: {load}"
    );
    let _ = writeln!(out, "- Run started: {date}");
    let _ = writeln!(out, "- Command: `reuseport-bench {}`", args.join(" "));
    out
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
        "- Scenarios: {} (raw CSV files in `bench-results/` after a run)",
        included.join(", ")
    );
    text.push_str("\n## Reading the results\n\n");
    text.push_str(NOTES);
    text.push_str("\n## Results\n");
    text.push_str(&body);
    fs::write(doc, text).with_context(|| format!("writing {}", doc.display()))?;
    written.push(doc.to_owned());
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let doc = base.join("docs/benchmarks.md");
        write(&results, &doc).unwrap();
        let text = fs::read_to_string(&doc).unwrap();
        assert!(text.contains("### Stuck"), "{text}");
        assert!(text.contains("](bench/stuck-cdf.svg)"), "{text}");
        assert!(text.contains("- Machine: test"));
        assert!(text.contains("- Scenarios: stuck"));
        assert!(base.join("docs/bench/stuck-cdf.svg").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
