//! `kvpr plan`: model + hardware profile + workload -> plan file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plans::{DeviceKind, Dtype, ModelSpec, Plan, Workload};
use scheduler::PlanRequest;

use crate::fmt;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Model: a .gguf file, a Hugging Face directory (config.json), or a preset (`preset:llama-2-7b`).
    #[arg(long)]
    pub model: String,
    /// Hardware profile (`kvpr.hardware/v1`), e.g. from `kvpr calibrate` or plans/hardware/.
    #[arg(long)]
    pub hardware: PathBuf,
    #[arg(long, value_parser = super::num::count::<1, { plans::MAX_BATCH }>)]
    pub batch: usize,
    /// Longest prompt in tokens (every sequence of the batch): the plan covers
    /// contexts 1 ..= prompt-len + gen-len - 1, so it serves any shorter prompt too.
    #[arg(long, value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub prompt_len: usize,
    /// Tokens to generate (after the longest prompt).
    #[arg(long, value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub gen_len: usize,
    /// auto picks the fastest of transfer, paper and chunked.
    #[arg(long, default_value = "auto")]
    pub schedule: String,
    /// Split points are multiples of this many tokens.
    #[arg(long, default_value_t = 16, value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub block_tokens: usize,
    /// Device memory for K/V (resident prefix + staging), weights not counted.
    #[arg(long, default_value = "4GiB")]
    pub gpu_memory_budget: String,
    /// Host memory for the stored activations and K/V.
    #[arg(long, default_value = "64GiB")]
    pub host_memory_budget: String,
    /// Element type at run time; default f16 on a CUDA profile, f32 on a CPU profile.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Solver: lp (default) or exhaustive (the checker).
    #[arg(long, default_value = "lp", hide = true)]
    pub solver: String,
    /// Where to write the plan (default: plan.json unless --json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the plan to stdout (the summary goes to stderr).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let out = match (&args.out, args.json) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(PathBuf::from("plan.json")),
        (None, true) => None,
    };
    super::check_io(
        &[("--out", out.as_deref())],
        &[
            ("--model", Some(Path::new(&args.model))),
            ("--hardware", Some(args.hardware.as_path())),
        ],
    )?;
    let model = ModelSpec::resolve(&args.model).context("reading --model")?;
    let (hw, hw_id) = super::load_profile(&args.hardware)?;
    let (schedule, solver) = (
        super::parse_schedule(&args.schedule)?,
        super::parse_solver(&args.solver)?,
    );
    let dtype = match &args.dtype {
        Some(d) => d
            .parse::<Dtype>()
            .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?,
        None if hw.device.kind == DeviceKind::Cpu => Dtype::F32,
        None => Dtype::F16,
    };
    let workload = Workload {
        batch: args.batch,
        prompt_len: args.prompt_len,
        gen_len: args.gen_len,
        dtype,
        gpu_memory_budget: super::parse_size("--gpu-memory-budget", &args.gpu_memory_budget)?,
        host_memory_budget: super::parse_size("--host-memory-budget", &args.host_memory_budget)?,
    };
    let request = PlanRequest {
        schedule,
        block_tokens: args.block_tokens,
        solver,
        forced: None,
    };
    let plan = scheduler::make_plan(&model, &hw, hw_id, &workload, &request)
        .map_err(|e| super::name_field(e, super::plan_flag))?;
    if workload.max_context_len() > model.max_context {
        eprintln!(
            "warning: decode reaches context {} but {} was trained for {} tokens; the plan is valid for the shape, the text past that point may degrade",
            workload.max_context_len(),
            model.name,
            model.max_context
        );
    }
    let summary = summary_text(&plan);
    if args.json {
        println!("{}", plan.to_json());
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if let Some(out) = out {
        plan.save(&out).context("writing --out")?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// The human summary: a compact table of the split, predictions, memory, notes.
pub fn summary_text(plan: &Plan) -> String {
    let w = &plan.workload;
    let m = &plan.model;
    let s = &plan.summary;
    let mut out = format!(
        "plan: {} [{}] on {} | batch {} | prompt {} + gen {} | {} | schedule {} | block {}\n\n",
        m.name,
        m.arch.describe(),
        plan.hardware.name,
        w.batch,
        w.prompt_len,
        w.gen_len,
        w.dtype.name(),
        plan.schedule.name(),
        plan.block_tokens
    );
    let n = plan.steps.len();
    if let Some((from, to)) = plan.covered() {
        out.push_str(&format!(
            "covers contexts {from}..={to}: prompts up to {} tokens + {} new; {n} steps (ranges with the same split merged; predictions at each range's last context)\n\n",
            w.prompt_len, w.gen_len
        ));
    }
    let picks = fmt::sample_indices(n, 8);
    let rows: Vec<Vec<String>> = picks
        .iter()
        .map(|&i| {
            let st = &plan.steps[i];
            vec![
                format!("{}..{}", st.context_len_from, st.context_len_to),
                st.resident_tokens.to_string(),
                st.recompute_tokens.to_string(),
                st.transfer_tokens.to_string(),
                format!(
                    "{:.0}%",
                    100.0 * st.recompute_tokens as f64 / st.context_len_to as f64
                ),
                st.chunks.to_string(),
                fmt::us(st.kv_ready_us),
                fmt::us(st.step_us),
            ]
        })
        .collect();
    out.push_str(&fmt::table(
        &[
            "context",
            "resident",
            "recompute",
            "transfer",
            "recomp %",
            "chunks",
            "kv ready/layer",
            "step",
        ],
        &rows,
    ));
    if n > picks.len() {
        out.push_str(&format!("({} of {} steps shown)\n", picks.len(), n));
    }
    out.push_str(&format!(
        "\npredicted decode step {} (mean over contexts {}..={})  |  transfer-only {}  ->  {:.2}x\n",
        fmt::us(s.predicted_decode_step_us),
        w.prompt_len,
        w.max_context_len(),
        fmt::us(s.transfer_only_step_us),
        s.speedup_vs_transfer
    ));
    out.push_str(&format!(
        "{}  |  {}\n",
        floor_text("I/O floor", s.io_floor_step_us, s.predicted_decode_step_us),
        floor_text(
            "compute floor",
            s.compute_floor_step_us,
            s.predicted_decode_step_us
        ),
    ));
    out.push_str(&format!(
        "memory: host {} of {} budget  |  GPU {} of {} budget (K/V; weights not counted)\n",
        plans::human_bytes(s.host_memory_bytes),
        plans::human_bytes(w.host_memory_budget),
        plans::human_bytes(s.gpu_memory_bytes),
        plans::human_bytes(w.gpu_memory_budget),
    ));
    for note in &plan.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// `I/O floor 1.2 ms (1.03x of it)`, or why there is no floor to compare with.
fn floor_text(name: &str, floor_us: f64, predicted_us: f64) -> String {
    if floor_us < 1e-3 {
        format!("{name} 0 (nothing crosses the link: all K/V resident)")
    } else {
        format!(
            "{name} {} (prediction {:.2}x of it)",
            fmt::us(floor_us),
            predicted_us / floor_us
        )
    }
}
