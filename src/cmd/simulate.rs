//! `kvpr simulate`: one decode step of a plan, simulated on a hardware profile,
//! with both streams' timeline drawn as SVG; with `--trace`, the step a run
//! measured (`kvpr run --trace`) is drawn under the prediction.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plans::{Plan, Trace, TraceOpKind, TraceStep, TraceStream};
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
    /// Context length (tokens already cached) of the simulated step. With
    /// --trace: picks the traced step at this context (default: the trace's
    /// last step); the prediction is made at the traced step's context.
    #[arg(long, required_unless_present = "trace")]
    pub context_len: Option<usize>,
    /// Draw the two streams' timeline to this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// A trace from `kvpr run --trace`: compare the measured step with the
    /// prediction, and draw its copy, compute and writeback lanes under the
    /// predicted ones.
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    super::check_io(
        &[("--svg", args.svg.as_deref())],
        &[
            ("--plan", Some(args.plan.as_path())),
            ("--hardware", Some(args.hardware.as_path())),
            ("--trace", args.trace.as_deref()),
        ],
    )?;
    let plan = Plan::load(&args.plan).context("reading --plan")?;
    let (hw, hw_id) = super::load_profile(&args.hardware)?;
    if hw_id.fingerprint != plan.hardware.fingerprint {
        eprintln!(
            "note: the plan was made for profile {} ({}); simulating it on {} ({})",
            plan.hardware.name, plan.hardware.fingerprint, hw_id.name, hw_id.fingerprint
        );
    }
    let trace = match &args.trace {
        Some(path) => Some(Trace::load(path).context("reading --trace")?),
        None => None,
    };
    let measured = match (&trace, &args.trace) {
        (Some(t), Some(path)) => Some(measured_step(t, path, &plan, args.context_len)?),
        _ => None,
    };
    let context_len = match (measured, args.context_len) {
        (Some(m), _) => m.context,
        (None, Some(c)) => c,
        (None, None) => anyhow::bail!("give --context-len, or --trace to take it from a run"),
    };
    // A bad number inside the plan is named as the file's field, not as a flag.
    let tl = scheduler::simulate(&plan, &hw, context_len).map_err(|e| {
        super::name_field(e, |f| {
            Some(format!("{}: {}", args.plan.display(), f.plan_path()))
        })
    })?;
    let step = plan
        .step_for(context_len)
        .with_context(|| format!("the plan does not cover context {context_len}"))?;
    println!(
        "{} at context {}: resident {}, recompute {}, transfer {}, chunks {}",
        plan.model.name,
        context_len,
        step.resident_tokens,
        step.recompute_tokens,
        step.transfer_at(context_len),
        step.chunks
    );
    let mut rows = vec![
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
    if let Some(m) = measured {
        let busy = |s: TraceStream| {
            let t: f64 = m
                .ops
                .iter()
                .filter(|o| o.stream == s)
                .map(|o| o.end_us - o.start_us)
                .sum();
            format!("{:.0}%", 100.0 * t / m.step_us.max(1e-9))
        };
        rows.push(vec![
            format!("measured (step {})", m.step),
            fmt::us(m.step_us),
            busy(TraceStream::Copy),
            busy(TraceStream::Compute),
        ]);
    }
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
    if let Some(m) = measured {
        println!(
            "measured / predicted = {:.3}",
            m.step_us / tl.predicted_step_us.max(1e-9)
        );
    }
    if let Some(svg) = &args.svg {
        draw(&tl, &plan, context_len, measured, svg).context("writing --svg")?;
        eprintln!("wrote {}", svg.display());
    }
    Ok(())
}

/// The traced step to compare: the one at `--context-len` if given (it must
/// exist), else the last.
fn measured_step<'t>(
    trace: &'t Trace,
    path: &Path,
    plan: &Plan,
    context_len: Option<usize>,
) -> anyhow::Result<&'t TraceStep> {
    if trace.model != plan.model.name || trace.schedule != plan.schedule {
        eprintln!(
            "note: the trace was measured with {} ({}), the plan is for {} ({})",
            trace.model,
            trace.schedule.name(),
            plan.model.name,
            plan.schedule.name()
        );
    }
    let last = trace
        .steps
        .last()
        .with_context(|| format!("--trace {} holds no measured step", path.display()))?;
    let m = match context_len {
        Some(c) => match trace.steps.iter().find(|s| s.context == c) {
            Some(m) => m,
            None => {
                eprintln!(
                    "note: --trace has no step at --context-len {c}; simulating at its last step's context {} instead",
                    last.context
                );
                last
            }
        },
        None => {
            eprintln!(
                "note: simulating at the traced step's context {} (decode step {} of the run)",
                last.context, last.step
            );
            last
        }
    };
    Ok(m)
}

fn trace_color(kind: TraceOpKind) -> RGBColor {
    match kind {
        TraceOpKind::XCopy => color(&OpKind::ActivationCopy { chunk: 0 }),
        TraceOpKind::KvCopy => color(&OpKind::KvCopy),
        TraceOpKind::Recompute => color(&OpKind::Recompute { chunk: 0 }),
        TraceOpKind::Attention => color(&OpKind::Attention),
        TraceOpKind::Dense => color(&OpKind::Dense),
        TraceOpKind::ResidentCopy => RGBColor(204, 121, 167),
        TraceOpKind::Qkv => RGBColor(170, 170, 170),
        TraceOpKind::Writeback => RGBColor(0, 114, 178),
        TraceOpKind::Head => RGBColor(60, 60, 60),
    }
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

/// The lanes from top to bottom: the prediction's copy and compute, then the
/// measured copy, compute and writeback; (label, lane's lower edge).
const LANES: [(&str, f64); 5] = [
    ("predicted copy", 4.0),
    ("predicted compute", 3.0),
    ("measured copy", 2.0),
    ("measured compute", 1.0),
    ("measured writeback", 0.0),
];

/// Renders the timeline to SVG in memory, then writes it atomically.
fn draw(
    tl: &Timeline,
    plan: &Plan,
    context_len: usize,
    measured: Option<&TraceStep>,
    path: &Path,
) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let height = if measured.is_some() { 520 } else { 360 };
        let root = SVGBackend::with_string(&mut svg, (1400, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let m_end = measured.map_or(0.0, |m| {
            m.ops.iter().map(|o| o.end_us).fold(m.step_us, f64::max)
        });
        let end = tl
            .ops
            .iter()
            .map(|o| o.end_us)
            .fold(tl.simulated_step_us, f64::max)
            .max(m_end)
            .max(1e-3);
        let mut title = format!(
            "{} | {} | context {} | simulated {} vs predicted {}",
            plan.model.name,
            plan.schedule.name(),
            context_len,
            fmt::us(tl.simulated_step_us),
            fmt::us(tl.predicted_step_us)
        );
        if let Some(m) = measured {
            title.push_str(&format!(" | measured {}", fmt::us(m.step_us)));
        }
        // Predicted lanes sit at 3..5 over measured ones at 0..3; without a
        // trace, only the predicted two are drawn.
        let (y0, y1) = if measured.is_some() {
            (0.0, 5.8)
        } else {
            (3.0, 5.8)
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..end / 1e3, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("time (ms)")
            .y_labels(((y1 - y0) * 10.0) as usize + 1)
            .y_label_formatter(&|y: &f64| {
                LANES
                    .iter()
                    .find(|(_, lane)| (y - (lane + 0.5)).abs() < 0.04)
                    .map_or(String::new(), |(label, _)| label.to_string())
            })
            .disable_y_mesh()
            .draw()?;
        let bar = |start_us: f64, end_us: f64, lane: f64, c: RGBColor| {
            Rectangle::new(
                [(start_us / 1e3, lane + 0.15), (end_us / 1e3, lane + 0.85)],
                c.filled(),
            )
        };
        chart.draw_series(tl.ops.iter().map(|op| {
            let lane = match op.stream {
                StreamKind::Compute => 3.0,
                StreamKind::Copy => 4.0,
            };
            bar(op.start_us, op.end_us, lane, color(&op.kind))
        }))?;
        if let Some(m) = measured {
            chart.draw_series(m.ops.iter().map(|op| {
                let lane = match op.stream {
                    TraceStream::Copy => 2.0,
                    TraceStream::Compute => 1.0,
                    TraceStream::Writeback => 0.0,
                };
                bar(op.start_us, op.end_us, lane, trace_color(op.kind))
            }))?;
            // A rule between the prediction and the measurement.
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 3.0), (end / 1e3, 3.0)],
                BLACK.stroke_width(1),
            )))?;
        }
        let mut legend = vec![
            (
                "activations (X)",
                color(&OpKind::ActivationCopy { chunk: 0 }),
            ),
            ("K/V", color(&OpKind::KvCopy)),
            ("recompute", color(&OpKind::Recompute { chunk: 0 })),
            ("attention", color(&OpKind::Attention)),
            ("MLP + projections", color(&OpKind::Dense)),
            ("output head", color(&OpKind::Head)),
        ];
        if measured.is_some() {
            legend.extend([
                ("resident prefix", trace_color(TraceOpKind::ResidentCopy)),
                ("norm + Q/K/V", trace_color(TraceOpKind::Qkv)),
                ("writeback", trace_color(TraceOpKind::Writeback)),
                ("head", trace_color(TraceOpKind::Head)),
            ]);
        }
        for (label, c) in legend {
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
