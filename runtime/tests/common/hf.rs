//! The Hugging Face fixtures (`tests/fixtures/hf/`): where they are, what
//! transformers computed for each (`expected.json`), plans that force
//! recomputation, and how logits are compared.

use std::path::{Path, PathBuf};

use plans::{Plan, Schedule};
use runtime::Model;
use scheduler::ForcedSplit;
use serde_json::Value;

/// The fixtures' folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf")
}

/// Every fixture: each folder of [`fixtures`] with an `expected.json`, sorted.
pub fn runnable() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("expected.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
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
/// from stored activations, none resident (the profile's numbers only
/// shape a plan).
pub fn forced_plan(model: &Model, p: usize, n: usize, schedule: Schedule, fraction: f64) -> Plan {
    let forced = ForcedSplit {
        recompute_fraction: fraction,
        resident_tokens: Some(0),
        chunks: Some(if schedule == Schedule::Chunked { 2 } else { 1 }),
    };
    super::plan(model.spec(), 1, p, n, schedule, Some(forced))
}
