//! SVG plots (plotters' SVG backend, no fonts needed): per-worker distribution bars per policy,
//! and latency CDFs per policy.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const SIZE: (u32, u32) = (760, 420);

fn color(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    PALETTE[i % PALETTE.len()]
}

/// Grouped bars: for each worker (x), one bar per series (policy) giving its share of the
/// requests in percent. Returns the SVG text.
pub fn worker_bars(title: &str, series: &[(String, Vec<u64>)]) -> Result<String> {
    let workers = series
        .iter()
        .map(|(_, c)| c.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let shares: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, counts)| {
            let total = counts.iter().sum::<u64>().max(1) as f64;
            counts.iter().map(|&c| 100.0 * c as f64 / total).collect()
        })
        .collect();
    // Headroom above the tallest bar for the legend.
    let top = shares
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            // Bars centred on integers, so the axis' round ticks fall under the groups.
            .build_cartesian_2d(-0.5..workers as f64 - 0.5, 0.0..top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(workers.min(16))
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
                    format!("w{}", x.round() as usize)
                } else {
                    String::new()
                }
            })
            .x_desc("worker")
            .y_desc("share of requests (%)")
            .draw()
            .map_err(plot_error)?;
        let n = series.len().max(1) as f64;
        let width = 0.8 / n;
        for (s, ((label, _), values)) in series.iter().zip(&shares).enumerate() {
            let c = color(s);
            chart
                .draw_series(values.iter().enumerate().map(|(w, &v)| {
                    let x0 = w as f64 - 0.4 + s as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], c.filled())
                }))
                .map_err(plot_error)?
                .label(label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Latency CDFs: x is latency in ms on a log scale, y the fraction of requests at most that
/// slow. `series` holds (label, points (ms, fraction)). Returns the SVG text.
pub fn latency_cdf(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<String> {
    let points = || series.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x));
    let lo = points().fold(f64::INFINITY, f64::min);
    let hi = points().fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        ((lo * 0.8).max(0.01), (hi * 1.25).max(lo * 2.0))
    } else {
        (0.01, 1.0)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log scale)")
            .y_desc("fraction of requests")
            .x_label_formatter(&|x| crate::report::num(*x))
            .draw()
            .map_err(plot_error)?;
        for (s, (label, points)) in series.iter().enumerate() {
            let c = color(s);
            // A step function: each fraction holds until the next latency.
            let mut steps = Vec::with_capacity(points.len() * 2);
            let mut last = 0.0;
            for &(x, y) in points {
                steps.push((x.max(lo), last));
                steps.push((x.max(lo), y));
                last = y;
            }
            chart
                .draw_series(LineSeries::new(steps, c.stroke_width(2)))
                .map_err(plot_error)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_cdf_render_to_svg() {
        let bars = worker_bars(
            "spread",
            &[
                ("a".into(), vec![10, 20, 30]),
                ("b".into(), vec![20, 20, 20]),
            ],
        )
        .unwrap();
        assert!(bars.starts_with("<svg") && bars.contains("<rect"), "{bars}");
        // Legend entries are text elements holding the series' labels.
        assert!(
            bars.contains("\na\n</text>") && bars.contains("\nb\n</text>"),
            "{bars}"
        );
        let cdf = latency_cdf(
            "latency",
            &[("a".into(), vec![(0.1, 0.5), (1.0, 0.99), (50.0, 1.0)])],
        )
        .unwrap();
        assert!(cdf.contains("<polyline") || cdf.contains("<path"), "{cdf}");
        assert!(latency_cdf("empty", &[]).unwrap().starts_with("<svg"));
    }
}
