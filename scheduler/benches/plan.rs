//! Planning Llama-2-7B (preset), batch 32, prompt 4096, generation 1024, block
//! 16, on the A100 PCIe profile, f16, auto schedule: the LP solver against the
//! exhaustive search as the baseline. Prints the median of a few timed runs of
//! each, then hands over to criterion.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::Criterion;
use plans::{Dtype, HardwareProfile, ModelSpec, PlanHardware, Workload};
use scheduler::{make_plan, PlanRequest, ScheduleChoice, Solver};

struct Setup {
    model: ModelSpec,
    hw: HardwareProfile,
    id: PlanHardware,
    workload: Workload,
}

fn setup() -> Setup {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/hardware/a100-pcie4.json");
    let hw = HardwareProfile::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let id = PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    };
    let model = ModelSpec::preset("llama-2-7b").unwrap_or_else(|e| panic!("{e}"));
    let workload = Workload {
        batch: 32,
        prompt_len: 4096,
        gen_len: 1024,
        dtype: Dtype::F16,
        gpu_memory_budget: 40_000_000_000,
        host_memory_budget: 1 << 40,
    };
    Setup {
        model,
        hw,
        id,
        workload,
    }
}

fn plan(s: &Setup, solver: Solver) -> plans::Plan {
    let req = PlanRequest {
        schedule: ScheduleChoice::Auto,
        block_tokens: 16,
        solver,
        forced: None,
    };
    make_plan(&s.model, &s.hw, s.id.clone(), &s.workload, &req).unwrap_or_else(|e| panic!("{e}"))
}

fn median_ms(s: &Setup, solver: Solver, runs: usize) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(plan(s, solver));
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let s = setup();
    let p = plan(&s, Solver::Lp);
    println!(
        "llama-2-7b b=32 prompt=4096 gen=1024 block=16 a100-pcie4 f16 auto: {} steps, schedule {}, predicted {:.2} ms/step (transfer {:.2} ms, {:.2}x)",
        p.steps.len(),
        p.schedule.name(),
        p.summary.predicted_decode_step_us / 1e3,
        p.summary.transfer_only_step_us / 1e3,
        p.summary.speedup_vs_transfer
    );
    println!("| solver | median of 7 (ms) |\n|---|---:|");
    for (name, solver) in [("lp", Solver::Lp), ("exhaustive", Solver::Exhaustive)] {
        println!("| {name} | {:.1} |", median_ms(&s, solver, 7));
    }

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("plan_llama2_7b_b32_4096+1024");
    g.sample_size(10);
    g.bench_function("lp", |b| b.iter(|| black_box(plan(&s, Solver::Lp))));
    g.bench_function("exhaustive", |b| {
        b.iter(|| black_box(plan(&s, Solver::Exhaustive)))
    });
    g.finish();
    c.final_summary();
}
