//! `kvpr run`: decode with the KV cache in host memory, following a plan (from
//! `--plan`, or made on the fly from `--hardware` for exactly these prompts).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plans::{Field, Plan, Workload};
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
    /// A prompt; repeat the flag for a batch. Prompts of different token
    /// counts decode together as a ragged batch through the paged cache.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A file with one prompt per line (added to --prompt).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    #[arg(long, default_value_t = 32, value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub max_new_tokens: usize,
    /// Keep generating past the model's end-of-sequence ids (from
    /// generation_config.json / config.json / GGUF) instead of stopping there.
    #[arg(long)]
    pub ignore_eos: bool,
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
    #[command(flatten)]
    pub dev: super::DeviceFlags,
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
    /// On-the-fly planning: also write the plan here, once the run has
    /// finished (a run that fails leaves no file).
    #[arg(long)]
    pub plan_out: Option<PathBuf>,
    /// Record when each copy, recompute, attention and dense op of each layer
    /// started and ended on its stream (the backend's own events) and write
    /// the timelines here (`kvpr.trace/v1`; draw it with `kvpr simulate --trace`).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// With --trace: the decode steps to record, comma-separated: step numbers
    /// (0 is the first decode step, after prefill), `first`, `last` (the last
    /// step --max-new-tokens allows). Steps not listed record nothing extra.
    #[arg(long, default_value = "last", requires = "trace")]
    pub trace_steps: String,
    /// Also write the run's mean decode step, measured and predicted, here
    /// (one line of JSON, for scripts comparing runs).
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let sampling = sampling(args)?;
    let prompts = prompts(args)?;
    if args.plan.is_none() && args.hardware.is_none() {
        bail!("kvpr run needs --plan FILE, or --hardware PROFILE to plan on the fly (e.g. a profile from `kvpr calibrate --out cpu.json`)");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens: must be at least 1");
    }
    super::check_io(
        &[
            ("--plan-out", args.plan_out.as_deref()),
            ("--trace", args.trace.as_deref()),
            ("--summary-json", args.summary_json.as_deref()),
        ],
        &[
            ("--model", Some(Path::new(&args.model))),
            ("--plan", args.plan.as_deref()),
            ("--hardware", args.hardware.as_deref()),
            ("--prompts-file", args.prompts_file.as_deref()),
        ],
    )?;
    let trace_steps = match &args.trace {
        Some(_) => super::trace::parse_steps(&args.trace_steps, args.max_new_tokens)?,
        None => Vec::new(),
    };
    let backend = args.dev.backend()?;
    let source = ModelSource::parse(&args.model).context("reading --model")?;
    let t0 = std::time::Instant::now();
    let model = super::load_model(&source, &backend)?;
    eprintln!(
        "loaded {} [{}] ({} layers, h {}, {} heads / {} kv heads) on {} in {:.1} s",
        model.spec().name,
        model.spec().arch.describe(),
        model.spec().n_layers,
        model.spec().hidden_size,
        model.spec().n_heads,
        model.spec().n_kv_heads,
        backend.name(),
        t0.elapsed().as_secs_f64()
    );
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| model.encode_prompt(i, p))
        .collect::<Result<_, _>>()
        .context("tokenizing the prompts")?;
    // Before any planning: a plan for contexts the model cannot hold is
    // work thrown away.
    let spec = model.spec();
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    if longest.saturating_add(args.max_new_tokens) >= spec.max_context {
        bail!(
            "--max-new-tokens {}: {longest} prompt tokens + {} new tokens exceed {}'s context of {} tokens",
            args.max_new_tokens,
            args.max_new_tokens,
            spec.name,
            spec.max_context
        );
    }
    if ids.iter().any(|v| v.len() != ids[0].len()) {
        return ragged(args, &model, &backend, &prompts, &ids, sampling);
    }
    let mut gen = Generator::new(model, backend, None);
    gen.set_ignore_eos(args.ignore_eos);
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
    // Written once the run has passed every check and finished (below).
    let plan_out = match (&args.plan, &args.plan_out) {
        (None, Some(out)) => Some((out, plan.clone())),
        _ => None,
    };
    let schedule = plan.schedule;
    gen.set_plan(plan);
    gen.trace_steps(trace_steps);

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
    if let (Some(path), Some(plan)) = (&args.trace, gen.plan()) {
        let trace = super::trace::make(plan, &gen.model.spec().name, &gen.backend.name(), &report);
        if trace.steps.is_empty() {
            eprintln!("note: generation ended before the traced steps; the trace has no step");
        }
        trace
            .save(path)
            .with_context(|| format!("writing --trace {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some((out, plan)) = plan_out {
        plan.save(out).context("writing --plan-out")?;
        eprintln!("wrote {}", out.display());
    }
    if let Some(path) = &args.summary_json {
        let (measured, predicted) = mean_step_us(&report);
        let json = serde_json::json!({
            "schedule": schedule.name(),
            "decode_steps": report.steps.len(),
            "measured_step_us": measured,
            "predicted_step_us": predicted,
            "measured_over_predicted": predicted.map(|p| measured / p.max(1e-9)),
            "device": gen.backend.name(),
            "tokens": report.tokens,
        });
        plans::write_atomic(path, format!("{json}\n").as_bytes())
            .with_context(|| format!("writing --summary-json {}", path.display()))?;
    }
    Ok(())
}

/// Prompts of different lengths: one ragged batch through the paged K/V cache
/// (`kvpr overflow`'s engine), each sequence at its own positions; greedy.
/// With `--gpu-memory-budget`, the cache holds that much K/V and what does not
/// fit is offloaded to the host, each sequence decoding through its own split
/// (the share recomputed from activations priced by the cost model on
/// `--hardware`); without it every block stays on the device.
fn ragged(
    args: &RunArgs,
    model: &Model,
    be: &kernels::Backend,
    prompts: &[String],
    ids: &[Vec<u32>],
    sampling: Sampling,
) -> anyhow::Result<()> {
    for (flag, given) in [
        ("--plan", args.plan.is_some()),
        ("--plan-out", args.plan_out.is_some()),
        ("--trace", args.trace.is_some()),
    ] {
        if given {
            bail!("{flag}: a plan is made for one prompt length, and these prompts have {} different ones; drop {flag}, or give prompts of equal token counts", {
                let mut l: Vec<usize> = ids.iter().map(Vec::len).collect();
                l.sort_unstable();
                l.dedup();
                l.len()
            });
        }
    }
    let spec = model.spec();
    let n = args.max_new_tokens;
    if let Some((i, v)) = ids
        .iter()
        .enumerate()
        .find(|(_, v)| v.is_empty() || v.len() + n > spec.max_context)
    {
        bail!(
            "prompt {i}: {} tokens and {n} new ones do not fit {}'s context of {} tokens",
            v.len(),
            spec.name,
            spec.max_context
        );
    }
    let requests = plans::Requests {
        requests: ids
            .iter()
            .enumerate()
            .map(|(i, v)| plans::Request {
                id: i,
                arrival_s: 0.0,
                input_len: v.len(),
                output_len: n,
                prompt: None,
            })
            .collect(),
    };
    let block = args.block_tokens.max(1);
    let full: usize = ids
        .iter()
        .map(|v| plans::blocks_for(v.len() + n, block))
        .sum();
    let esz = be.dtype().bytes();
    let per_block = plans::PagedBytes::per_block(spec, block, esz);
    let (capacity, policy) = match &args.gpu_memory_budget {
        None => (full, scheduler::Policy::Swap),
        Some(b) => {
            // The budget holds the whole engine: its pool and its buffers.
            let policy = scheduler::Policy::Offload;
            let bytes = super::parse_size("--gpu-memory-budget", b)?;
            let probe = serving::RunConfig {
                policy,
                block_size: block,
                capacity_blocks: 0,
                max_running: ids.len(),
                partial_share: 0.0,
                offload_share: 0.0,
                offload_admit_blocks: 0,
                sampling: runtime::Sampling::GREEDY,
            };
            let shape = serving::engine_config(&requests, &probe).shape();
            let cap = plans::PagedBytes::blocks_within(spec, &shape, esz, bytes);
            if let Err(e) = scheduler::check_capacity(&requests, block, cap, policy) {
                let least = scheduler::min_capacity(&requests, block, policy);
                bail!(
                    "--gpu-memory-budget {b}: {e}; the smallest budget that works is {} (the pool of {least} blocks and the engine's other buffers)",
                    plans::human_bytes(plans::PagedBytes::new(spec, &shape, least, esz).total())
                );
            }
            (cap.min(full), policy)
        }
    };
    let (share, admit) = match (&args.hardware, policy) {
        (Some(hw), scheduler::Policy::Offload) => {
            let (hw, _) = super::load_profile(hw)?;
            let share = serving::offload_share(
                spec,
                &hw,
                &requests,
                be.dtype(),
                block,
                (capacity, ids.len()),
            )
            .map_err(super::pricing_error)?;
            let longest = requests.requests.iter().map(|r| r.input_len).max();
            let admit = serving::offload_admit_blocks(
                spec,
                &hw,
                be.dtype(),
                block,
                (ids.len(), longest.unwrap_or(1)),
            )
            .map_err(super::pricing_error)?;
            (share, admit)
        }
        _ => (0.0, 0),
    };
    eprintln!(
        "ragged batch: {} prompts of {} tokens | paged cache of {capacity} blocks of {block} tokens ({}){}",
        ids.len(),
        ids.iter().map(|v| v.len().to_string()).collect::<Vec<_>>().join(", "),
        plans::human_bytes(capacity as u64 * per_block),
        if policy == scheduler::Policy::Offload {
            format!(", the rest offloaded; {:.0}% of an offloaded prefix recomputed", share * 100.0)
        } else {
            ", all resident".into()
        }
    );
    let cfg = serving::RunConfig {
        policy,
        block_size: block,
        capacity_blocks: capacity,
        max_running: ids.len(),
        partial_share: 0.0,
        offload_share: share,
        offload_admit_blocks: admit,
        sampling,
    };
    let r =
        serving::serve(be, model, &requests, ids, &cfg, &|| None, &|_| {}).context("generating")?;
    let mut texts = Vec::new();
    for (i, (p, toks)) in prompts.iter().zip(&r.outputs).enumerate() {
        let end = match args.ignore_eos {
            true => toks.len(),
            false => toks
                .iter()
                .position(|&t| model.tokenizer.is_eos(t))
                .unwrap_or(toks.len()),
        };
        let text = model.tokenizer.decode(&toks[..end])?;
        println!("[{i}] {p}{text}");
        texts.push(toks[..end].to_vec());
    }
    // The first iteration is the prefill; the rest are decode steps.
    let steps: Vec<f64> = r
        .samples
        .iter()
        .skip(1)
        .map(|s| s.iteration_s * 1e6)
        .collect();
    let mean = steps.iter().sum::<f64>() / steps.len().max(1) as f64;
    eprintln!(
        "decode: {} steps, mean {} per step ({} sequences), {:.1} tokens/s overall",
        steps.len(),
        fmt::us(mean),
        ids.len(),
        r.throughput()
    );
    if let Some(path) = &args.summary_json {
        let json = serde_json::json!({
            "schedule": "ragged",
            "decode_steps": steps.len(),
            "measured_step_us": mean,
            "predicted_step_us": null,
            "device": be.name(),
            "tokens": texts,
        });
        plans::write_atomic(path, format!("{json}\n").as_bytes())
            .with_context(|| format!("writing --summary-json {}", path.display()))?;
    }
    Ok(())
}

/// The mean decode step, µs: measured over all steps, and predicted over the
/// steps the plan predicts (`None` when it predicts none).
fn mean_step_us(r: &GenerationReport) -> (f64, Option<f64>) {
    let n = r.steps.len().max(1) as f64;
    let measured = r.steps.iter().map(|s| s.measured_us).sum::<f64>() / n;
    let predicted: Vec<f64> = r.steps.iter().filter_map(|s| s.predicted_us).collect();
    let p = (!predicted.is_empty()).then(|| predicted.iter().sum::<f64>() / predicted.len() as f64);
    (measured, p)
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

/// The largest `--prompts-file` read: far beyond the context of any model
/// kvpr runs, and small enough to hold in memory.
const MAX_PROMPTS_FILE: u64 = 256 << 20;

/// The prompts from --prompt and --prompts-file, in that order.
fn prompts(args: &RunArgs) -> anyhow::Result<Vec<String>> {
    let mut out = args.prompt.clone();
    if let Some(path) = &args.prompts_file {
        let text = plans::read_text_limited(path, MAX_PROMPTS_FILE)
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
    scheduler::make_plan(&spec, &hw, hw_id, &workload, &request)
        .map_err(|e| super::name_field(e, run_flag))
}

/// The flags of `kvpr run` a planning error can be about; the batch and the
/// prompt length come from the prompts themselves.
fn run_flag(f: Field) -> Option<String> {
    match f {
        Field::GenLen => Some("--max-new-tokens".into()),
        Field::Batch | Field::PromptLen | Field::Dtype => None,
        f => super::plan_flag(f),
    }
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
    let (measured, predicted) = mean_step_us(r);
    out.push_str(&format!(
        "mean step: measured {} | bytes per step: activations {} + K/V {}",
        fmt::us(measured),
        plans::human_bytes(mean(&|s| s.bytes_x as f64) as u64),
        plans::human_bytes(mean(&|s| s.bytes_kv as f64) as u64),
    ));
    if let Some(p) = predicted {
        out.push_str(&format!(
            " | predicted {} (measured/predicted {:.2})",
            fmt::us(p),
            measured / p.max(1e-9)
        ));
    }
    out.push('\n');
    out
}
