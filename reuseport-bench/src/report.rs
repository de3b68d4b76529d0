//! Reports: Markdown for people (stdout and `<scenario>.md`), CSV for tools (`<scenario>.csv`,
//! plus `<scenario>-<name>.csv` for extra tables such as raw rounds).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// A table with a header row; cells are already formatted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// A GitHub-flavoured Markdown table; the first column left-aligned, the others right.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |cells: &[String]| {
            let escaped: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", escaped.join(" | "))
        };
        out.push_str(&line(&self.headers));
        out.push('|');
        for i in 0..self.headers.len() {
            out.push_str(if i == 0 { "---|" } else { "---:|" });
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }

    /// RFC 4180 CSV.
    pub fn csv(&self) -> String {
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
            let _ = writeln!(out, "{}", fields.join(","));
        }
        out
    }
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// One headed part of a report: prose, a table, or both.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub heading: String,
    pub text: String,
    pub table: Option<Table>,
    /// Markdown printed as is after the table (e.g. a table built elsewhere).
    pub extra: String,
}

/// What a scenario produced.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub title: String,
    /// Setup facts: machine, load, parameters.
    pub preamble: Vec<String>,
    pub sections: Vec<Section>,
    /// Written to `<scenario>.csv`.
    pub csv: Table,
    /// Written to `<scenario>-<name>.csv`.
    pub extra_csv: Vec<(String, Table)>,
    /// (name, caption, SVG text): written to `<scenario>-<name>.svg` and shown in the Markdown.
    pub plots: Vec<(String, String, String)>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = format!("## {}\n\n", self.title);
        for line in &self.preamble {
            let _ = writeln!(out, "- {line}");
        }
        for section in &self.sections {
            let _ = write!(out, "\n### {}\n\n", section.heading);
            if !section.text.is_empty() {
                let _ = write!(out, "{}\n\n", section.text.trim_end());
            }
            if let Some(table) = &section.table {
                out.push_str(&table.markdown());
            }
            if !section.extra.is_empty() {
                if section.table.is_some() {
                    out.push('\n');
                }
                out.push_str(&section.extra);
            }
        }
        if !self.plots.is_empty() {
            out.push_str("\n### Plots\n\n");
            for (name, caption, _) in &self.plots {
                let _ = writeln!(out, "![{caption}]({}-{name}.svg)\n", self.scenario);
            }
        }
        out
    }

    /// Writes the Markdown and CSV files into `dir` (created if needed); returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = vec![
            (format!("{}.md", self.scenario), self.markdown()),
            (format!("{}.csv", self.scenario), self.csv.csv()),
        ];
        for (name, table) in &self.extra_csv {
            files.push((format!("{}-{name}.csv", self.scenario), table.csv()));
        }
        for (name, _, svg) in &self.plots {
            files.push((format!("{}-{name}.svg", self.scenario), svg.clone()));
        }
        let mut written = Vec::new();
        for (name, content) in files {
            let path = dir.join(name);
            fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }
}

/// `1234.5` → `"1235"`, `12.345` → `"12.3"`: enough digits to compare, no noise.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() { "-".into() } else { "inf".into() };
    }
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(&["policy", "count"]);
        t.push(vec!["round-robin".into(), "1250".into()]);
        t.push(vec!["a, \"b\"".into(), "1|2".into()]);
        t
    }

    #[test]
    fn markdown_has_header_rule_and_rows() {
        let md = sample().markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| policy | count |");
        assert_eq!(lines[1], "|---|---:|");
        assert_eq!(lines[2], "| round-robin | 1250 |");
        assert_eq!(lines[3], "| a, \"b\" | 1\\|2 |");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(
            sample().csv(),
            "policy,count\nround-robin,1250\n\"a, \"\"b\"\"\",1|2\n"
        );
    }

    #[test]
    fn report_writes_markdown_and_csv_files() {
        let dir =
            std::env::temp_dir().join(format!("reuseport-bench-report-{}", std::process::id()));
        let report = Report {
            scenario: "demo".into(),
            title: "Demo".into(),
            csv: sample(),
            extra_csv: vec![("rounds".into(), sample())],
            plots: vec![("cdf".into(), "Latency".into(), "<svg></svg>".into())],
            ..Report::default()
        };
        let files = report.write(&dir).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["demo.md", "demo.csv", "demo-rounds.csv", "demo-cdf.svg"]
        );
        assert!(report.markdown().contains("![Latency](demo-cdf.svg)"));
        assert_eq!(
            fs::read_to_string(dir.join("demo.csv")).unwrap(),
            sample().csv()
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbers_keep_a_sensible_precision() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(f64::NAN), "-");
    }
}
