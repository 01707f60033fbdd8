//! `kvpr run`: decode with the KV cache in host memory, following a plan (from
//! `--plan`, or made on the fly from `--hardware` for exactly these prompts).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::{Plan, Workload};
use runtime::{GenerationReport, Generator, Model, ModelSource, Sampling};
use scheduler::PlanRequest;

use crate::fmt;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Model: a .gguf file, a Hugging Face directory, or `preset:NAME` (seeded random weights).
    #[arg(long)]
    pub model: String,
    /// Plan file from `kvpr plan`: made for this model and batch, it serves every
    /// prompt whose contexts it covers (up to its --prompt-len, with its --gen-len).
    #[arg(long, conflicts_with = "hardware")]
    pub plan: Option<PathBuf>,
    /// Hardware profile: plan on the fly for exactly these prompts.
    #[arg(long)]
    pub hardware: Option<PathBuf>,
    /// A prompt; repeat the flag for a batch (prompts of a batch need equal token counts).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A file with one prompt per line (added to --prompt).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens (K >= 1; with --temperature above 0).
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    /// Nucleus sampling: only among the most likely tokens whose probability
    /// reaches P, in (0, 1] (with --temperature above 0).
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Seed of the sampler: the same seed and flags give the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU backend only: pace the copy stream to this many GB/s.
    #[arg(long)]
    pub link_gbps: Option<f64>,
    /// On-the-fly planning: auto, transfer, paper or chunked.
    #[arg(long, default_value = "auto")]
    pub schedule: String,
    /// On-the-fly planning: split granularity in tokens.
    #[arg(long, default_value_t = 16)]
    pub block_tokens: usize,
    /// On-the-fly planning: device memory for K/V; default: only the staging
    /// buffers, so every position goes through the host store.
    #[arg(long)]
    pub gpu_memory_budget: Option<String>,
    /// On-the-fly planning: host memory for the store.
    #[arg(long, default_value = "64GiB")]
    pub host_memory_budget: String,
    /// On-the-fly planning: also write the plan here.
    #[arg(long)]
    pub plan_out: Option<PathBuf>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let sampling = sampling(args)?;
    let prompts = prompts(args)?;
    if args.plan.is_none() && args.hardware.is_none() {
        bail!("kvpr run needs --plan FILE, or --hardware PROFILE to plan on the fly (e.g. a profile from `kvpr calibrate --out cpu.json`)");
    }
    let device: DeviceSpec = args
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    if let Some(g) = args.link_gbps {
        if !(g.is_finite() && g > 0.0) {
            bail!("--link-gbps: {g} is not a positive number of GB/s");
        }
    }
    let backend = Backend::new(
        device,
        BackendOptions {
            link_gbps: args.link_gbps,
            ..Default::default()
        },
    )
    .with_context(|| format!("opening --device {}", args.device))?;
    let source = ModelSource::parse(&args.model).context("reading --model")?;
    let t0 = std::time::Instant::now();
    let model = Model::load(&source, &backend).context("loading --model")?;
    eprintln!(
        "loaded {} ({} layers, h {}, {} heads / {} kv heads) on {} in {:.1} s",
        model.spec().name,
        model.spec().n_layers,
        model.spec().hidden_size,
        model.spec().n_heads,
        model.spec().n_kv_heads,
        backend.name(),
        t0.elapsed().as_secs_f64()
    );
    let mut gen = Generator::new(model, backend, None);
    let plan = if let Some(path) = &args.plan {
        gen = gen.with_plan_path(path);
        Plan::load(path).context("reading --plan")?
    } else if let Some(hw_path) = &args.hardware {
        plan_on_the_fly(args, &gen, &prompts, hw_path)?
    } else {
        bail!("kvpr run needs --plan FILE, or --hardware PROFILE to plan on the fly");
    };
    eprintln!(
        "plan: schedule {} | predicted step {} vs transfer-only {} ({:.2}x)",
        plan.schedule.name(),
        fmt::us(plan.summary.predicted_decode_step_us),
        fmt::us(plan.summary.transfer_only_step_us),
        plan.summary.speedup_vs_transfer
    );
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    gen.set_plan(plan);

    let batch = prompts.len();
    if batch == 1 {
        print!("{}", prompts[0]);
    }
    let mut stdout = std::io::stdout();
    let report = gen
        .generate(&prompts, args.max_new_tokens, sampling, |i, text| {
            if batch == 1 && i == 0 {
                print!("{text}");
                let _ = stdout.flush();
            }
        })
        .context("generating")?;
    if batch == 1 {
        println!();
    } else {
        for (i, (p, t)) in prompts.iter().zip(&report.texts).enumerate() {
            println!("[{i}] {p}{t}");
        }
    }
    eprint!("{}", report_text(&report));
    Ok(())
}

/// --temperature, --top-k, --top-p and --seed, checked before anything loads;
/// the library names the field, this names the flag.
fn sampling(args: &RunArgs) -> anyhow::Result<Sampling> {
    let top_k = match args.top_k {
        Some(k) if k < 1 => bail!("--top-k: {k} is not a count of tokens; use 1 or more"),
        Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        None => None,
    };
    let s = Sampling {
        temperature: args.temperature,
        top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    if let Err(e) = s.validate() {
        match e {
            runtime::RuntimeError::Request { what, reason } => {
                bail!("--{}: {reason}", what.replace('_', "-"))
            }
            e => return Err(e.into()),
        }
    }
    Ok(s)
}

/// The prompts from --prompt and --prompts-file, in that order.
fn prompts(args: &RunArgs) -> anyhow::Result<Vec<String>> {
    let mut out = args.prompt.clone();
    if let Some(path) = &args.prompts_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --prompts-file {}", path.display()))?;
        out.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    if out.is_empty() {
        bail!("no prompt: give --prompt TEXT (repeat it for a batch) or --prompts-file FILE");
    }
    Ok(out)
}

/// Plans for exactly these prompts (batch, tokenized length) on `--hardware`.
fn plan_on_the_fly(
    args: &RunArgs,
    gen: &Generator,
    prompts: &[String],
    hw_path: &std::path::Path,
) -> anyhow::Result<Plan> {
    let ids = gen.encode_prompts(prompts).context("reading the prompts")?;
    let (hw, hw_id) = super::load_profile(hw_path)?;
    let spec = gen.model.spec().clone();
    let mut workload = Workload {
        batch: ids.len(),
        prompt_len: ids[0].len(),
        gen_len: args.max_new_tokens,
        dtype: gen.dtype(),
        gpu_memory_budget: 0,
        host_memory_budget: super::parse_size("--host-memory-budget", &args.host_memory_budget)?,
    };
    workload.gpu_memory_budget = match &args.gpu_memory_budget {
        Some(s) => super::parse_size("--gpu-memory-budget", s)?,
        None => scheduler::staging_bytes(&spec, &workload),
    };
    let request = PlanRequest {
        schedule: super::parse_schedule(&args.schedule)?,
        block_tokens: args.block_tokens,
        solver: scheduler::Solver::Lp,
        forced: None,
    };
    let plan = scheduler::make_plan(&spec, &hw, hw_id, &workload, &request)?;
    if let Some(out) = &args.plan_out {
        plan.save(out)
            .with_context(|| format!("writing --plan-out {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(plan)
}

/// Prefill, decode speed, bytes per step, and measured against predicted.
fn report_text(r: &GenerationReport) -> String {
    let mut out = String::from("\n");
    let n = r.steps.len();
    out.push_str(&format!(
        "prefill {:.1} ms | decode {:.2} ms/token over {} steps | host store {}\n",
        r.prefill_ms,
        r.decode_ms_per_token,
        n,
        plans::human_bytes(r.host_bytes)
    ));
    if n == 0 {
        return out;
    }
    let picks = fmt::sample_indices(n, 6);
    let rows: Vec<Vec<String>> = picks
        .iter()
        .map(|&i| {
            let s = &r.steps[i];
            vec![
                s.context.to_string(),
                s.resident.to_string(),
                s.recompute.to_string(),
                s.transfer.to_string(),
                s.chunks.to_string(),
                plans::human_bytes(s.bytes_x),
                plans::human_bytes(s.bytes_kv),
                fmt::us(s.measured_us),
                s.predicted_us.map(fmt::us).unwrap_or_default(),
                s.predicted_us
                    .map(|p| format!("{:.2}", s.measured_us / p.max(1e-9)))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&fmt::table(
        &[
            "context",
            "resident",
            "recompute",
            "transfer",
            "chunks",
            "X bytes",
            "K/V bytes",
            "measured",
            "predicted",
            "meas/pred",
        ],
        &rows,
    ));
    let mean =
        |f: &dyn Fn(&runtime::StepReport) -> f64| r.steps.iter().map(f).sum::<f64>() / n as f64;
    let measured = mean(&|s| s.measured_us);
    let predicted: Vec<f64> = r.steps.iter().filter_map(|s| s.predicted_us).collect();
    out.push_str(&format!(
        "mean step: measured {} | bytes per step: activations {} + K/V {}",
        fmt::us(measured),
        plans::human_bytes(mean(&|s| s.bytes_x as f64) as u64),
        plans::human_bytes(mean(&|s| s.bytes_kv as f64) as u64),
    ));
    if !predicted.is_empty() {
        let p = predicted.iter().sum::<f64>() / predicted.len() as f64;
        out.push_str(&format!(
            " | predicted {} (measured/predicted {:.2})",
            fmt::us(p),
            measured / p.max(1e-9)
        ));
    }
    out.push('\n');
    out
}
