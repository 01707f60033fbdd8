//! `kvpr bench`: decode steps measured per schedule and context, each beside
//! its prediction, the configuration's I/O floor and the `transfer` baseline
//! from the same run; a table per configuration, CSV/JSON, and a plot of step
//! time against context length.
//!
//! A step at context `C` is timed without running a `C`-token prefill: the
//! executor is told the first `C` positions are cached
//! ([`runtime::Executor::assume_prefilled`]), which changes no byte moved and
//! no FLOP, only the values. Weights are the model's own (a preset's are
//! seeded random numbers).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plans::{Plan, Schedule, Split, StoreLayout, Workload};
use plotters::prelude::*;
use runtime::{Executor, Model, ModelSource};
use scheduler::{ForcedSplit, PlanRequest, ScheduleChoice, Solver};

use crate::fmt;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model: a .gguf file, a Hugging Face directory, or `preset:NAME` (seeded random weights).
    #[arg(long)]
    pub model: String,
    /// Hardware profile (from `kvpr calibrate`) the plans and the floors use.
    #[arg(long)]
    pub hardware: PathBuf,
    #[arg(long, default_value_t = 1, value_parser = super::num::count::<1, { plans::MAX_BATCH }>)]
    pub batch: usize,
    /// Context lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4096,8192,16384", value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub context_len: Vec<usize>,
    /// Schedules, comma-separated: transfer, paper, chunked, recompute-all.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "transfer,paper,chunked,recompute-all"
    )]
    pub schedules: Vec<String>,
    /// Timed decode steps per configuration.
    #[arg(long, default_value_t = 8, value_parser = super::num::count::<1, { super::num::MAX_STEPS }>)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2, value_parser = super::num::count::<0, { super::num::MAX_STEPS }>)]
    pub warmup: usize,
    #[command(flatten)]
    pub dev: super::DeviceFlags,
    /// Split granularity in tokens.
    #[arg(long, default_value_t = 16, value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub block_tokens: usize,
    /// Write every row as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write every row as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw step time against context length (SVG), one line per schedule.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One schedule at one context.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub model: String,
    pub dtype: String,
    pub batch: usize,
    pub context: usize,
    pub schedule: String,
    pub measured_ms: f64,
    pub predicted_ms: f64,
    /// The configuration's I/O floor: the fewest bytes any split must move
    /// over the profile's link bandwidth.
    pub floor_ms: f64,
    /// `transfer`'s measured step over this one's (same run).
    pub speedup_vs_transfer: Option<f64>,
    /// The link time of the bytes this step moved over its measured time.
    pub link_util: f64,
    pub bytes_per_step: u64,
}

const CSV_HEADER: &str =
    "model,dtype,batch,context,schedule,measured_ms,predicted_ms,floor_ms,speedup_vs_transfer,link_util";

fn request(name: &str, block_tokens: usize) -> anyhow::Result<PlanRequest> {
    let (schedule, forced) = match name {
        "recompute-all" => (
            Schedule::Chunked,
            Some(ForcedSplit {
                recompute_fraction: 1.0,
                resident_tokens: Some(0),
                chunks: Some(4),
            }),
        ),
        s => (
            s.parse::<Schedule>()
                .map_err(|e| anyhow::anyhow!("--schedules: {e} or recompute-all"))?,
            None,
        ),
    };
    Ok(PlanRequest {
        schedule: ScheduleChoice::Fixed(schedule),
        block_tokens,
        solver: Solver::Lp,
        forced,
    })
}

/// The flags of `kvpr bench` a planning error is about: the workload's
/// batch, context and block size; what bench sets itself (the generation,
/// the budgets, the schedule) is named as it is.
fn bench_flag(f: plans::Field) -> Option<String> {
    use plans::Field;
    let flag = match f {
        Field::Batch => "--batch",
        Field::PromptLen => "--context-len",
        Field::BlockTokens => "--block-tokens",
        Field::Dtype => "--dtype",
        Field::Schedule => "--schedules",
        Field::GenLen | Field::GpuMemoryBudget | Field::HostMemoryBudget => return None,
    };
    Some(flag.to_string())
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    super::check_io(
        &[
            ("--csv", args.csv.as_deref()),
            ("--json", args.json.as_deref()),
            ("--plot", args.plot.as_deref()),
        ],
        &[
            ("--model", Some(Path::new(&args.model))),
            ("--hardware", Some(args.hardware.as_path())),
        ],
    )?;
    if args.batch == 0 || args.steps == 0 || args.context_len.is_empty() {
        bail!("--batch, --steps and --context-len need at least 1");
    }
    if let Some(&c) = args.context_len.iter().find(|&&c| c == 0) {
        bail!("--context-len: {c} is not a context length");
    }
    let requests: Vec<(String, PlanRequest)> = args
        .schedules
        .iter()
        .map(|s| Ok((s.clone(), request(s, args.block_tokens)?)))
        .collect::<anyhow::Result<_>>()?;
    let be = args.dev.backend()?;
    let (hw, hw_id) = super::load_profile(&args.hardware)?;
    let source = ModelSource::parse(&args.model).context("reading --model")?;
    eprintln!("loading {} on {}...", args.model, be.name());
    let model = super::load_model(&source, &be)?;
    let mut spec = model.spec().clone();
    // A benchmark times the decode step's shape, which is defined at any
    // context (RoPE has no table to run off); past the trained window the
    // tokens would mean little, but the step costs what it costs. Say so.
    let longest = args.context_len.iter().max().copied().unwrap_or(0) + args.warmup + args.steps;
    if longest >= spec.max_context {
        eprintln!(
            "note: contexts up to {longest} exceed {}'s trained context of {} tokens; \
             timing the decode step's shape only",
            spec.name, spec.max_context
        );
        spec.max_context = longest + 1;
    }
    // Before any planning: every schedule keeps the K/V of the longest
    // context on the host at least (`transfer` moves all of it).
    let kv_floor = plans::bytes_of(&[
        longest,
        args.batch,
        2 * spec.kv_dim(),
        spec.n_layers,
        be.dtype().bytes(),
    ]);
    runtime::check_memory(
        &format!(
            "--context-len {} with --batch {}: the host K/V store",
            longest - args.warmup - args.steps,
            args.batch
        ),
        kv_floor,
        "bench shorter contexts or a smaller batch",
    )?;
    let bar = fmt::progress_bar((args.context_len.len() * requests.len()) as u64);
    let mut rows: Vec<Row> = Vec::new();
    let mut tables = String::new();
    for &c in &args.context_len {
        let n = args.warmup + args.steps;
        let mut workload = Workload {
            batch: args.batch,
            prompt_len: c,
            gen_len: n + 1,
            dtype: be.dtype(),
            gpu_memory_budget: 0,
            host_memory_budget: u64::MAX / 4,
        };
        // Device memory: the staging buffers only, as `kvpr run` plans by default.
        workload.gpu_memory_budget = scheduler::staging_bytes(&spec, &workload);
        let mut plans = Vec::with_capacity(requests.len());
        for (name, req) in &requests {
            let plan = scheduler::make_plan(&spec, &hw, hw_id.clone(), &workload, req)
                .map_err(|e| super::name_field(e, bench_flag))
                .with_context(|| format!("planning {name} at context {c}"))?;
            plans.push(plan);
        }
        // One executor per context, its host store laid out for every
        // schedule's reads: allocated (and, on CUDA, pinned) once, not per schedule.
        let layout = plans
            .iter()
            .map(|p| StoreLayout::for_contexts(p, c, c + n))
            .reduce(|a, b| a.union(&b))
            .context("no schedule")?;
        let mut ex = Executor::new(&be, &model, layout, args.batch, c + n + 1)
            .with_context(|| format!("allocating for context {c}"))?;
        ex.assume_prefilled(c)?;
        let mut config: Vec<Row> = Vec::new();
        for ((name, _), plan) in requests.iter().zip(&plans) {
            bar.set_message(format!("context {c}, {name}"));
            let row = measure(&mut ex, &model, &be, plan, name, c, args, &hw)
                .with_context(|| format!("running {name} at context {c}"))?;
            config.push(row);
            bar.inc(1);
        }
        drop(ex);
        let base = config
            .iter()
            .find(|r| r.schedule == "transfer")
            .map(|r| r.measured_ms);
        for r in &mut config {
            r.speedup_vs_transfer = base.map(|b| b / r.measured_ms.max(1e-9));
        }
        tables.push_str(&table(&config, &spec.name, &be.name()));
        rows.extend(config);
    }
    bar.finish_and_clear();
    print!("{tables}");
    if let Some(p) = &args.csv {
        plans::write_atomic(p, csv(&rows).as_bytes())
            .with_context(|| format!("writing --csv {}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let json = serde_json::json!({
            "schema": "kvpr.bench/v1",
            "device": be.name(),
            "hardware": hw.name,
            "kvpr_version": env!("CARGO_PKG_VERSION"),
            "rows": rows,
        });
        let text = serde_json::to_string_pretty(&json)? + "\n";
        plans::write_atomic(p, text.as_bytes())
            .with_context(|| format!("writing --json {}", p.display()))?;
    }
    if let Some(p) = &args.plot {
        plot(
            &rows,
            &format!("{} | {} | batch {}", spec.name, be.name(), args.batch),
            p,
        )?;
    }
    Ok(())
}

/// Times `args.steps` decode steps of `plan` from context `c` on `ex`
/// (whose first `c` positions are taken as cached).
#[allow(clippy::too_many_arguments)]
fn measure(
    ex: &mut Executor,
    model: &Model,
    be: &kernels::Backend,
    plan: &Plan,
    name: &str,
    c: usize,
    args: &BenchArgs,
    hw: &plans::HardwareProfile,
) -> anyhow::Result<Row> {
    let n = args.warmup + args.steps;
    ex.set_ids(&vec![1; args.batch])?;
    let (mut us, mut pred, mut bytes) = (0.0, 0.0, 0u64);
    for i in 0..n {
        let s = c + i;
        let sp =
            Split::at(plan, s).with_context(|| format!("the plan has no step for context {s}"))?;
        ex.step(sp)?;
        ex.choose(None)?;
        let st = ex.finish_step()?.context("a step was issued")?;
        if i >= args.warmup {
            us += st.measured_us;
            pred += plan.predicted_step_us(s).unwrap_or(f64::NAN);
            bytes += st.bytes_x + st.bytes_kv;
        }
    }
    let k = args.steps as f64;
    let (measured_ms, bytes) = (us / k / 1e3, bytes / args.steps as u64);
    // At the rate the run's link was paced to, where it was (issue 19: the
    // profile's rate was used whatever --link-gbps said).
    let link_ms = hw.link_seconds(args.dev.link_gbps, bytes as f64, 0.0) * 1e3;
    Ok(Row {
        model: model.spec().name.clone(),
        dtype: be.dtype().name().to_string(),
        batch: args.batch,
        context: c,
        schedule: name.to_string(),
        measured_ms,
        predicted_ms: pred / k / 1e3,
        floor_ms: plan.summary.io_floor_step_us / 1e3,
        speedup_vs_transfer: None,
        link_util: link_ms / measured_ms.max(1e-9),
        bytes_per_step: bytes,
    })
}

fn table(rows: &[Row], model: &str, device: &str) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.schedule.clone(),
                format!("{:.3}", r.measured_ms),
                format!("{:.3}", r.predicted_ms),
                format!("{:.2}", r.measured_ms / r.predicted_ms.max(1e-9)),
                format!("{:.3}", r.floor_ms),
                format!("{:.2}", r.measured_ms / r.floor_ms.max(1e-9)),
                r.speedup_vs_transfer
                    .map(|s| format!("{s:.2}x"))
                    .unwrap_or_default(),
                format!("{:.0}%", 100.0 * r.link_util),
                plans::human_bytes(r.bytes_per_step),
            ]
        })
        .collect();
    format!(
        "\n{model} | {device} | {} | batch {} | context {}\n{}",
        first.dtype,
        first.batch,
        first.context,
        fmt::table(
            &[
                "schedule",
                "measured ms",
                "predicted ms",
                "meas/pred",
                "I/O floor ms",
                "meas/floor",
                "vs transfer",
                "link util",
                "bytes/step",
            ],
            &cells
        )
    )
}

fn csv(rows: &[Row]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{:.4},{:.4},{:.4},{},{:.4}\n",
            r.model,
            r.dtype,
            r.batch,
            r.context,
            r.schedule,
            r.measured_ms,
            r.predicted_ms,
            r.floor_ms,
            r.speedup_vs_transfer
                .map(|v| format!("{v:.4}"))
                .unwrap_or_default(),
            r.link_util
        ));
    }
    s
}

/// Measured step time against context, one line per schedule, and the I/O floor.
fn plot(rows: &[Row], title: &str, path: &Path) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = rows.iter().map(|r| r.context).max().unwrap_or(1) as f64;
        let y_max = rows
            .iter()
            .map(|r| r.measured_ms.max(r.floor_ms))
            .fold(0.0, f64::max)
            .max(1e-6)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("context length (tokens)")
            .y_desc("decode step (ms)")
            .draw()?;
        let mut names: Vec<&str> = rows.iter().map(|r| r.schedule.as_str()).collect();
        names.dedup();
        names.sort_unstable();
        names.dedup();
        for (i, name) in names.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.schedule == *name)
                .map(|r| (r.context as f64, r.measured_ms))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        let mut floor: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.context as f64, r.floor_ms))
            .collect();
        floor.sort_by(|a, b| a.0.total_cmp(&b.0));
        floor.dedup_by(|a, b| a.0 == b.0);
        chart
            .draw_series(LineSeries::new(floor, BLACK.stroke_width(1)))?
            .label("I/O floor")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    plans::write_atomic(path, svg.as_bytes())
        .with_context(|| format!("writing --plot {}", path.display()))
}
