//! Tiny random checkpoints written by Hugging Face transformers
//! (`tests/fixtures/hf/`, made by `scripts/hf-fixtures/make_fixtures.py`),
//! one per family and setting kvpr implements: kvpr gives transformers'
//! greedy tokens and its logits (f32) for each, with every K/V transferred
//! and under plans that recompute half (and all) of every range from stored
//! activations, so recomputation is held to the forward's function too.
//! Dynamic NTK RoPE, whose rotation depends on the prompt's length, runs
//! in `kvpr run` and is refused by name by the paged engine.

mod common;

use common::hf::{expected, fixtures, forced_plan, runnable};
use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::Schedule;
use runtime::{Generator, Model, ModelSource, Sampling};

fn cpu() -> Backend {
    Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
}

#[test]
fn every_fixture_gives_transformers_tokens_and_logits_with_and_without_recomputation() {
    let names = runnable();
    assert_eq!(names.len(), 12, "{names:?}");
    for name in &names {
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
                let err = common::rel_diff(got, want);
                assert!(
                    err < 1e-4,
                    "{what}: token {i}: logits off by {err} (relative)"
                );
            }
        }
    }
}

/// The dynamic-NTK fixture's prompt (17) is past its
/// max_position_embeddings (12), so the scaling is exercised from the
/// prefill on; kvpr runs it to factor x 12 = 36 positions. The paged
/// engine, which serves requests of different prompt lengths with one
/// table, refuses it by name.
#[test]
fn dynamic_ntk_runs_past_max_position_and_the_paged_engine_refuses_it() {
    let be = cpu();
    let source = ModelSource::HfDir(fixtures().join("dynamic-rope"));
    let model = Model::load(&source, &be).unwrap();
    assert!(expected("dynamic-rope").prompt_ids.len() > 12);
    assert_eq!(model.spec().max_context, 36);
    assert!(model.prompt_rope(&be, 17).unwrap().is_some());
    let cfg = runtime::PagedConfig {
        block_size: 4,
        capacity_blocks: 16,
        max_batch: 2,
        keep_activations: true,
        max_request_tokens: 20,
        host_tokens: 40,
    };
    let err = runtime::PagedEngine::new(&be, &model, cfg)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("dynamic NTK") && err.contains("kvpr run"),
        "{err}"
    );
    // A model without it has no per-prompt table.
    let plain = Model::load(&ModelSource::HfDir(fixtures().join("llama-mha")), &be).unwrap();
    assert!(plain.prompt_rope(&be, 17).unwrap().is_none());
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
