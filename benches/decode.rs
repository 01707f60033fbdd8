//! Decode benchmark on the CPU backend: `cargo bench --bench decode`
//! (`-- --quick` for a shorter run).
//!
//! 1. **Overlap on a paced link.** A synthetic MHA preset in the GPU's regime:
//!    the GEMM throughput `F` at the recompute shape is calibrated on an
//!    unpaced backend, the copy stream is paced to `B = p*F / (2*h*r)` for
//!    r = 3 (an H100's regime), 2 and 1, each paced backend is calibrated
//!    (quick) and `transfer`, `paper` and `chunked` plans made from its profile
//!    are run with the executor. At r = 3, batch 1 (prompt 2048) and batch 4
//!    (prompt 1024) get full tables: measured against predicted steps and
//!    speedups beside the I/O floor, then a per-layer probe timing the
//!    recompute GEMMs, RoPE and the copies alone and together against the cost
//!    model's terms, to show where a miss comes from. r = 2 and 1 (batch 1,
//!    shorter) feed a sensitivity table.
//! 2. **SmolLM2 decode against candle-transformers.** Our executor (`transfer`
//!    plan, nothing resident, unpaced link) against `quantized_llama` (its
//!    default quantised path) on the same GGUF in the same process, beside the
//!    floor of reading the f32 weights once per token.
//!
//! Prints llama-bench-style markdown tables (mean ± sd over repeats, warm-up
//! not timed). Options (after `--`): `--quick`, `--only overlap|smollm2`,
//! `--model NAME`, `--r X[,Y..]`, `--link-gbps X`, `--batch N`, `--prompt N`,
//! `--gen N`, `--repeats N`.

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::{HardwareProfile, ModelSpec, Plan, PlanHardware, Schedule, Workload};
use profiler::CalibrateOptions;
use runtime::{GenerationReport, Generator, Model, ModelSource, Sampling, StepReport};
use scheduler::{make_plan, PlanRequest, ScheduleChoice, Solver};

#[path = "decode/probe.rs"]
mod probe;
#[path = "decode/report.rs"]
mod report;

use report::{mean, pm, Table};

type Res<T> = std::result::Result<T, Box<dyn Error>>;

/// Bytes per element: the CPU backend computes in f32.
const P_BYTES: f64 = 4.0;

#[derive(Clone, Debug)]
struct Args {
    quick: bool,
    only: Option<String>,
    model: String,
    r: Vec<f64>,
    link_gbps: Option<f64>,
    batch: Option<usize>,
    prompt: Option<usize>,
    gen: usize,
    repeats: usize,
    smol_gen: usize,
}

impl Args {
    fn parse() -> Res<Args> {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let quick = argv.iter().any(|a| a == "--quick");
        let mut a = Args {
            quick,
            only: None,
            model: "llama-2-7b-tiny".into(),
            r: if quick {
                vec![3.0]
            } else {
                vec![3.0, 2.0, 1.0]
            },
            link_gbps: None,
            batch: None,
            prompt: None,
            gen: if quick { 9 } else { 17 },
            repeats: if quick { 2 } else { 3 },
            smol_gen: if quick { 17 } else { 33 },
        };
        let mut it = argv.iter();
        while let Some(k) = it.next() {
            let mut val = || -> Res<String> {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{k} needs a value").into())
            };
            match k.as_str() {
                "--only" => a.only = Some(val()?),
                "--model" => a.model = val()?,
                "--r" => {
                    a.r = val()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--link-gbps" => a.link_gbps = Some(val()?.parse()?),
                "--batch" => a.batch = Some(val()?.parse()?),
                "--prompt" => a.prompt = Some(val()?.parse()?),
                "--gen" => a.gen = val()?.parse()?,
                "--repeats" => a.repeats = val()?.parse()?,
                // cargo passes `--bench`; anything else unknown is ignored too.
                _ => {}
            }
        }
        if a.repeats == 0
            || a.batch == Some(0)
            || a.prompt == Some(0)
            || a.gen < 2
            || a.r.is_empty()
        {
            return Err(
                "--repeats, --batch and --prompt must be positive, --gen at least 2".into(),
            );
        }
        Ok(a)
    }

    fn wants(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == part)
    }
}

fn main() {
    // candle's default quantised path is the baseline: never its f32 fallback.
    std::env::remove_var("CANDLE_DEQUANTIZE_ALL");
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("decode bench: {e}");
            std::process::exit(2);
        }
    };
    let t0 = Instant::now();
    print_header(&args);
    let mut failed = false;
    if args.wants("overlap") {
        if let Err(e) = overlap(&args) {
            eprintln!("overlap benchmark failed: {e}");
            failed = true;
        }
    }
    if args.wants("smollm2") {
        if let Err(e) = smollm2(&args) {
            eprintln!("SmolLM2 benchmark failed: {e}");
            failed = true;
        }
    }
    println!("\n_total bench time {:.0} s_", t0.elapsed().as_secs_f64());
    if failed {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- reporting

fn print_header(a: &Args) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}+dirty")
            } else {
                c
            }
        }
        None => "unknown".into(),
    };
    println!("# kvpr decode benchmark (CPU backend)\n");
    println!(
        "machine: {cpu}, {cores} cores · load average {} · commit {commit} · {} · mode {}",
        load_average(),
        profiler::rfc3339_utc(std::time::SystemTime::now()),
        if a.quick { "quick" } else { "default" }
    );
}

/// The 1-minute load average: other work on a shared machine shows here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------- plans

/// GEMM throughput at `(n, k)`, FLOP/s, at the largest measured `m`.
fn gemm_flops_large_m(hw: &HardwareProfile, n: usize, k: usize) -> f64 {
    hw.gemm
        .rows_curve(plans::Dtype::F32, n as u64, k as u64)
        .last()
        .map_or(f64::NAN, |&(_, tflops)| tflops * 1e12)
}

/// The pinned host-to-device bandwidth at the largest measured size, GB/s.
fn link_large_gbps(hw: &HardwareProfile) -> f64 {
    hw.link
        .h2d_pinned
        .points
        .iter()
        .max_by_key(|p| p.bytes)
        .map_or(f64::NAN, |p| p.gbps)
}

/// Nothing resident: the GPU budget holds the staging buffers only.
fn workload(spec: &ModelSpec, batch: usize, prompt_len: usize, gen_len: usize) -> Workload {
    let mut w = Workload {
        batch,
        prompt_len,
        gen_len,
        dtype: plans::Dtype::F32,
        gpu_memory_budget: 0,
        host_memory_budget: 1 << 40,
    };
    w.gpu_memory_budget = scheduler::staging_bytes(spec, &w);
    w
}

fn plan_for(spec: &ModelSpec, hw: &HardwareProfile, w: &Workload, sch: Schedule) -> Res<Plan> {
    let req = PlanRequest {
        schedule: ScheduleChoice::Fixed(sch),
        block_tokens: 16,
        solver: Solver::Lp,
        forced: None,
    };
    let id = PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    };
    Ok(make_plan(spec, hw, id, w, &req)?)
}

fn run(g: &mut Generator, prompts: &[String], n: usize) -> Res<GenerationReport> {
    Ok(g.generate(prompts, n, Sampling::GREEDY, |_, _| {})?)
}

/// Swaps the plan of a generator (keeps model and backend).
fn with_plan(g: Generator, plan: Option<Plan>) -> Generator {
    Generator::new(g.model, g.backend, plan)
}

/// Rounds to two significant digits.
fn sig2(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return x;
    }
    let scale = 10f64.powi(1 - x.log10().floor() as i32);
    (x * scale).round() / scale
}

// ---------------------------------------------------------------- part 1

/// The configurations of part 1: `(batch, prompt)`.
fn configs(a: &Args) -> Vec<(usize, usize)> {
    match (a.batch, a.prompt) {
        (Some(b), Some(p)) => vec![(b, p)],
        (Some(b), None) => vec![(b, 1024)],
        (None, Some(p)) => vec![(1, p)],
        // b = 1 and b = 4: the executor runs one recompute GEMM of b*l/c rows
        // per chunk, the shape the model costs (see the probe).
        (None, None) if a.quick => vec![(1, 1536)],
        (None, None) => vec![(1, 2048), (4, 1024)],
    }
}

/// One paced link: its rate, backend and calibrated profile.
struct Regime {
    link: f64,
    r: f64,
    f: f64,
    cal_s: f64,
    attempts: usize,
    backend: Backend,
    hw: HardwareProfile,
}

fn overlap(a: &Args) -> Res<()> {
    let spec = ModelSpec::preset(&a.model)?;
    if !spec.recompute_saves_bytes() {
        return Err(format!("{} is not MHA (h >= 2*h_kv): pick an MHA preset", spec.name).into());
    }
    let (h, kvd) = (spec.hidden_size, spec.kv_dim());
    let cal_opts = |name: &str| CalibrateOptions {
        quick: true,
        model: Some(spec.clone()),
        name: Some(name.into()),
    };
    // F on an unpaced backend picks each link rate; each paced backend is then
    // calibrated (quick) and its profile makes that regime's plans.
    let free = Backend::new(DeviceSpec::Cpu, BackendOptions::default())?;
    let f0 = gemm_flops_large_m(
        &profiler::calibrate(&free, &cal_opts("cpu"), &mut |_| {})?,
        kvd,
        h,
    );
    drop(free);
    let links: Vec<f64> = match a.link_gbps {
        Some(l) => vec![l],
        None => {
            a.r.iter()
                .map(|r| sig2(P_BYTES * f0 / (2.0 * h as f64 * r) / 1e9))
                .collect()
        }
    };
    let mut regimes = Vec::new();
    for link in links {
        let opts = BackendOptions {
            link_gbps: Some(link),
            ..Default::default()
        };
        let backend = Backend::new(DeviceSpec::Cpu, opts)?;
        let t = Instant::now();
        // A calibration whose GEMMs ran while another process held a core
        // (F far below the unpaced F) is taken again, at most twice.
        let name = format!("cpu-link-{link}");
        let (mut hw, mut attempts) = (
            profiler::calibrate(&backend, &cal_opts(&name), &mut |_| {})?,
            1,
        );
        while attempts < 3 && gemm_flops_large_m(&hw, kvd, h) < 0.85 * f0 {
            hw = profiler::calibrate(&backend, &cal_opts(&name), &mut |_| {})?;
            attempts += 1;
        }
        let f = gemm_flops_large_m(&hw, kvd, h);
        regimes.push(Regime {
            link,
            r: P_BYTES * f / (2.0 * h as f64 * link * 1e9),
            f,
            cal_s: t.elapsed().as_secs_f64(),
            attempts,
            backend,
            hw,
        });
    }

    println!(
        "\n## 1. Overlap on a paced link ({}, synthetic MHA)\n",
        spec.name
    );
    let mut t = Table::new(&[
        ("model", false),
        ("h", true),
        ("h_kv", true),
        ("layers", true),
        ("F unpaced (GFLOP/s)", true),
        ("F paced (GFLOP/s)", true),
        ("link set (GB/s)", true),
        ("link measured (GB/s)", true),
        ("r", true),
        ("calibration (s)", true),
        ("attempts", true),
    ]);
    for rg in &regimes {
        t.row(vec![
            spec.name.clone(),
            h.to_string(),
            kvd.to_string(),
            spec.n_layers.to_string(),
            format!("{:.1}", f0 / 1e9),
            format!("{:.1}", rg.f / 1e9),
            format!("{}", rg.link),
            format!("{:.3}", link_large_gbps(&rg.hw)),
            format!("{:.2}", rg.r),
            format!("{:.0}", rg.cal_s),
            rg.attempts.to_string(),
        ]);
    }
    t.print();
    println!(
        "\nF: GEMM throughput at the recompute shape (n, k) = ({kvd}, {h}), largest calibrated m \
         (quick calibration, m <= 1024). Each link is set to B = p*F/(2*h*r) for r in {:?} from \
         the unpaced F; the r column is recomputed with the paced run's own F, and that run's \
         profile makes its plans (a paced calibration whose F came out more than 15% below the \
         unpaced F, i.e. measured while another process held a core, is taken again, at most 3 \
         attempts). The first regime gets the full tables, the others the \
         sensitivity table at the end.",
        a.r
    );
    let src = ModelSource::Preset {
        name: spec.name.clone(),
        seed: 0,
    };
    let mut model = Model::load(&src, &regimes[0].backend)?;
    let mut sens = Table::new(&[
        ("r", true),
        ("link (GB/s)", true),
        ("batch", true),
        ("prompt", true),
        ("steps", true),
        ("paper: measured / predicted speedup", true),
        ("paper meas/pred", true),
        ("chunked: measured / predicted speedup", true),
        ("chunked meas/pred", true),
    ]);
    for (k, rg) in regimes.into_iter().enumerate() {
        let main = k == 0;
        let cfgs = if main {
            configs(a)
        } else {
            configs(a)[..1].to_vec()
        };
        let (gen, repeats) = if main {
            (a.gen, a.repeats)
        } else {
            (a.gen.min(9), a.repeats.min(2))
        };
        // A model's CPU buffers serve any CPU backend: swap the paced one in.
        let mut g = Generator::new(model, rg.backend, None);
        for (b, p) in cfgs {
            let run = OverlapRun {
                spec: &spec,
                hw: &rg.hw,
                link: rg.link,
                batch: b,
                prompt: p,
                gen,
                repeats,
                verbose: main,
            };
            let (g2, sp) = overlap_config(&run, g)?;
            g = g2;
            let cell = |i: usize| format!("{:.2} / {:.2}", sp[i].0, sp[i].1);
            sens.row(vec![
                format!("{:.2}", rg.r),
                format!("{}", rg.link),
                b.to_string(),
                sp[0].2.to_string(),
                format!("{} x {repeats}", gen - 1),
                cell(1),
                format!("{:.2}", sp[1].0 / sp[1].1),
                cell(2),
                format!("{:.2}", sp[2].0 / sp[2].1),
            ]);
        }
        model = g.model;
    }
    println!("\n### Sensitivity to r (all regimes of this run)\n");
    sens.print();
    println!(
        "\nThe recompute term the model gets wrong (see \"where the time goes\") is a larger share \
         of the step when r is small, so the measured speedup falls further below the plan's."
    );
    Ok(())
}

/// What one configuration of part 1 runs.
struct OverlapRun<'a> {
    spec: &'a ModelSpec,
    hw: &'a HardwareProfile,
    link: f64,
    batch: usize,
    prompt: usize,
    gen: usize,
    repeats: usize,
    /// Print the tables and the probe (else only return the speedups).
    verbose: bool,
}

/// One `(batch, prompt)` configuration: the three plans, run and compared.
/// Per schedule: measured and predicted speedup vs transfer, and the prompt tokens.
type Speedups = Vec<(f64, f64, usize)>;

fn overlap_config(o: &OverlapRun, mut g: Generator) -> Res<(Generator, Speedups)> {
    let (spec, hw, link, batch, prompt) = (o.spec, o.hw, o.link, o.batch, o.prompt);
    // Equal-length prompts (the byte tokenizer: one token per byte).
    let prompts: Vec<String> = (0..batch)
        .map(|i| {
            let base = format!("prompt {i}: the KV cache lives in host memory. ");
            base.chars().cycle().take(prompt).collect()
        })
        .collect();
    let p = g.model.tokenizer.encode(&prompts[0])?.len();
    let w = workload(spec, batch, p, o.gen);
    let plans: Vec<(Schedule, Plan)> = Schedule::ALL
        .iter()
        .map(|&s| Ok((s, plan_for(spec, hw, &w, s)?)))
        .collect::<Res<_>>()?;
    // Warm-up (not timed): each plan, a few tokens.
    for (_, pl) in &plans {
        g = with_plan(g, Some(pl.clone()));
        run(&mut g, &prompts, 3)?;
    }
    // Repeats interleave the schedules so drifting noise hits them alike.
    let k = plans.len();
    let (mut steps, mut rep_means) = (vec![Vec::new(); k], vec![Vec::new(); k]);
    let mut tokens: Vec<Vec<u32>> = Vec::new();
    for _ in 0..o.repeats {
        for (i, (_, pl)) in plans.iter().enumerate() {
            g = with_plan(g, Some(pl.clone()));
            let rep = run(&mut g, &prompts, o.gen)?;
            let us: Vec<f64> = rep.steps.iter().map(|s| s.measured_us).collect();
            rep_means[i].push(mean(&us));
            steps[i].extend(rep.steps.iter().copied());
            tokens.push(rep.tokens.concat());
        }
    }
    let same_tokens = tokens.iter().all(|t| *t == tokens[0]);

    let bps = link * 1e9;
    let width = spec.hidden_size.min(2 * spec.kv_dim()) as f64;
    let avg = |st: &[StepReport], f: &dyn Fn(&StepReport) -> f64| {
        mean(&st.iter().map(f).collect::<Vec<_>>())
    };
    let pred_of = |s: &StepReport| s.predicted_us.unwrap_or(f64::NAN);
    let (meas_tr, pred_tr) = (mean(&rep_means[0]), avg(&steps[0], &pred_of));
    let mut t = Table::new(&[
        ("schedule", false),
        ("recomputed l/s", true),
        ("chunks", true),
        ("measured step (ms)", true),
        ("predicted step (ms)", true),
        ("meas/pred step", true),
        ("I/O floor (ms)", true),
        ("x floor", true),
        ("measured speedup", true),
        ("predicted speedup", true),
        ("meas/pred speedup", true),
        ("link util", true),
    ]);
    let mut verdicts = Vec::new();
    let mut speedups = Vec::new();
    for (i, (sch, _)) in plans.iter().enumerate() {
        let st = &steps[i];
        let ms: Vec<f64> = st.iter().map(|s| s.measured_us / 1e3).collect();
        let (meas, pred) = (mean(&rep_means[i]), avg(st, &pred_of));
        let floor = avg(st, &|s| {
            spec.n_layers as f64 * batch as f64 * (s.context - s.resident) as f64 * width * P_BYTES
                / bps
                * 1e6
        });
        let sp: Vec<f64> = rep_means[0]
            .iter()
            .zip(&rep_means[i])
            .map(|(t, x)| t / x)
            .collect();
        let (meas_sp, pred_sp) = (meas_tr / meas, pred_tr / pred);
        speedups.push((meas_sp, pred_sp, p));
        let util = avg(st, &|s| {
            (s.bytes_x + s.bytes_kv) as f64 / (bps * s.measured_us * 1e-6)
        });
        t.row(vec![
            sch.name().to_string(),
            format!("{:.2}", avg(st, &|s| s.recompute as f64 / s.context as f64)),
            format!("{:.0}", avg(st, &|s| s.chunks as f64)),
            pm(&ms, 1),
            format!("{:.1}", pred / 1e3),
            format!("{:.2}", meas / pred),
            format!("{:.1}", floor / 1e3),
            format!("{:.2}", meas / floor),
            pm(&sp, 2),
            format!("{pred_sp:.2}"),
            format!("{:.2}", meas_sp / pred_sp),
            format!("{:.0}%", util * 100.0),
        ]);
        if *sch != Schedule::Transfer {
            let dev = meas_sp / pred_sp - 1.0;
            verdicts.push(format!(
                "- {}: measured {meas_sp:.2}x vs predicted {pred_sp:.2}x ({:+.0}%): {}",
                sch.name(),
                dev * 100.0,
                if dev.abs() <= 0.15 {
                    "within 15%, target met"
                } else {
                    "target missed"
                }
            ));
        }
    }
    if !o.verbose {
        return Ok((g, speedups));
    }
    println!(
        "\n### r = {:.2}, batch {batch}, prompt {p}, {} decode steps x {} repeats\n",
        P_BYTES * gemm_flops_large_m(hw, spec.kv_dim(), spec.hidden_size)
            / (2.0 * spec.hidden_size as f64 * bps),
        o.gen - 1,
        o.repeats
    );
    t.print();
    println!(
        "\nmeasured step: mean ± sd over all decode steps (contexts {p}..{}); speedup vs transfer: \
         ratio of means (± sd of the per-repeat ratios); I/O floor: L*b*s*min(h, 2*h_kv)*p / B at \
         the set rate; link util: bytes moved / (B * step). Greedy tokens identical across \
         schedules and repeats: {same_tokens}.\n",
        p + o.gen - 2
    );
    println!("{}", verdicts.join("\n"));
    let measured: Vec<f64> = rep_means.iter().map(|v| mean(v) / 1e3).collect();
    probe::probe(&g.backend, spec, hw, &w, &plans, &measured)?;
    Ok((g, speedups))
}

// ---------------------------------------------------------------- part 2

fn smollm2_path() -> Option<PathBuf> {
    match std::env::var_os("KVPR_MODEL") {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/kvpr/SmolLM2-135M-Instruct.Q4_1.gguf")),
    }
}

/// Memory bandwidth, GB/s (bytes read + written per second), of a large
/// memcpy on `threads` threads: best of a few.
fn memcpy_gbps(threads: usize) -> f64 {
    let n = 64usize << 20; // f32 elements: 256 MiB per buffer
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        let per = n.div_ceil(threads);
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(per).zip(src.chunks(per)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    2.0 * (n * 4) as f64 / best / 1e9
}

fn load_candle(path: &std::path::Path) -> Res<ModelWeights> {
    let mut f = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut f)?;
    Ok(ModelWeights::from_gguf(content, &mut f, &Device::Cpu)?)
}

/// One forward of candle's model: logits of the last position.
fn candle_step(m: &mut ModelWeights, ids: &[u32], pos: usize) -> Res<Vec<f32>> {
    let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    Ok(m.forward(&x, pos)?.flatten_all()?.to_vec1()?)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// candle's greedy decode: per-token ms of `steps` timed decode forwards.
fn candle_decode(m: &mut ModelWeights, prompt: &[u32], steps: usize) -> Res<(Vec<f64>, Vec<u32>)> {
    let mut logits = candle_step(m, prompt, 0)?;
    let mut toks = vec![argmax(&logits)];
    let mut ms = Vec::with_capacity(steps);
    for i in 0..steps {
        let t = Instant::now();
        logits = candle_step(m, &toks[i..=i], prompt.len() + i)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        toks.push(argmax(&logits));
    }
    Ok((ms, toks))
}

fn smollm2(a: &Args) -> Res<()> {
    println!("\n## 2. SmolLM2-135M decode on the CPU: ours against candle-transformers\n");
    let Some(path) = smollm2_path().filter(|p| p.is_file()) else {
        println!(
            "skipped: {} not found (set KVPR_MODEL or run scripts/fetch-model.sh)",
            smollm2_path().map_or("the model".into(), |p| p.display().to_string())
        );
        return Ok(());
    };
    let prompt_text = "The capital of France is".to_string();
    let src = ModelSource::Gguf(path.clone());
    let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default())?;
    let t = Instant::now();
    let model = Model::load(&src, &be)?;
    let load_ours = t.elapsed().as_secs_f64();
    let spec = model.spec().clone();
    let prompt = model.tokenizer.encode(&prompt_text)?;
    let n = a.smol_gen;
    let w = workload(&spec, 1, prompt.len(), n);
    let hw = profiler::calibrate(
        &be,
        &CalibrateOptions {
            quick: true,
            model: Some(spec.clone()),
            name: Some("cpu-unpaced".into()),
        },
        &mut |_| {},
    )?;
    let plan = plan_for(&spec, &hw, &w, Schedule::Transfer)?;
    let prompts = vec![prompt_text.clone()];

    // Ours: transfer plan (K/V through the host store) and, for reference, resident.
    let mut g = Generator::new(model, be, Some(plan.clone()));
    run(&mut g, &prompts, 4)?; // warm-up
    let mut ours: Vec<f64> = Vec::new();
    let mut pred = Vec::new();
    let mut ours_text = String::new();
    let mut ours_tokens = Vec::new();
    let mut steps = 0;
    for _ in 0..a.repeats {
        let r = run(&mut g, &prompts, n)?;
        ours.push(r.decode_ms_per_token);
        pred.extend(r.steps.iter().filter_map(|s| s.predicted_us));
        steps = r.steps.len();
        ours_text = r.texts[0].clone();
        ours_tokens = r.tokens[0].clone();
        if !r
            .steps
            .iter()
            .all(|s| s.resident == 0 && s.transfer == s.context)
        {
            return Err("the transfer plan kept some K/V resident or recomputed".into());
        }
    }
    let mut g = with_plan(g, None);
    run(&mut g, &prompts, 4)?;
    let mut resident = Vec::new();
    for _ in 0..a.repeats {
        resident.push(run(&mut g, &prompts, n)?.decode_ms_per_token);
    }
    drop(g);

    // candle-transformers' quantised Llama, same prompt, same number of timed steps.
    let t = Instant::now();
    let mut cm = load_candle(&path)?;
    let load_candle_s = t.elapsed().as_secs_f64();
    candle_decode(&mut cm, &prompt, 3)?; // warm-up
    let mut candle = Vec::new();
    let mut candle_tokens = Vec::new();
    for _ in 0..a.repeats {
        let (ms, toks) = candle_decode(&mut cm, &prompt, steps)?;
        candle.push(mean(&ms));
        candle_tokens = toks;
    }
    drop(cm);

    let bw = memcpy_gbps(1).max(memcpy_gbps(2));
    let weight_bytes = (spec.layer_params() as f64 * spec.n_layers as f64
        + (spec.vocab_size * spec.hidden_size) as f64)
        * P_BYTES;
    let floor_ms = weight_bytes / (bw * 1e9) * 1e3;
    let candle_ms = mean(&candle);
    let mut t2 = Table::new(&[
        ("implementation", false),
        ("ms/token", true),
        ("tokens/s", true),
        ("vs candle", true),
        ("floor (ms)", true),
        ("x floor", true),
    ]);
    let mut add = |name: &str, v: &[f64]| {
        let m = mean(v);
        t2.row(vec![
            name.into(),
            pm(v, 1),
            format!("{:.1}", 1e3 / m),
            format!("{:.2}", m / candle_ms),
            format!("{floor_ms:.1}"),
            format!("{:.2}", m / floor_ms),
        ]);
    };
    add("kvpr, transfer plan, unpaced link (f32)", &ours);
    add("kvpr, all resident, no plan (f32)", &resident);
    add("candle-transformers quantized_llama (Q4_1 x Q8)", &candle);
    t2.print();
    let ratio = mean(&ours) / candle_ms;
    println!(
        "\n{} decode steps after a {}-token prompt, mean ± sd over {} repeats (warm-up not timed). \
         Plan predicted {:.1} ms/token for the transfer run. Floor: f32 weights read per token \
         ({:.0} MB: layers + output head) over the memcpy bandwidth {bw:.1} GB/s (read + write, \
         best of 1 and 2 threads). Load: ours {load_ours:.1} s, candle {load_candle_s:.1} s.",
        steps,
        prompt.len(),
        a.repeats,
        mean(&pred) / 1e3,
        weight_bytes / 1e6,
    );
    let ours_tok = ours_tokens.len().min(candle_tokens.len());
    let agree = ours_tokens
        .iter()
        .zip(&candle_tokens)
        .take_while(|(x, y)| x == y)
        .count();
    println!(
        "Greedy text (ours): {ours_text:?}; candle's greedy tokens agree on the first {agree} of {ours_tok} \
         (candle quantises activations to Q8, so texts part at a near-tie)."
    );
    println!(
        "- ours/candle = {ratio:.2} (target <= 1.5): {}",
        if ratio <= 1.5 {
            "target met"
        } else {
            "target missed"
        }
    );
    Ok(())
}
