//! The Hugging Face fixtures (`tests/fixtures/hf/`): where they are, what
//! transformers computed for each (`expected.json`), plans that force
//! recomputation, and how logits are compared.

use std::path::{Path, PathBuf};

use plans::{Dtype, HardwareProfile, Plan, PlanHardware, Schedule, Workload};
use runtime::Model;
use scheduler::{make_plan, ForcedSplit, PlanRequest, ScheduleChoice, Solver};
use serde_json::Value;

/// The fixtures' folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf")
}

/// transformers' greedy run of a fixture.
pub struct Expected {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub tokens: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
}

/// The fixture's `expected.json`.
pub fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixtures().join(name).join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    Expected {
        prompt: v["prompt"].as_str().unwrap().to_string(),
        prompt_ids: ids("prompt_ids"),
        tokens: ids("tokens"),
        logits: v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
    }
}

/// A plan that forces `fraction` of every range's context to be recomputed
/// from stored activations (the profile's numbers only shape a plan).
pub fn forced_plan(model: &Model, p: usize, n: usize, schedule: Schedule, fraction: f64) -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/hardware/a100-pcie4.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"f16\"", "\"f32\"");
    let hw = HardwareProfile::parse(&path, &text).unwrap();
    let workload = Workload {
        batch: 1,
        prompt_len: p,
        gen_len: n,
        dtype: Dtype::F32,
        gpu_memory_budget: 1 << 40,
        host_memory_budget: 1 << 40,
    };
    let req = PlanRequest {
        schedule: ScheduleChoice::Fixed(schedule),
        block_tokens: 1,
        solver: Solver::Exhaustive,
        forced: Some(ForcedSplit {
            recompute_fraction: fraction,
            resident_tokens: Some(0),
            chunks: Some(if schedule == Schedule::Chunked { 2 } else { 1 }),
        }),
    };
    let id = PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    };
    make_plan(model.spec(), &hw, id, &workload, &req).unwrap()
}

/// The largest difference of two logit rows relative to the reference
/// row's largest magnitude.
pub fn row_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}
