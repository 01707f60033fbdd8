//! The plan-following executor: every split (transfer, paper, chunked; 25%,
//! 50%, 100% recomputed; with and without a resident prefix) gives the same
//! greedy tokens and the same logits as the fully resident run (the backend
//! forward, which `candle_reference.rs` checks against candle-transformers).

mod common;

use common::plan;
use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::Schedule;
use plans::StoreLayout;
use runtime::{GenerationReport, Generator, Model, ModelSource, Sampling};
use scheduler::ForcedSplit;

fn backend() -> Backend {
    Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
}

/// The splits every model is checked on: (schedule, recomputed share,
/// resident tokens, chunks).
fn cases() -> Vec<(Schedule, f64, usize, usize)> {
    let mut v = vec![
        (Schedule::Transfer, 0.0, 0, 1),
        (Schedule::Transfer, 0.0, 2, 1),
    ];
    for g in [0, 2] {
        for f in [0.25, 0.5, 1.0] {
            v.push((Schedule::Paper, f, g, 1));
        }
        v.push((Schedule::Chunked, 0.5, g, 2));
        v.push((Schedule::Chunked, 1.0, g, 3));
    }
    v
}

fn generate(g: &mut Generator, prompts: &[String], n: usize) -> GenerationReport {
    g.generate(prompts, n, Sampling::GREEDY, |_, _| {}).unwrap()
}

/// Runs every case on `model` and checks it against the resident run.
fn check_all_splits(model: Model, prompts: Vec<String>, n: usize) {
    check_all_splits_on(model, backend(), prompts, n);
}

fn check_all_splits_on(model: Model, be: Backend, prompts: Vec<String>, n: usize) {
    let spec = model.spec().clone();
    let mut g = Generator::new(model, be, None);
    let base = generate(&mut g, &prompts, n);
    assert_eq!(base.tokens[0].len(), n);
    let p = g.model.tokenizer.encode(&prompts[0]).unwrap().len();
    for (schedule, f, resident, chunks) in cases() {
        let forced = ForcedSplit {
            recompute_fraction: f,
            resident_tokens: Some(resident),
            chunks: Some(chunks),
        };
        let pl = plan(&spec, prompts.len(), p, n, schedule, Some(forced));
        let what = format!("{schedule:?} recompute {f} resident {resident} chunks {chunks}");
        let (model, be) = (g.model, g.backend);
        g = Generator::new(model, be, Some(pl.clone()));
        let r = generate(&mut g, &prompts, n);
        assert_eq!(r.tokens, base.tokens, "{what}");
        let d = common::rel_diff(&r.final_logits, &base.final_logits);
        assert!(d < 1e-4, "{what}: relative logit difference {d}");
        // The store holds what this run's contexts read; over the plan's whole
        // coverage (its largest run) that is the summary's host memory.
        let (h, kvd, b) = (spec.hidden_size, spec.kv_dim(), prompts.len());
        let bytes = |l: StoreLayout| l.host_bytes(&spec, b, plans::Dtype::F32);
        let run_max = p + n - 1;
        assert_eq!(
            r.host_bytes,
            bytes(StoreLayout::for_contexts(&pl, p, run_max)),
            "{what}"
        );
        assert_eq!(
            bytes(StoreLayout::for_plan(&pl)),
            pl.summary.host_memory_bytes,
            "{what}"
        );
        assert!(r.host_bytes <= pl.summary.host_memory_bytes, "{what}");
        // The split the executor ran is the plan's, and bytes (all layers) follow from it.
        let nl = spec.n_layers;
        for st in &r.steps {
            let step = pl.step_for(st.context).unwrap();
            assert_eq!(st.resident, step.resident_tokens.min(st.context), "{what}");
            assert_eq!(st.bytes_x, (nl * b * st.recompute * h * 4) as u64, "{what}");
            assert_eq!(
                st.bytes_kv,
                (nl * b * st.transfer * 2 * kvd * 4) as u64,
                "{what}"
            );
            assert!(st.predicted_us.is_some());
        }
        if f > 0.0 {
            assert!(
                r.steps.iter().any(|s| s.recompute > 0),
                "{what}: nothing recomputed"
            );
        }
        if resident > 0 {
            assert!(r.steps.iter().all(|s| s.resident == resident), "{what}");
        }
    }
}

#[test]
fn synthetic_mha_every_split_matches() {
    let src = ModelSource::Preset {
        name: "tiny-mha".into(),
        seed: 11,
    };
    let be = backend();
    let model = Model::load(&src, &be).unwrap();
    // Two prompts of equal length (the byte tokenizer: equal byte counts).
    check_all_splits(model, vec!["kv cache!".into(), "recompute".into()], 8);
}

/// With the copy stream paced to a slow link, copies really run behind the
/// compute stream: any missing event shows up as wrong logits here.
#[test]
fn synthetic_mha_on_a_paced_link() {
    let src = ModelSource::Preset {
        name: "tiny-mha".into(),
        seed: 12,
    };
    let opts = BackendOptions {
        link_gbps: Some(0.02),
        ..BackendOptions::default()
    };
    let be = Backend::new(DeviceSpec::Cpu, opts).unwrap();
    let model = Model::load(&src, &be).unwrap();
    // Two sequences: each chunk's X lands as one `[b, n, h]` region.
    check_all_splits_on(model, be, vec!["paced".into(), "links".into()], 6);
}

#[test]
fn smollm2_every_split_matches() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let be = backend();
    let model = Model::load(&ModelSource::Gguf(path), &be).unwrap();
    let mut g = Generator::new(model, be, None);
    let t = std::time::Instant::now();
    let r = generate(&mut g, &["The capital of France is".to_string()], 4);
    eprintln!(
        "smollm2 resident run: {:?}, prefill {:.0} ms, decode {:.1} ms/token ({:.1} s)",
        r.texts[0],
        r.prefill_ms,
        r.decode_ms_per_token,
        t.elapsed().as_secs_f64()
    );
    assert!(r.texts[0].starts_with(" Paris"), "{:?}", r.texts[0]);
    check_all_splits(g.model, vec!["The capital of France is".into()], 4);
}

/// A plan made for prompts of up to 12 tokens (contexts 1 ..= 17) drives
/// shorter prompts with the tokens and logits of the resident run, recomputing
/// as it says, with a store sized for the run's own contexts; a prompt whose
/// contexts it does not cover is refused, naming both ranges.
#[test]
fn a_plan_for_a_longer_prompt_drives_shorter_ones() {
    let src = ModelSource::Preset {
        name: "tiny-mha".into(),
        seed: 13,
    };
    let be = backend();
    let model = Model::load(&src, &be).unwrap();
    let spec = model.spec().clone();
    let forced = ForcedSplit {
        recompute_fraction: 0.5,
        resident_tokens: Some(2),
        chunks: Some(2),
    };
    let pl = plan(&spec, 1, 12, 6, Schedule::Chunked, Some(forced));
    assert_eq!(pl.covered(), Some((1, 17)));
    let mut g = Generator::new(model, be, None);
    let mut stores = Vec::new();
    for prompt in ["kv", "recompute", "recompute!!!"] {
        let prompts = vec![prompt.to_string()];
        g = Generator::new(g.model, g.backend, None);
        let base = generate(&mut g, &prompts, 6);
        g = Generator::new(g.model, g.backend, Some(pl.clone()));
        let r = generate(&mut g, &prompts, 6);
        assert_eq!(r.tokens, base.tokens, "{prompt:?}");
        let d = common::rel_diff(&r.final_logits, &base.final_logits);
        assert!(d < 1e-4, "{prompt:?}: relative logit difference {d}");
        assert!(r.steps.iter().any(|s| s.recompute > 0), "{prompt:?}");
        assert!(r.host_bytes <= pl.summary.host_memory_bytes, "{prompt:?}");
        stores.push(r.host_bytes);
    }
    assert!(
        stores[0] < stores[2],
        "the 2-token run stores as much as the 12-token one: {stores:?}"
    );
    let e = g
        .generate(&["recompute!!!!".into()], 6, Sampling::GREEDY, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("covers contexts 1..=17") && e.contains("needs 13..=18"),
        "{e}"
    );
}

#[test]
fn bad_requests_are_clear_errors() {
    let src = ModelSource::Preset {
        name: "tiny-gqa".into(),
        seed: 1,
    };
    let be = backend();
    let model = Model::load(&src, &be).unwrap();
    let spec = model.spec().clone();
    let mut g = Generator::new(model, be, None);
    let err = |g: &mut Generator, prompts: &[&str], n: usize| {
        let p: Vec<String> = prompts.iter().map(|s| s.to_string()).collect();
        g.generate(&p, n, Sampling::GREEDY, |_, _| {})
            .unwrap_err()
            .to_string()
    };
    let e = err(&mut g, &[""], 2);
    assert!(e.contains("prompt 0") && e.contains("empty"), "{e}");
    let long = "x".repeat(spec.max_context + 1);
    let e = err(&mut g, &[&long], 2);
    assert!(e.contains("context"), "{e}");
    let e = err(&mut g, &["abc", "abcd"], 2);
    assert!(e.contains("prompt 1") && e.contains("equal"), "{e}");
    // A plan for batch 1 refused for batch 2, naming the field.
    let pl = plan(&spec, 1, 3, 2, Schedule::Transfer, None);
    let (model, be) = (g.model, g.backend);
    let mut g = Generator::new(model, be, Some(pl)).with_plan_path("p.json");
    let e = err(&mut g, &["abc", "def"], 2);
    assert!(e.contains("p.json") && e.contains("batch"), "{e}");
    // Temperature sampling is seeded.
    let (model, be) = (g.model, g.backend);
    let mut g = Generator::new(model, be, None);
    let s = Sampling {
        temperature: 0.8,
        top_k: Some(40),
        top_p: Some(0.9),
        seed: 5,
    };
    let a = g.generate(&["abc".into()], 5, s, |_, _| {}).unwrap();
    let b = g.generate(&["abc".into()], 5, s, |_, _| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
}

/// Prefill runs whole prompts in groups of at most `plans::PREFILL_ROWS`
/// rows (issue 19: its activations were `batch x prompt` rows at once, and
/// outside the GPU budget). Nine prompts of 470 tokens make two groups (8
/// and 1); each sequence's tokens and final logits are those of its prompt
/// alone, resident and under a plan that stores and recomputes, so every
/// group's K/V, `X` and resident rows land at its own sequences.
#[test]
fn prefill_in_groups_matches_each_prompt_alone() {
    let src = ModelSource::Preset {
        name: "tiny-mha".into(),
        seed: 5,
    };
    let be = backend();
    let model = Model::load(&src, &be).unwrap();
    let spec = model.spec().clone();
    let prompts: Vec<String> = (0..9)
        .map(|i| {
            let text = format!("prompt {i}: the quick brown fox {} ", "x".repeat(i));
            text.repeat(40)[..470].to_string()
        })
        .collect();
    let p = 470;
    assert!(plans::prefill_group(prompts.len(), p) < prompts.len());
    let n = 3;
    let forced = ForcedSplit {
        recompute_fraction: 0.5,
        resident_tokens: Some(16),
        chunks: Some(1),
    };
    let mut g = Generator::new(model, be, None);
    for plan_for in [None, Some(forced)] {
        let mk = |b: usize| plan_for.map(|f| plan(&spec, b, p, n, Schedule::Paper, Some(f)));
        let (model, be) = (g.model, g.backend);
        g = Generator::new(model, be, mk(prompts.len()));
        let all = generate(&mut g, &prompts, n);
        let v = spec.vocab_size;
        for (i, prompt) in prompts.iter().enumerate() {
            let (model, be) = (g.model, g.backend);
            g = Generator::new(model, be, mk(1));
            let alone = generate(&mut g, std::slice::from_ref(prompt), n);
            assert_eq!(all.tokens[i], alone.tokens[0], "prompt {i}, {plan_for:?}");
            let d = common::rel_diff(&all.final_logits[i * v..(i + 1) * v], &alone.final_logits);
            assert!(d < 1e-5, "prompt {i}, {plan_for:?}: {d}");
        }
    }
}
