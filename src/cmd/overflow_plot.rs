//! `kvpr overflow --plot DIR`: the time series of the first configuration
//! (throughput and K/V blocks in use, one line per policy) and the overhead
//! against block size, memory fraction and evicted tokens.

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::overflow::Outcome;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The files `--plot DIR` gets.
pub(super) const FILES: [&str; 2] = ["timeseries.svg", "overhead.svg"];

/// Writes `timeseries.svg` and `overhead.svg` into `dir` (created if missing).
pub fn write(dir: &Path, model: &str, outcomes: &[Outcome]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let series = svg((1000, 720), |root| {
        let parts = root.split_evenly((2, 1));
        // The first block size and fraction: one run per policy.
        let Some(first) = outcomes.first() else {
            return Ok(());
        };
        let same: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| {
                o.result.block_size == first.result.block_size && o.fraction == first.fraction
            })
            .collect();
        let lines = |f: &dyn Fn(&serving::Sample) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
            same.iter()
                .map(|o| {
                    let pts = o.result.samples.iter().map(|s| (s.t_s, f(s))).collect();
                    (o.result.policy.clone(), pts)
                })
                .collect()
        };
        let cfg = format!(
            "{model}, block {}, {} blocks",
            first.result.block_size, first.result.capacity_blocks
        );
        chart(
            &parts[0],
            &format!("throughput: {cfg}"),
            "time (s)",
            "tokens/s",
            &lines(&|s| s.tokens_per_s),
            false,
        )?;
        chart(
            &parts[1],
            "K/V blocks in use",
            "time (s)",
            "share of the cache",
            &lines(&|s| s.kv_blocks_used as f64 / s.kv_blocks.max(1) as f64),
            false,
        )?;
        Ok(())
    })?;
    plans::write_atomic(&dir.join(FILES[0]), series.as_bytes())?;
    let overhead = svg((1000, 1000), |root| {
        let parts = root.split_evenly((3, 1));
        let mut names: Vec<String> = outcomes.iter().map(|o| o.result.policy.clone()).collect();
        names.sort();
        names.dedup();
        let by = |x: &dyn Fn(&Outcome) -> Option<f64>, keep: &dyn Fn(&Outcome) -> bool| {
            names
                .iter()
                .map(|n| {
                    let mut pts: Vec<(f64, f64)> = outcomes
                        .iter()
                        .filter(|o| &o.result.policy == n && keep(o))
                        .filter_map(|o| Some((x(o)?, o.overhead() * 100.0)))
                        .collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (n.clone(), pts)
                })
                .collect::<Vec<_>>()
        };
        let first = outcomes.first();
        let f0 = first.and_then(|o| o.fraction);
        let b0 = first.map(|o| o.result.block_size);
        chart(
            &parts[0],
            "overhead against block size",
            "block size (tokens)",
            "preempt + resume (% of total)",
            &by(&|o| Some(o.result.block_size as f64), &|o| o.fraction == f0),
            false,
        )?;
        chart(
            &parts[1],
            "overhead against the K/V share of memory",
            "K/V memory fraction",
            "preempt + resume (% of total)",
            &by(&|o| o.fraction, &|o| Some(o.result.block_size) == b0),
            false,
        )?;
        chart(
            &parts[2],
            "overhead against evicted tokens",
            "evicted tokens",
            "preempt + resume (% of total)",
            &by(&|o| Some(o.result.evicted_tokens as f64), &|_| true),
            true,
        )?;
        Ok(())
    })?;
    plans::write_atomic(&dir.join(FILES[1]), overhead.as_bytes())?;
    Ok(())
}

fn svg(size: (u32, u32), draw: impl FnOnce(&Area) -> anyhow::Result<()>) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(out)
}

/// One panel: a line (or, with `points`, dots) per named series.
fn chart(
    area: &Area,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    points: bool,
) -> anyhow::Result<()> {
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (1e-9f64, 1e-9f64);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max * 1.1)?;
    c.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        if !points {
            c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        } else {
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?
                .label(name.clone())
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
        }
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 2, color.filled())))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
