//! SVG plots of the results (plotters, no system fonts needed).
use std::path::Path;

use plotters::prelude::*;

use crate::stats::Series;

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.01, 1000.0);
    }
    // Whole decades, so the log axis reads easily.
    (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    )
}

/// Series `index`'s line through `points`, named `label` in the legend.
fn line<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    index: usize,
    label: String,
    points: impl IntoIterator<Item = (f64, f64)>,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let color = Palette99::pick(index).to_rgba();
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

/// The legend of the lines drawn, at the lower right.
fn legend<'a, DB, X, Y>(chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// CDF of per-call latency of every series, on a log axis.
pub fn latency_cdf(path: &Path, title: &str, series: &[&Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = bounds(series.iter().flat_map(|s| s.sorted_ms()));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("latency per call, ms (log scale)")
        .y_desc("fraction of calls")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let ms = s.sorted_ms();
        let n = ms.len() as f64;
        line(
            &mut chart,
            i,
            format!("{} (n={})", s.label, s.samples.len()),
            ms.iter().enumerate().map(|(k, v)| (*v, (k + 1) as f64 / n)),
        )?;
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// One bar per method: p50 cold start, with a whisker to p99.
pub struct Bar {
    pub label: String,
    pub p50: f64,
    pub p99: f64,
}

pub fn cold_bars(path: &Path, title: &str, bars: &[Bar]) -> anyhow::Result<()> {
    let height = 120 + 48 * bars.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = bounds(bars.iter().flat_map(|b| [b.p50, b.p99]));
    // A decade below the fastest, so its bar is not a sliver.
    let lo = lo / 10.0;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(360)
        .build_cartesian_2d(
            (lo..hi).log_scale(),
            // A segmented 0..n has n + 1 segments; the bars fill 0..=n-1.
            (0..bars.len().saturating_sub(1)).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("time to the first answer, ms (log scale): bar p50, line to p99")
        .draw()?;
    for (i, b) in bars.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (lo, SegmentValue::Exact(i)),
                (b.p50, SegmentValue::Exact(i + 1)),
            ],
            color.mix(0.7).filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (b.p50, SegmentValue::CenterOf(i)),
                (b.p99, SegmentValue::CenterOf(i)),
            ],
            BLACK.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            crate::stats::ms(b.p50),
            (b.p99 * 1.08, SegmentValue::CenterOf(i)),
            ("sans-serif", 14),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// One panel of [`time_series`]: lines of (seconds into the run, value).
pub struct Panel {
    pub y_desc: String,
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// Panels stacked one above the other over the same time axis, each
/// scaled from 0 to a little above its largest value (so a flat line
/// reads flat).
pub fn time_series(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let height = 80 + 280 * panels.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let points = || panels.iter().flat_map(|p| &p.lines).flat_map(|l| &l.1);
    let end = points().map(|(t, _)| *t).fold(1.0, f64::max);
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let top = panel
            .lines
            .iter()
            .flat_map(|l| &l.1)
            .map(|(_, v)| *v)
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..end, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds into the run")
            .y_desc(panel.y_desc.as_str())
            .draw()?;
        for (i, (label, points)) in panel.lines.iter().enumerate() {
            line(&mut chart, i, label.clone(), points.iter().copied())?;
        }
        legend(&mut chart)?;
    }
    root.present()?;
    Ok(())
}
