//! SVG charts for run reports (plotters' SVG backend: no font files or C libraries needed).

use anyhow::{bail, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// One line of a line chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Axis titles and the chart title.
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

const SIZE: (u32, u32) = (800, 500);

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLORS[i % COLORS.len()]
}

/// `(min, max)` widened by 5% (or by 0.5 when flat) so nothing sits on the frame.
fn padded(values: impl Iterator<Item = f64>) -> Result<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        bail!("nothing to plot: no finite values");
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
    Ok((lo - pad, hi + pad))
}

fn failed<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A white canvas with the title and room for axis labels, over `x` × `y`.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    labels: &Labels,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> Result<Chart<'a, 'b>> {
    root.fill(&WHITE).map_err(failed)?;
    ChartBuilder::on(root)
        .caption(labels.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(failed)
}

/// A line chart of every series (with its points marked), written to `path` as SVG.
pub fn line_chart(path: &Path, labels: &Labels, series: &[Series]) -> Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = padded(all().map(|p| p.0))?;
    let (y0, y1) = padded(all().map(|p| p.1))?;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let draw = || -> Result<()> {
        let mut chart = frame(&root, labels, x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(labels.x)
            .y_desc(labels.y)
            .draw()
            .map_err(failed)?;
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(failed)?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(failed)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(failed)?;
        root.present().map_err(failed)
    };
    draw().with_context(|| format!("cannot draw {}", path.display()))
}

/// The `q`-quantile of sorted values, interpolated linearly (NumPy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// One box per group, in order: the box spans the quartiles, a bar marks the median and the
/// whiskers reach the minimum and maximum. Written to `path` as SVG.
pub fn box_chart(path: &Path, labels: &Labels, groups: &[(String, Vec<f64>)]) -> Result<()> {
    if groups.is_empty() || groups.iter().any(|(_, v)| v.iter().all(|x| !x.is_finite())) {
        bail!("a box chart needs at least one group, and finite values in every group");
    }
    let stats: Vec<[f64; 5]> = groups
        .iter()
        .map(|(_, v)| {
            let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            [0.0, 0.25, 0.5, 0.75, 1.0].map(|q| quantile(&v, q))
        })
        .collect();
    let (y0, y1) = padded(stats.iter().flatten().copied())?;
    let n = groups.len() as f64;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let draw = || -> Result<()> {
        let mut chart = frame(&root, labels, -0.5..n - 0.5, y0..y1)?;
        let name = |x: &f64| {
            let i = x.round();
            match groups.get(i as usize) {
                Some(g) if (x - i).abs() < 1e-9 && i >= 0.0 => g.0.clone(),
                _ => String::new(),
            }
        };
        chart
            .configure_mesh()
            .x_desc(labels.x)
            .y_desc(labels.y)
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&name)
            .disable_x_mesh()
            .draw()
            .map_err(failed)?;
        let style = color(0).stroke_width(2);
        for (i, [min, q1, med, q3, max]) in stats.iter().copied().enumerate() {
            let x = i as f64;
            let (l, r) = (x - 0.2, x + 0.2);
            let lines = [
                vec![(x, min), (x, q1)],
                vec![(x, q3), (x, max)],
                vec![(x - 0.08, min), (x + 0.08, min)],
                vec![(x - 0.08, max), (x + 0.08, max)],
                vec![(l, med), (r, med)],
            ];
            chart
                .draw_series(lines.into_iter().map(|p| PathElement::new(p, style)))
                .map_err(failed)?;
            chart
                .draw_series([Rectangle::new([(l, q1), (r, q3)], style)])
                .map_err(failed)?;
        }
        root.present().map_err(failed)
    };
    draw().with_context(|| format!("cannot draw {}", path.display()))
}
