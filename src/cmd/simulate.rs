//! `kvpr simulate`: one decode step of a plan, simulated on a hardware profile,
//! with both streams' timeline drawn as SVG.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plans::Plan;
use plotters::prelude::*;
use scheduler::{OpKind, StreamKind, Timeline};

use crate::fmt;

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Plan file (`kvpr.plan/v1`).
    #[arg(long)]
    pub plan: PathBuf,
    /// Hardware profile to simulate on (need not be the one the plan was made for).
    #[arg(long)]
    pub hardware: PathBuf,
    /// Context length (tokens already cached) of the simulated step.
    #[arg(long)]
    pub context_len: usize,
    /// Draw the two streams' timeline to this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let plan = Plan::load(&args.plan).context("reading --plan")?;
    let (hw, hw_id) = super::load_profile(&args.hardware)?;
    if hw_id.fingerprint != plan.hardware.fingerprint {
        eprintln!(
            "note: the plan was made for profile {} ({}); simulating it on {} ({})",
            plan.hardware.name, plan.hardware.fingerprint, hw_id.name, hw_id.fingerprint
        );
    }
    let tl = scheduler::simulate(&plan, &hw, args.context_len)
        .with_context(|| format!("--context-len {}", args.context_len))?;
    let step = plan
        .step_for(args.context_len)
        .context("the plan does not cover --context-len")?;
    println!(
        "{} at context {}: resident {}, recompute {}, transfer {}, chunks {}",
        plan.model.name,
        args.context_len,
        step.resident_tokens,
        step.recompute_tokens,
        step.transfer_at(args.context_len),
        step.chunks
    );
    let rows = vec![
        vec![
            "simulated".to_string(),
            fmt::us(tl.simulated_step_us),
            format!(
                "{:.0}%",
                100.0 * tl.copy_busy_us / tl.simulated_step_us.max(1e-9)
            ),
            format!(
                "{:.0}%",
                100.0 * tl.compute_busy_us / tl.simulated_step_us.max(1e-9)
            ),
        ],
        vec![
            "predicted (plan)".to_string(),
            fmt::us(tl.predicted_step_us),
            String::new(),
            String::new(),
        ],
    ];
    print!(
        "{}",
        fmt::table(
            &["", "decode step", "copy stream busy", "compute stream busy"],
            &rows
        )
    );
    println!(
        "simulated / predicted = {:.3}",
        tl.simulated_step_us / tl.predicted_step_us.max(1e-9)
    );
    if let Some(svg) = &args.svg {
        draw(&tl, &plan, args.context_len, svg)
            .with_context(|| format!("writing --svg {}", svg.display()))?;
        eprintln!("wrote {}", svg.display());
    }
    Ok(())
}

fn color(kind: &OpKind) -> RGBColor {
    match kind {
        OpKind::ActivationCopy { .. } => RGBColor(230, 159, 0),
        OpKind::KvCopy => RGBColor(86, 180, 233),
        OpKind::Recompute { .. } => RGBColor(213, 94, 0),
        OpKind::Attention => RGBColor(0, 158, 115),
        OpKind::Dense => RGBColor(120, 120, 120),
        OpKind::Head => RGBColor(60, 60, 60),
    }
}

/// Renders the timeline to SVG in memory, then writes it atomically.
fn draw(tl: &Timeline, plan: &Plan, context_len: usize, path: &Path) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1400, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let end = tl
            .ops
            .iter()
            .map(|o| o.end_us)
            .fold(tl.simulated_step_us, f64::max)
            .max(1e-3);
        let title = format!(
            "{} | {} | context {} | simulated {} vs predicted {}",
            plan.model.name,
            plan.schedule.name(),
            context_len,
            fmt::us(tl.simulated_step_us),
            fmt::us(tl.predicted_step_us)
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(90)
            .build_cartesian_2d(0.0..end / 1e3, 0.0..2.8)?;
        chart
            .configure_mesh()
            .x_desc("time (ms)")
            .y_labels(29)
            .y_label_formatter(&|y: &f64| {
                if (y - 0.5).abs() < 0.04 {
                    "compute".into()
                } else if (y - 1.5).abs() < 0.04 {
                    "copy".into()
                } else {
                    String::new()
                }
            })
            .disable_y_mesh()
            .draw()?;
        chart.draw_series(tl.ops.iter().map(|op| {
            let lane = match op.stream {
                StreamKind::Compute => 0.0,
                StreamKind::Copy => 1.0,
            };
            Rectangle::new(
                [
                    (op.start_us / 1e3, lane + 0.15),
                    (op.end_us / 1e3, lane + 0.85),
                ],
                color(&op.kind).filled(),
            )
        }))?;
        let legend = [
            ("activations (X)", OpKind::ActivationCopy { chunk: 0 }),
            ("K/V", OpKind::KvCopy),
            ("recompute", OpKind::Recompute { chunk: 0 }),
            ("attention", OpKind::Attention),
            ("MLP + projections", OpKind::Dense),
            ("output head", OpKind::Head),
        ];
        for (label, kind) in legend {
            let c = color(&kind);
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
                .label(label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    plans::write_atomic(path, svg.as_bytes())?;
    Ok(())
}
