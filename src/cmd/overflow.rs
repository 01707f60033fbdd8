//! `kvpr overflow`: serve many requests when their K/V overflow the device,
//! under each policy (recompute, swap, partial, offload), at each block size
//! and share of device memory for the cache, beside an unpressured run of the
//! same requests; a summary table, telemetry over time (CSV), a JSON summary,
//! each request's output (JSONL) and plots.
//!
//! The cache's capacity is a fraction of the device memory left after the
//! weights and the engine's step buffers (`--kv-memory-fraction`), or a
//! block count (`--kv-blocks`). By default that memory is what the whole
//! workload's K/V needs, so a fraction of 1 is no pressure and 0.3 holds 30%
//! of it; `--device-memory` names a real size instead, which the weights and
//! the whole engine then fit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plans::Requests;
use runtime::{Model, ModelSource};
use scheduler::Policy;

use crate::fmt;
use serving::{RunConfig, RunResult};

#[derive(clap::Args)]
pub struct OverflowArgs {
    /// Model: a .gguf file, a Hugging Face directory, or `preset:NAME` (seeded random weights).
    #[arg(long)]
    pub model: String,
    /// Hardware profile (from `kvpr calibrate`): prices how much of a context
    /// `partial` and `offload` recompute from activations.
    #[arg(long)]
    pub hardware: PathBuf,
    /// Policies, comma-separated: recompute, swap, partial, offload, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub policy: Vec<String>,
    /// Tokens per K/V block, comma-separated for several runs.
    #[arg(long, value_delimiter = ',', default_value = "16", value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub block_size: Vec<usize>,
    /// Share of the device memory left after the weights and the engine's
    /// step buffers given to the K/V cache, comma-separated for several runs.
    #[arg(long, value_delimiter = ',', default_value = "0.3")]
    pub kv_memory_fraction: Vec<f64>,
    /// The cache's capacity in blocks (instead of --kv-memory-fraction).
    #[arg(long, conflicts_with = "kv_memory_fraction", value_parser = super::num::count::<1, { super::num::MAX_BLOCKS }>)]
    pub kv_blocks: Option<usize>,
    /// Device memory (e.g. 24GiB) the weights and the whole engine must fit;
    /// default: the weights, the engine's step buffers and the whole
    /// workload's K/V.
    #[arg(long)]
    pub device_memory: Option<String>,
    /// Requests: `ci` (8 x 48 in x 24 out) or `poster` (32 x 1500 in x 1024 out).
    #[arg(long, default_value = "ci", conflicts_with = "trace")]
    pub workload: String,
    /// Instead of --workload: this many requests, all arriving at once, with
    /// --input-len and --output-len tokens.
    #[arg(long, conflicts_with = "trace", requires_all = ["input_len", "output_len"], value_parser = super::num::count::<1, { plans::MAX_REQUESTS }>)]
    pub requests: Option<usize>,
    #[arg(long, requires = "requests", value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub input_len: Option<usize>,
    #[arg(long, requires = "requests", value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub output_len: Option<usize>,
    /// A JSONL trace: one request per line, `arrival_s`, `input_len` (or `prompt`), `output_len`.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// `partial`: the share of a resumed context recomputed from activations,
    /// or `auto` (the cost model's).
    #[arg(long, default_value = "auto")]
    pub partial_share: String,
    /// `offload`: the share of an offloaded prefix recomputed from activations
    /// in each step, or `auto` (the cost model's).
    #[arg(long, default_value = "auto")]
    pub offload_share: String,
    /// Run every configuration this many times (interleaved) and report each
    /// one's median total time.
    #[arg(long, default_value_t = 1, value_parser = super::num::count::<1, { super::num::MAX_REPEAT }>)]
    pub repeat: usize,
    /// The most requests decoding together.
    #[arg(long, default_value_t = 32, value_parser = super::num::count::<1, { plans::MAX_BATCH }>)]
    pub max_batch: usize,
    #[command(flatten)]
    pub dev: super::DeviceFlags,
    /// Telemetry over time, one row per iteration of every run (CSV).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// The summary of every run (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Every request's output tokens (and text), per run (JSONL).
    #[arg(long)]
    pub outputs: Option<PathBuf>,
    /// A folder for the plots (SVG): the time series and the overhead.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One pressured run, beside its unpressured twin.
pub struct Outcome {
    pub fraction: Option<f64>,
    pub result: RunResult,
    /// Total time of the unpressured run at this block size, s.
    pub baseline_s: f64,
    /// Its tokens against the unpressured run's (the worst of its repeats).
    pub outputs: Divergence,
    /// The time its bytes need on the link alone (the profile's peak
    /// bandwidth, each direction on its own), s.
    pub link_floor_s: f64,
}

/// Where a run's greedy tokens part from the unpressured run's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Divergence {
    /// Requests whose tokens differ.
    pub requests: usize,
    /// The earliest token index at which one does.
    pub first_token: Option<usize>,
}

impl Divergence {
    pub fn of(got: &[Vec<u32>], want: &[Vec<u32>]) -> Divergence {
        let mut d = Divergence::default();
        for (g, w) in got.iter().zip(want) {
            let at = g
                .iter()
                .zip(w)
                .position(|(a, b)| a != b)
                .or_else(|| (g.len() != w.len()).then_some(g.len().min(w.len())));
            if let Some(t) = at {
                d.requests += 1;
                d.first_token = Some(d.first_token.map_or(t, |f: usize| f.min(t)));
            }
        }
        d
    }

    pub fn same(&self) -> bool {
        self.requests == 0
    }

    fn cell(&self, n: usize) -> String {
        match self.first_token {
            None => "same".into(),
            Some(t) => format!("{}/{n} @{t}", self.requests),
        }
    }
}

impl Outcome {
    /// The time spent preempting and resuming, over the total (the poster's
    /// overhead). `offload` preempts nobody: its moves to the host count, its
    /// prefixes crossing the link in every step do not (see
    /// [`Outcome::vs_unpressured`]).
    pub fn overhead(&self) -> f64 {
        self.result.preempt_resume_s / self.result.total_s.max(1e-9)
    }

    /// Total time over the unpressured run's: everything the overflow cost.
    pub fn vs_unpressured(&self) -> f64 {
        self.result.total_s / self.baseline_s.max(1e-9)
    }
}

fn policies(names: &[String]) -> anyhow::Result<Vec<Policy>> {
    let mut out = Vec::new();
    for n in names {
        if n == "all" {
            out.extend(Policy::ALL);
        } else {
            out.push(
                n.parse::<Policy>()
                    .map_err(|e| anyhow::anyhow!("--policy: {e}"))?,
            );
        }
    }
    out.dedup();
    if out.is_empty() {
        bail!("--policy: name at least one policy");
    }
    Ok(out)
}

/// The requests as given (a trace, a preset or --requests), read before the
/// model loads so that a bad trace fails at once.
fn load_requests(args: &OverflowArgs) -> anyhow::Result<Requests> {
    Ok(
        match (&args.trace, args.requests, args.input_len, args.output_len) {
            (Some(p), ..) => Requests::load(p).context("reading --trace")?,
            (None, Some(n), Some(i), Some(o)) => {
                Requests::at_once(n, i, o).context("--requests, --input-len and --output-len")?
            }
            _ => Requests::preset(&args.workload).context("--workload")?,
        },
    )
}

/// The requests and each one's prompt ids: a trace's prompt text is
/// tokenized (its `input_len` becomes the token count); otherwise the
/// prompt is `input_len` ids spread over the vocabulary.
fn requests(model: &Model, mut reqs: Requests) -> anyhow::Result<(Requests, Vec<Vec<u32>>)> {
    let spec = model.spec();
    let vocab = spec.vocab_size;
    let mut prompts = Vec::with_capacity(reqs.requests.len());
    for r in &mut reqs.requests {
        let ids = match &r.prompt {
            Some(text) => model
                .encode_prompt(r.id, text)
                .with_context(|| format!("tokenizing request {}'s prompt", r.id))?,
            None => (0..r.input_len)
                .map(|t| ((r.id * 7919 + t * 104_729 + 11) % vocab) as u32)
                .collect(),
        };
        if ids.is_empty() {
            bail!("request {}: its prompt has no tokens", r.id);
        }
        r.input_len = ids.len();
        let total = r.input_len + r.output_len;
        if total > spec.max_context {
            bail!(
                "request {}: {} prompt tokens and {} output tokens exceed {}'s context of {} tokens",
                r.id,
                r.input_len,
                r.output_len,
                spec.name,
                spec.max_context
            );
        }
        prompts.push(ids);
    }
    Ok((reqs, prompts))
}

/// The cache's capacity in blocks for one configuration (block size, share
/// of memory or `--kv-blocks`, policy), checked against the longest request
/// and, where `--device-memory` is given, against that memory less the
/// weights (bytes, as allocated).
///
/// A share is of the memory left after the weights and what the engine
/// allocates besides its pool (`plans::PagedBytes`: the step's gathered K/V,
/// staged activations, a prefill's own buffers), so the weights and the
/// whole engine fit in `--device-memory`. Without `--device-memory` it is a
/// share of the whole workload's K/V.
fn capacity(
    args: &OverflowArgs,
    spec: &plans::ModelSpec,
    reqs: &Requests,
    (bs, fraction, policy): (usize, Option<f64>, Policy),
    esz: usize,
    (weights, device_memory): (u64, Option<u64>),
) -> anyhow::Result<usize> {
    let run = RunConfig {
        policy,
        block_size: bs,
        capacity_blocks: 0,
        max_running: args.max_batch,
        partial_share: 0.0,
        offload_share: 0.0,
        offload_admit_blocks: 0,
        sampling: runtime::Sampling::GREEDY,
    };
    let shape = serving::engine_config(reqs, &run).shape();
    let fixed = plans::PagedBytes::new(spec, &shape, 0, esz).fixed();
    let per_block = plans::PagedBytes::per_block(spec, bs, esz).max(1);
    let h = plans::human_bytes;
    let engine = || {
        format!(
            "the serving engine's buffers besides its pool at --block-size {bs}, --max-batch {} under {} ({})",
            shape.max_batch,
            policy.name(),
            h(fixed)
        )
    };
    // The memory the share is of.
    let left = match device_memory {
        None => reqs
            .requests
            .iter()
            .map(|r| spec.kv_bytes(r.input_len + r.output_len, esz))
            .fold(0u64, u64::saturating_add),
        Some(m) => match m.checked_sub(weights.saturating_add(fixed)) {
            Some(left) if left > 0 => left,
            _ => bail!(
                "--device-memory {}: the weights ({}) and {} take it all",
                h(m),
                h(weights),
                engine()
            ),
        },
    };
    let (capacity, flag) = match (args.kv_blocks, fraction) {
        (Some(n), _) => (n, format!("--kv-blocks {n}")),
        (None, Some(f)) => (
            (f * left as f64 / per_block as f64) as usize,
            format!("--kv-memory-fraction {f}"),
        ),
        (None, None) => unreachable!("fractions are given when blocks are not"),
    };
    if let Err(e) = scheduler::check_capacity(reqs, bs, capacity, policy) {
        let least = scheduler::min_capacity(reqs, bs, policy);
        let need_f = least as f64 * per_block as f64 / left as f64;
        let advice = match args.kv_blocks {
            // A share above 1 is no advice: name the flags that can.
            None if need_f > 1.0 => format!(
                "; more than this device's memory holds after the weights and the engine's buffers: give --device-memory or --kv-blocks {least}"
            ),
            None => format!(", a fraction of at least {need_f:.3}"),
            Some(_) => String::new(),
        };
        bail!("{flag}: {e}{advice}");
    }
    if let Some(m) = device_memory {
        let need =
            weights.saturating_add(plans::PagedBytes::new(spec, &shape, capacity, esz).total());
        if need > m {
            bail!(
                "{flag}: the weights ({}) and {capacity} blocks of {bs} tokens ({}) with {} need {}, more than --device-memory {}",
                h(weights),
                h(capacity as u64 * per_block),
                engine(),
                h(need),
                h(m)
            );
        }
    }
    Ok(capacity)
}

pub fn run(args: &OverflowArgs) -> anyhow::Result<()> {
    let plots =
        super::output_dir_files("--plot", args.plot.as_deref(), &super::overflow_plot::FILES)?;
    let mut outputs = vec![
        ("--csv", args.csv.as_deref()),
        ("--json", args.json.as_deref()),
        ("--outputs", args.outputs.as_deref()),
    ];
    outputs.extend(plots.iter().map(|p| ("--plot", Some(p.as_path()))));
    super::check_io(
        &outputs,
        &[
            ("--model", Some(Path::new(&args.model))),
            ("--hardware", Some(args.hardware.as_path())),
            ("--trace", args.trace.as_deref()),
        ],
    )?;
    let policies = policies(&args.policy)?;
    if let Some(&b) = args.block_size.iter().find(|&&b| b == 0) {
        bail!("--block-size: {b} is not a block size (at least 1 token)");
    }
    if let Some(f) = args
        .kv_memory_fraction
        .iter()
        .find(|f| !(f.is_finite() && **f > 0.0 && **f <= 1.0))
    {
        bail!("--kv-memory-fraction: {f} is not a share in (0, 1]");
    }
    if args.max_batch == 0 {
        bail!("--max-batch: at least 1");
    }
    let device_memory = args
        .device_memory
        .as_deref()
        .map(|s| super::parse_size("--device-memory", s))
        .transpose()?;
    let (hw, _) = super::load_profile(&args.hardware)?;
    let given = load_requests(args)?;
    let be = args.dev.backend()?;
    let source = ModelSource::parse(&args.model).context("reading --model")?;
    eprintln!("loading {} on {}...", args.model, be.name());
    let loading = std::time::Instant::now();
    let before = be.allocated_bytes();
    let model = super::load_model(&source, &be)?;
    // What the weights take on the device, as allocated (tied embeddings
    // once, norms and biases included).
    let weights = be.allocated_bytes() - before;
    eprintln!("loaded in {:.1} s", loading.elapsed().as_secs_f64());
    let spec = model.spec().clone();
    let (reqs, prompts) = requests(&model, given)?;
    let esz = be.dtype().bytes();
    if let Some(m) = device_memory.filter(|&m| m <= weights) {
        bail!(
            "--device-memory {}: the weights alone take {}",
            plans::human_bytes(m),
            plans::human_bytes(weights)
        );
    }
    // A share given on the command line, or `None` for the cost model's.
    let share_flag = |flag: &str, v: &str| -> anyhow::Result<Option<f64>> {
        match v {
            "auto" => Ok(None),
            v => match v.parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => Ok(Some(f)),
                _ => bail!("{flag}: {v:?} is neither auto nor a share in [0, 1]"),
            },
        }
    };
    let partial_flag = share_flag("--partial-share", &args.partial_share)?;
    let offload_flag = share_flag("--offload-share", &args.offload_share)?;
    // Every configuration, checked before any run.
    struct Config {
        bs: usize,
        fraction: Option<f64>,
        policy: Policy,
        capacity: usize,
    }
    let fractions: Vec<Option<f64>> = match args.kv_blocks {
        Some(_) => vec![None],
        None => args.kv_memory_fraction.iter().map(|&f| Some(f)).collect(),
    };
    let mut configs = Vec::new();
    for &bs in &args.block_size {
        for &fraction in &fractions {
            for &policy in &policies {
                let memory = (weights, device_memory);
                let capacity = capacity(args, &spec, &reqs, (bs, fraction, policy), esz, memory)?;
                configs.push(Config {
                    bs,
                    fraction,
                    policy,
                    capacity,
                });
            }
        }
    }
    // The cost model's shares, at the first block size (and, for offload,
    // its first capacity), where the command line gives none.
    let partial_share = match partial_flag {
        Some(f) => f,
        None => serving::resume_share(&spec, &hw, &reqs, be.dtype(), args.block_size[0])
            .map_err(super::pricing_error)?,
    };
    let offload_share = match (
        offload_flag,
        configs.iter().find(|c| c.policy == Policy::Offload),
    ) {
        (Some(f), _) => f,
        (None, Some(c)) => serving::offload_share(
            &spec,
            &hw,
            &reqs,
            be.dtype(),
            c.bs,
            (c.capacity, args.max_batch),
        )
        .map_err(super::pricing_error)?,
        (None, None) => 0.0,
    };
    // What the link hides under a step of a full batch at the mean context.
    let offload_admit_blocks = match configs.iter().find(|c| c.policy == Policy::Offload) {
        Some(c) => {
            let n = reqs.requests.len().max(1);
            let mean = reqs
                .requests
                .iter()
                .map(|r| r.input_len + r.output_len / 2)
                .sum::<usize>()
                / n;
            serving::offload_admit_blocks(
                &spec,
                &hw,
                be.dtype(),
                c.bs,
                (args.max_batch.min(n), mean),
            )
            .map_err(super::pricing_error)?
        }
        None => 0,
    };
    let monitor = match be.spec() {
        kernels::DeviceSpec::Cuda(i) => profiler::GpuMonitor::new(i),
        _ => None,
    };
    let util = || monitor.as_ref().and_then(|m| m.utilization());
    let total_tokens: usize = reqs.requests.iter().map(|r| r.output_len).sum();
    let n_runs = (configs.len() + args.block_size.len()) * args.repeat;
    let bar = fmt::progress_bar((n_runs * total_tokens) as u64);
    let mut done = 0u64;
    if args.repeat == 0 {
        bail!("--repeat: at least 1");
    }
    let mut run_one = |cfg: RunConfig, what: String| -> anyhow::Result<RunResult> {
        bar.set_message(what.clone());
        let base = done;
        let r = serving::serve(&be, &model, &reqs, &prompts, &cfg, &util, &|n| {
            bar.set_position(base + n as u64)
        })
        .with_context(|| format!("serving ({what})"))?;
        done += total_tokens as u64;
        // One line per run, also where the bar is hidden (a log, not a terminal).
        bar.suspend(|| {
            eprintln!(
                "done: {what}: {:.2} s (prefill {:.2}, decode {:.2}, preempt/resume {:.2}; setup {:.2} s), {} preempted, {} moved",
                r.total_s,
                r.prefill_s,
                r.decode_s,
                r.preempt_resume_s,
                r.setup_s,
                r.preempted_requests,
                plans::human_bytes(r.counters.bytes_in + r.counters.bytes_out)
            )
        });
        Ok(r)
    };
    // Every run `--repeat` times, the rounds interleaved so a noisy spell of
    // the machine falls on every configuration alike; each keeps its median.
    let mut base_runs: Vec<Vec<RunResult>> = vec![Vec::new(); args.block_size.len()];
    let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); configs.len()];
    for round in 0..args.repeat {
        let tag = match args.repeat {
            1 => String::new(),
            n => format!(" (round {}/{n})", round + 1),
        };
        for (k, &bs) in args.block_size.iter().enumerate() {
            let full: usize = reqs
                .requests
                .iter()
                .map(|r| (r.input_len + r.output_len).div_ceil(bs))
                .sum();
            let cfg = RunConfig {
                policy: Policy::Swap,
                block_size: bs,
                capacity_blocks: full,
                max_running: args.max_batch,
                partial_share: 0.0,
                offload_share: 0.0,
                offload_admit_blocks: 0,
                sampling: runtime::Sampling::GREEDY,
            };
            base_runs[k].push(run_one(cfg, format!("unpressured, block {bs}{tag}"))?);
        }
        for (k, c) in configs.iter().enumerate() {
            let cfg = RunConfig {
                policy: c.policy,
                block_size: c.bs,
                capacity_blocks: c.capacity,
                max_running: args.max_batch,
                partial_share,
                offload_share,
                offload_admit_blocks,
                sampling: runtime::Sampling::GREEDY,
            };
            let what = format!(
                "{}, block {}, {} blocks{tag}",
                c.policy.name(),
                c.bs,
                c.capacity
            );
            runs[k].push(run_one(cfg, what)?);
        }
    }
    let baselines: Vec<(usize, RunResult)> = args
        .block_size
        .iter()
        .zip(base_runs)
        .map(|(&bs, r)| (bs, median(r)))
        .collect();
    let mut outcomes = Vec::new();
    for (c, r) in configs.iter().zip(runs) {
        let base = &baselines
            .iter()
            .find(|(b, _)| *b == c.bs)
            .expect("one per block size")
            .1;
        let outputs = r
            .iter()
            .map(|x| Divergence::of(&x.outputs, &base.outputs))
            .max_by_key(|d| d.requests)
            .unwrap_or_default();
        let result = median(r);
        let link_floor_s = serving::link_floor(&hw, args.dev.link_gbps, &result.counters);
        outcomes.push(Outcome {
            fraction: c.fraction,
            outputs,
            link_floor_s,
            baseline_s: base.total_s,
            result,
        });
    }
    bar.finish_and_clear();
    let shares = (partial_share, offload_share);
    print!(
        "{}",
        summary(&spec.name, &be.name(), &reqs, shares, &baselines, &outcomes)
    );
    write_outputs(args, (&model, weights), &baselines, &outcomes)?;
    if outcomes.iter().all(|o| o.outputs.same()) {
        return Ok(());
    }
    if be.is_cuda() {
        // Evidence in bench/results/2026-11-26-h200-overflow.md: the same
        // runs keep every token where the batch's composition is kept.
        eprintln!(
            "note: some greedy tokens differ from the unpressured run's (the table's last column: requests that differ @ the first token that does). On {} a GEMM rounds differently at a different batch size, and a policy that preempts changes the batch, so a near-tie can go the other way; the CPU backend's rows do not depend on the batch, and there kvpr overflow requires every token to match.",
            be.name()
        );
        return Ok(());
    }
    bail!("a policy's outputs differ from the unpressured run's (see the table's last column)")
}

/// The run with the median total time.
fn median(mut runs: Vec<RunResult>) -> RunResult {
    runs.sort_by(|a, b| a.total_s.total_cmp(&b.total_s));
    runs.swap_remove(runs.len() / 2)
}

fn summary(
    model: &str,
    device: &str,
    reqs: &Requests,
    (partial, offload): (f64, f64),
    baselines: &[(usize, RunResult)],
    outcomes: &[Outcome],
) -> String {
    let mut out = format!(
        "{model} | {device} | {} requests | recomputed from activations: {:.0}% of a resumed context (partial), {:.0}% of an offloaded prefix (offload)\n",
        reqs.requests.len(),
        partial * 100.0,
        offload * 100.0
    );
    for (bs, b) in baselines {
        out.push_str(&format!(
            "unpressured, block {bs}: {:.2} s, {:.1} tokens/s\n",
            b.total_s,
            b.throughput()
        ));
    }
    let header = [
        "policy",
        "block",
        "kv frac",
        "blocks",
        "total s",
        "vs unpressured",
        "overhead",
        "preempt+resume s",
        "tokens/s",
        "p50 ms/tok",
        "p99 ms/tok",
        "preempted",
        "evicted tok",
        "swapped",
        "recomputed tok",
        "link floor s",
        "outputs",
    ];
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let r = &o.result;
            vec![
                r.policy.clone(),
                r.block_size.to_string(),
                o.fraction.map_or("-".into(), |f| format!("{f:.2}")),
                r.capacity_blocks.to_string(),
                format!("{:.2}", r.total_s),
                format!("{:.2}x", o.vs_unpressured()),
                format!("{:.1}%", o.overhead() * 100.0),
                format!("{:.2}", r.preempt_resume_s),
                format!("{:.1}", r.throughput()),
                format!("{:.1}", r.tpot_p50_ms),
                format!("{:.1}", r.tpot_p99_ms),
                format!("{}/{}", r.preempted_requests, reqs.requests.len()),
                r.evicted_tokens.to_string(),
                plans::human_bytes(r.counters.bytes_out + r.counters.bytes_in),
                r.tokens_recomputed().to_string(),
                format!("{:.2}", o.link_floor_s),
                o.outputs.cell(reqs.requests.len()),
            ]
        })
        .collect();
    out.push_str(&fmt::table(&header, &rows));
    out
}

fn write_outputs(
    args: &OverflowArgs,
    (model, weights): (&Model, u64),
    baselines: &[(usize, RunResult)],
    outcomes: &[Outcome],
) -> anyhow::Result<()> {
    if let Some(p) = &args.csv {
        let mut s = String::from(
            "policy,block_size,kv_fraction,capacity_blocks,t_s,iteration_s,tokens,tokens_per_s,kv_blocks_used,kv_blocks,running,waiting,preempted,bytes_swapped,tokens_recomputed,gpu_util\n",
        );
        let all = baselines
            .iter()
            .map(|(_, r)| (r, None, "unpressured"))
            .chain(
                outcomes
                    .iter()
                    .map(|o| (&o.result, o.fraction, o.result.policy.as_str())),
            );
        for (r, f, name) in all {
            for x in &r.samples {
                s.push_str(&format!(
                    "{name},{},{},{},{:.6},{:.6},{},{:.3},{},{},{},{},{},{},{},{}\n",
                    r.block_size,
                    f.map_or(String::new(), |f| f.to_string()),
                    r.capacity_blocks,
                    x.t_s,
                    x.iteration_s,
                    x.tokens,
                    x.tokens_per_s,
                    x.kv_blocks_used,
                    x.kv_blocks,
                    x.running,
                    x.waiting,
                    x.preempted,
                    x.bytes_swapped,
                    x.tokens_recomputed,
                    x.gpu_util.map_or(String::new(), |u| u.to_string()),
                ));
            }
        }
        plans::write_atomic(p, s.as_bytes())
            .with_context(|| format!("writing --csv {}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let runs: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| {
                let mut v = serde_json::to_value(&o.result).unwrap_or_default();
                v["kv_fraction"] = serde_json::json!(o.fraction);
                v["baseline_s"] = serde_json::json!(o.baseline_s);
                v["overhead"] = serde_json::json!(o.overhead());
                v["vs_unpressured"] = serde_json::json!(o.vs_unpressured());
                v["throughput_tokens_per_s"] = serde_json::json!(o.result.throughput());
                v["tokens_recomputed"] = serde_json::json!(o.result.tokens_recomputed());
                v["outputs_match_unpressured"] = serde_json::json!(o.outputs.same());
                v["requests_differing"] = serde_json::json!(o.outputs.requests);
                v["first_differing_token"] = serde_json::json!(o.outputs.first_token);
                v["link_floor_s"] = serde_json::json!(o.link_floor_s);
                v
            })
            .collect();
        let doc = serde_json::json!({
            "model": model.spec().name,
            "weights_bytes": weights,
            "unpressured": baselines
                .iter()
                .map(|(bs, r)| serde_json::json!({"block_size": bs, "total_s": r.total_s, "throughput_tokens_per_s": r.throughput()}))
                .collect::<Vec<_>>(),
            "runs": runs,
        });
        let text = serde_json::to_string_pretty(&doc)?;
        plans::write_atomic(p, text.as_bytes())
            .with_context(|| format!("writing --json {}", p.display()))?;
    }
    if let Some(p) = &args.outputs {
        let mut s = String::new();
        let all = baselines.iter().map(|(_, r)| (r, "unpressured")).chain(
            outcomes
                .iter()
                .map(|o| (&o.result, o.result.policy.as_str())),
        );
        for (r, name) in all {
            for (id, toks) in r.outputs.iter().enumerate() {
                let text = model.tokenizer.decode(toks).unwrap_or_default();
                let line = serde_json::json!({
                    "run": name, "block_size": r.block_size, "capacity_blocks": r.capacity_blocks,
                    "id": id, "tokens": toks, "text": text,
                });
                s.push_str(&line.to_string());
                s.push('\n');
            }
        }
        plans::write_atomic(p, s.as_bytes())
            .with_context(|| format!("writing --outputs {}", p.display()))?;
    }
    if let Some(dir) = &args.plot {
        super::overflow_plot::write(dir, &model.spec().name, outcomes)
            .with_context(|| format!("writing --plot {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Divergence;

    #[test]
    fn divergence_counts_requests_and_finds_the_first_differing_token() {
        let want = vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8]];
        assert!(Divergence::of(&want, &want).same());
        let got = vec![vec![1, 2, 9], vec![4, 0, 6], vec![7, 8]];
        let d = Divergence::of(&got, &want);
        assert_eq!((d.requests, d.first_token), (2, Some(1)));
        assert_eq!(d.cell(3), "2/3 @1");
        // A missing token is a difference at the shorter length.
        let short = vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]];
        let d = Divergence::of(&short, &want);
        assert_eq!((d.requests, d.first_token), (1, Some(1)));
    }
}
