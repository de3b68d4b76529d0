//! How evenly connections were spread: the figures every table of this project prints.

use std::fmt::Write as _;

/// Per-worker connection counts, with the usual fairness measures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Distribution {
    pub counts: Vec<u64>,
}

impl Distribution {
    pub fn new(counts: Vec<u64>) -> Self {
        Self { counts }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn max(&self) -> u64 {
        self.counts.iter().copied().max().unwrap_or(0)
    }

    pub fn min(&self) -> u64 {
        self.counts.iter().copied().min().unwrap_or(0)
    }

    /// max/min; infinite when a worker got nothing while another got some.
    pub fn max_over_min(&self) -> f64 {
        match (self.max(), self.min()) {
            (0, _) => 1.0,
            (max, 0) => f64::INFINITY * max as f64,
            (max, min) => max as f64 / min as f64,
        }
    }

    /// Jain's fairness index (sum x)^2 / (n * sum x^2): 1 is perfectly even, 1/n is one worker
    /// taking everything.
    pub fn jain(&self) -> f64 {
        let n = self.counts.len() as f64;
        let sum: f64 = self.counts.iter().map(|&x| x as f64).sum();
        let squares: f64 = self.counts.iter().map(|&x| (x as f64).powi(2)).sum();
        if squares == 0.0 {
            1.0
        } else {
            sum * sum / (n * squares)
        }
    }

    /// Coefficient of variation: standard deviation over mean.
    pub fn cv(&self) -> f64 {
        let n = self.counts.len() as f64;
        if n == 0.0 {
            return 0.0;
        }
        let mean = self.total() as f64 / n;
        if mean == 0.0 {
            return 0.0;
        }
        let var = self
            .counts
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        var.sqrt() / mean
    }

    /// A one-line summary: `max/min 1.00, Jain 1.0000, CV 0.000`.
    pub fn summary(&self) -> String {
        format!(
            "max/min {:.2}, Jain {:.4}, CV {:.3}",
            self.max_over_min(),
            self.jain(),
            self.cv()
        )
    }
}

/// A Markdown table with one row per labelled distribution: per-worker counts, then the
/// fairness columns. All distributions must have the same number of workers.
pub fn markdown_table(rows: &[(String, Distribution)]) -> String {
    let workers = rows.iter().map(|(_, d)| d.counts.len()).max().unwrap_or(0);
    let mut out = String::from("| policy |");
    for w in 0..workers {
        let _ = write!(out, " w{w} |");
    }
    out.push_str(" total | max/min | Jain | CV |\n|---|");
    for _ in 0..workers + 4 {
        out.push_str("---:|");
    }
    out.push('\n');
    for (label, d) in rows {
        let _ = write!(out, "| {label} |");
        for c in &d.counts {
            let _ = write!(out, " {c} |");
        }
        let _ = writeln!(
            out,
            " {} | {:.2} | {:.4} | {:.3} |",
            d.total(),
            d.max_over_min(),
            d.jain(),
            d.cv()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_counts_are_perfectly_fair() {
        let d = Distribution::new(vec![25, 25, 25, 25]);
        assert_eq!(d.jain(), 1.0);
        assert_eq!(d.max_over_min(), 1.0);
        assert_eq!(d.cv(), 0.0);
    }

    #[test]
    fn one_worker_taking_all_scores_one_over_n() {
        let d = Distribution::new(vec![100, 0, 0, 0]);
        assert!((d.jain() - 0.25).abs() < 1e-12);
        assert!(d.max_over_min().is_infinite());
    }

    #[test]
    fn table_has_a_row_per_policy() {
        let t = markdown_table(&[
            ("hash".into(), Distribution::new(vec![3, 1])),
            ("round-robin".into(), Distribution::new(vec![2, 2])),
        ]);
        assert_eq!(t.lines().count(), 4);
        assert!(
            t.contains("| round-robin | 2 | 2 | 4 | 1.00 | 1.0000 | 0.000 |"),
            "{t}"
        );
    }
}
