//! Tiny random checkpoints written by Hugging Face transformers
//! (`tests/fixtures/hf/`, made by `scripts/hf-fixtures/make_fixtures.py`),
//! one per family and setting kvpr implements: kvpr gives transformers'
//! greedy tokens and its logits (f32) for each, with every K/V transferred
//! and under plans that recompute half (and all) of every range from stored
//! activations, so recomputation is held to the forward's function too. The
//! one fixture whose setting kvpr refuses (dynamic NTK RoPE) must be refused
//! by name.

use std::path::{Path, PathBuf};

use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::{Dtype, HardwareProfile, Plan, PlanHardware, Schedule, Workload};
use runtime::{Generator, Model, ModelSource, Sampling};
use scheduler::{make_plan, ForcedSplit, PlanRequest, ScheduleChoice, Solver};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf")
}

/// Every fixture directory kvpr must run (all but the refused one).
const RUN: &[&str] = &[
    "llama-mha",
    "llama-gqa-tied",
    "llama3-rope",
    "yarn-rope",
    "yarn-rope-attn-factor",
    "linear-rope",
    "llama-attn-bias",
    "llama-mlp-bias",
    "qwen2",
    "qwen3",
    "mistral-window",
];

struct Expected {
    prompt: String,
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn expected(name: &str) -> Expected {
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

fn cpu() -> Backend {
    Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
}

/// A plan that forces `fraction` of every range's context to be recomputed
/// from stored activations (the profile's numbers only shape a plan).
fn forced_plan(model: &Model, p: usize, n: usize, schedule: Schedule, fraction: f64) -> Plan {
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
fn row_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[test]
fn every_fixture_gives_transformers_tokens_and_logits_with_and_without_recomputation() {
    for name in RUN {
        let e = expected(name);
        let n = e.tokens.len();
        let source = ModelSource::HfDir(fixtures().join(name));
        let model = Model::load(&source, &cpu()).unwrap_or_else(|err| panic!("{name}: {err:#}"));
        let ids = model.tokenizer.encode(&e.prompt).unwrap();
        assert_eq!(ids, e.prompt_ids, "{name}: prompt ids");
        let p = ids.len();
        let cases = [
            (Schedule::Transfer, 0.0),
            (Schedule::Paper, 0.5),
            (Schedule::Chunked, 1.0),
        ];
        let mut g = Generator::new(model, cpu(), None);
        g.set_ignore_eos(true);
        g.keep_logits(true);
        for (schedule, fraction) in cases {
            let plan = forced_plan(&g.model, p, n, schedule, fraction);
            g.set_plan(plan);
            let what = format!("{name} ({schedule:?}, {fraction} recomputed)");
            let r = g
                .generate(
                    std::slice::from_ref(&e.prompt),
                    n,
                    Sampling::GREEDY,
                    |_, _| {},
                )
                .unwrap_or_else(|err| panic!("{what}: {err:#}"));
            assert_eq!(r.tokens[0], e.tokens, "{what}: tokens");
            if fraction > 0.0 {
                assert!(
                    r.steps.iter().any(|s| s.recompute > 0),
                    "{what}: nothing recomputed"
                );
            }
            // Under a sliding window a step moves at most the `W - 1`
            // cached positions it reads, however long the context.
            let spec = g.model.spec();
            if let Some(w) = spec.arch.sliding_window {
                let width = spec.hidden_size.max(2 * spec.kv_dim()) as u64;
                let bound = (spec.n_layers * (w - 1)) as u64 * width * 4;
                for st in &r.steps {
                    assert!(st.context >= w, "{what}: the window must matter");
                    let moved = st.bytes_x + st.bytes_kv;
                    assert!(
                        moved <= bound,
                        "{what}: context {}: {moved} B > {bound} B",
                        st.context
                    );
                    assert!(moved > 0, "{what}");
                }
            }
            assert_eq!(r.logits.len(), n, "{what}");
            for (i, (got, want)) in r.logits.iter().zip(&e.logits).enumerate() {
                let err = row_error(got, want);
                assert!(
                    err < 1e-4,
                    "{what}: token {i}: logits off by {err} (relative)"
                );
            }
        }
    }
}

#[test]
fn dynamic_ntk_rope_is_refused_by_name() {
    let source = ModelSource::HfDir(fixtures().join("dynamic-rope"));
    let err = format!("{:#}", Model::load(&source, &cpu()).err().expect("refused"));
    assert!(
        err.contains("rope_parameters.rope_type") && err.contains("dynamic"),
        "{err}"
    );
}

#[test]
fn a_bias_the_config_does_not_announce_is_an_error_naming_it() {
    // qwen2's biases under a config that says llama: the loader must not
    // drop them.
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures().join("qwen2")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"qwen2\"", "\"llama\"");
    std::fs::write(&cfg, text).unwrap();
    let err = format!(
        "{:#}",
        Model::load(&ModelSource::HfDir(dir.path().into()), &cpu())
            .err()
            .expect("refused")
    );
    assert!(
        err.contains("_proj.bias") && err.contains("not used"),
        "{err}"
    );
}

#[test]
fn generation_config_eos_ids_are_all_honoured() {
    let source = ModelSource::HfDir(fixtures().join("qwen2"));
    let m = Model::load(&source, &cpu()).unwrap();
    assert_eq!(m.tokenizer.eos_token_ids, vec![3, 2]);
    assert!(!m.tokenizer.add_bos);
    let l = Model::load(&ModelSource::HfDir(fixtures().join("llama-mha")), &cpu()).unwrap();
    assert!(l.tokenizer.add_bos && l.tokenizer.bos_token_id == Some(1));
}
