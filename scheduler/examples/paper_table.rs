//! The predicted decode step of the three schedules on the A100 PCIe profile,
//! OPT-6.7B and Llama-2-7B in f16, over batch and context: a markdown table for
//! the README.
//!
//! Each row is one decode step at `context` tokens cached, with no resident
//! prefix (the GPU budget holds only the staging buffers). It calls the cost
//! model directly rather than `make_plan`, because OPT-6.7B's trained context
//! is 2048 and the table goes to 8192.
//!
//! Run: `cargo run -p scheduler --release --example paper_table`

use std::path::Path;

use plans::{Dtype, HardwareProfile, ModelSpec, Schedule, Workload};
use scheduler::{staging_bytes, CostModel, SchedError, Solver};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/hardware/a100-pcie4.json");
    let hw = HardwareProfile::load(&path)?;
    let block = 16;
    println!(
        "Predicted decode step on `{}` (f16, block {block}, no resident prefix, LP solver). \
         The cost model is called directly, bypassing the models' maximum-context check \
         (OPT-6.7B is trained for 2048 tokens).\n",
        hw.name
    );
    println!(
        "| model | batch | context | transfer (ms) | paper (ms) | chunked (ms) | paper vs transfer | chunked vs transfer | recompute share (paper / chunked) | chunks |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for name in ["opt-6.7b", "llama-2-7b"] {
        let model = ModelSpec::preset(name)?;
        for batch in [1, 4, 16, 64] {
            for context in [512, 1024, 2048, 4096, 8192] {
                row(&model, &hw, batch, context, block)?;
            }
        }
    }
    Ok(())
}

fn row(
    model: &ModelSpec,
    hw: &HardwareProfile,
    batch: usize,
    context: usize,
    block: usize,
) -> Result<(), SchedError> {
    let mut w = Workload {
        batch,
        prompt_len: context,
        gen_len: 1,
        dtype: Dtype::F16,
        gpu_memory_budget: 0,
        host_memory_budget: u64::MAX,
    };
    w.gpu_memory_budget = staging_bytes(model, &w);
    let cm = CostModel::new(model, hw, &w)?;
    let split = |sch| cm.best_split(context, 0, sch, block, Solver::Lp);
    let (t, p, c) = (
        split(Schedule::Transfer)?,
        split(Schedule::Paper)?,
        split(Schedule::Chunked)?,
    );
    let ms = |x: f64| x * 1e3;
    let red = |x: f64| 100.0 * (1.0 - x / t.cost.step);
    let share = |l: usize| 100.0 * l as f64 / context as f64;
    println!(
        "| {} | {batch} | {context} | {:.2} | {:.2} | {:.2} | {:.1}% | {:.1}% | {:.0}% / {:.0}% | {} |",
        model.name,
        ms(t.cost.step),
        ms(p.cost.step),
        ms(c.cost.step),
        red(p.cost.step),
        red(c.cost.step),
        share(p.recompute),
        share(c.recompute),
        c.chunks
    );
    Ok(())
}
