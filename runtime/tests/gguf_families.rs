//! GGUF checkpoints of every family kvpr runs, written as llama.cpp's
//! `convert_hf_to_gguf.py` writes them (`common::gguf_of`): the Hugging Face
//! fixtures of `tests/fixtures/hf/` (transformers' greedy tokens and logits in
//! `expected.json`) converted to `llama`, `qwen2` and `qwen3` GGUF files in
//! F32, F16 and BF16 with their tokenizer, loaded with `Model::load` and held
//! to transformers' numbers, with and without recomputation; Llama-3.1's
//! RoPE as llama.cpp stores it (`rope_freqs.weight`); every GGUF setting kvpr
//! does not implement refused by name; and the quantised types people
//! download (Q8_0, Q6_K, Q5_K, Q4_K) within what their precision allows of
//! the f32 file, every other type read or refused by name.

mod common;

use common::hf::{expected, fixtures, forced_plan, Expected};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use plans::Schedule;
use runtime::{
    Config, Generator, Model, ModelSource, RopeStyle, RuntimeError, Sampling, Tokenizer, Weights,
};

/// Each fixture and the GGUF architecture llama.cpp converts it to.
const FAMILIES: &[(&str, &str)] = &[
    ("llama-mha", "llama"),
    ("llama-gqa-tied", "llama"),
    ("llama-attn-bias", "llama"),
    ("llama-mlp-bias", "llama"),
    ("linear-rope", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
];

/// The fixture's weights as kvpr reads them from the Hugging Face directory.
fn fixture_weights(name: &str) -> Weights {
    Weights::load(&ModelSource::HfDir(fixtures().join(name)))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The fixture converted to a GGUF of `arch` in `dtype`, with its tokenizer.
fn fixture_gguf(name: &str, arch: &str, dtype: GgmlDType) -> common::Gguf {
    let mut g = common::gguf_of(&fixture_weights(name), arch, dtype);
    g.add_tokenizer(&fixtures().join(name));
    g
}

fn write(g: &common::Gguf, dir: &Path, file: &str) -> PathBuf {
    let p = dir.join(file);
    g.write(&p);
    p
}

/// The plans every GGUF model is run under: every K/V transferred, half and
/// all of every range recomputed from stored activations.
const PLANS: [(Schedule, f64); 3] = [
    (Schedule::Transfer, 0.0),
    (Schedule::Paper, 0.5),
    (Schedule::Chunked, 1.0),
];

/// Greedy `n` tokens of the fixture's prompt under each of [`PLANS`]
/// (EOS ignored, logits kept): `(tokens, logits)` per plan.
fn generate_all(model: Model, e: &Expected, what: &str) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let ids = model.tokenizer.encode(&e.prompt).unwrap();
    assert_eq!(ids, e.prompt_ids, "{what}: the GGUF tokenizer's prompt ids");
    let (p, n) = (ids.len(), e.tokens.len());
    let mut g = Generator::new(model, common::cpu(), None);
    g.set_ignore_eos(true);
    g.keep_logits(true);
    PLANS
        .iter()
        .map(|&(schedule, fraction)| {
            let plan = forced_plan(&g.model, p, n, schedule, fraction);
            g.set_plan(plan);
            let r = g
                .generate(
                    std::slice::from_ref(&e.prompt),
                    n,
                    Sampling::GREEDY,
                    |_, _| {},
                )
                .unwrap_or_else(|err| panic!("{what} ({schedule:?}): {err}"));
            if fraction > 0.0 {
                assert!(
                    r.steps.iter().any(|s| s.recompute > 0),
                    "{what} ({schedule:?}): nothing recomputed"
                );
            }
            assert_eq!(r.logits.len(), n, "{what}");
            (r.tokens[0].clone(), r.logits)
        })
        .collect()
}

/// Asserts transformers' tokens and logits (within `tol`, relative) under every plan.
fn assert_transformers(model: Model, e: &Expected, what: &str, tol: f32) {
    for ((tokens, logits), (schedule, fraction)) in generate_all(model, e, what).iter().zip(PLANS) {
        let what = format!("{what} ({schedule:?}, {fraction} recomputed)");
        assert_eq!(tokens, &e.tokens, "{what}: tokens");
        for (i, (got, want)) in logits.iter().zip(&e.logits).enumerate() {
            let err = common::rel_diff(got, want);
            assert!(
                err < tol,
                "{what}: token {i}: logits off by {err} (relative)"
            );
        }
    }
}

fn load(p: &Path) -> Model {
    Model::load(&ModelSource::Gguf(p.to_path_buf()), &common::cpu())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_family_as_an_f32_gguf_gives_transformers_tokens_and_logits() {
    let dir = tempfile::tempdir().unwrap();
    for &(name, arch) in FAMILIES {
        let e = expected(name);
        let p = write(&fixture_gguf(name, arch, GgmlDType::F32), dir.path(), name);
        let model = load(&p);
        let hf = fixture_weights(name).config;
        // The GGUF resolves to the same architecture as config.json
        // (Mistral aside, GGUF has no name for it), in llama.cpp's layout.
        assert_eq!(model.config.spec.arch, hf.spec.arch, "{name}: arch");
        assert_eq!(model.config.spec.head_dim, hf.spec.head_dim, "{name}");
        assert_eq!(model.config.rope_inv_freq, hf.rope_inv_freq, "{name}");
        let style = if arch == "llama" {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Halves
        };
        assert_eq!(model.config.rope, style, "{name}");
        assert_eq!(
            model.config.spec.tie_embeddings, hf.spec.tie_embeddings,
            "{name}"
        );
        assert_transformers(model, &e, &format!("{name} as {arch} F32 GGUF"), 1e-4);
    }
}

/// Rounds every matrix `common::gguf_of` stores as `dtype` through it, as
/// the file holds it; `None` when nothing changes (the checkpoint's values
/// are already `dtype` values).
fn rounded(w: &Weights, dtype: GgmlDType) -> Option<Weights> {
    let round = |v: &mut Vec<f32>, cols: usize| -> bool {
        let t = Tensor::from_vec(v.clone(), (v.len() / cols, cols), &Device::Cpu).unwrap();
        let back = QTensor::quantize(&t, dtype)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let changed = back != *v;
        *v = back;
        changed
    };
    let mut r = w.clone();
    let s = r.config.spec.clone();
    let (h, q, f) = (s.hidden_size, s.q_dim(), s.intermediate_size);
    let mut changed = round(&mut r.embed_tokens, h);
    if let Some(head) = &mut r.lm_head {
        changed |= round(head, h);
    }
    for b in &mut r.layers {
        let (a, m) = (&mut b.self_attn, &mut b.mlp);
        for (v, cols) in [
            (&mut a.q_proj, h),
            (&mut a.k_proj, h),
            (&mut a.v_proj, h),
            (&mut a.o_proj, q),
            (&mut m.gate_proj, h),
            (&mut m.up_proj, h),
            (&mut m.down_proj, f),
        ] {
            changed |= round(v, cols);
        }
    }
    changed.then_some(r)
}

/// Unit roundoff of a 16-bit float type: half the spacing of its values
/// relative to their magnitude (f16: 10 mantissa bits, bf16: 7).
fn unit_roundoff(dtype: GgmlDType) -> f32 {
    match dtype {
        GgmlDType::F16 => 2f32.powi(-11),
        GgmlDType::BF16 => 2f32.powi(-8),
        other => panic!("{other:?}"),
    }
}

/// 16-bit GGUFs. Where the fixture's weights are already values of the type
/// (f16 fixtures in F16; bf16 fixtures in BF16, and in F16 too: a bf16
/// value's 8 significant bits fit f16's 11 at these magnitudes), the file
/// holds the checkpoint exactly, and the result is transformers' to 1e-4.
/// Where it rounds them (the f32 fixture in either, the f16 one in BF16), the
/// file computes another function than the checkpoint: it must then equal
/// kvpr's forward of the same rounded weights read from the Hugging Face
/// directory (1e-4, same tokens: the GGUF path adds nothing), and stay
/// within what the rounding explains of transformers' logits along
/// transformers' own tokens (teacher-forced, so a flipped near-tie cannot
/// send the rest elsewhere): each weight moves by at most the unit roundoff
/// u, relative; one layer's output moves by about u times its few matrix
/// products in sequence, and the fixtures' logits by at most 10u measured
/// (llama-gqa-tied, bf16, three layers: 9.3u), so the bound is 25u.
#[test]
fn sixteen_bit_ggufs_hold_the_checkpoint_or_its_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let be = common::cpu();
    let mut exact_cases = Vec::new();
    for &(name, arch) in FAMILIES {
        let e = expected(name);
        let w = fixture_weights(name);
        for dtype in [GgmlDType::F16, GgmlDType::BF16] {
            let what = format!("{name} as {arch} {dtype:?} GGUF");
            let p = write(
                &fixture_gguf(name, arch, dtype),
                dir.path(),
                &format!("{name}-{dtype:?}.gguf"),
            );
            match rounded(&w, dtype) {
                None => {
                    exact_cases.push(what.clone());
                    assert_transformers(load(&p), &e, &what, 1e-4);
                }
                Some(r) => {
                    let tk = Tokenizer::from_hf_dir(&fixtures().join(name)).unwrap();
                    let oracle = Model::from_weights(&r, tk, &be).unwrap();
                    let want = generate_all(oracle, &e, &format!("{what} (oracle)"));
                    let got = generate_all(load(&p), &e, &what);
                    for (((gt, gl), (wt, wl)), (schedule, _)) in got.iter().zip(&want).zip(PLANS) {
                        assert_eq!(
                            gt, wt,
                            "{what} ({schedule:?}): tokens of the rounded weights"
                        );
                        for (i, (a, b)) in gl.iter().zip(wl).enumerate() {
                            let err = common::rel_diff(a, b);
                            assert!(err < 1e-4, "{what} ({schedule:?}): token {i}: {err}");
                        }
                    }
                    let forced = common::resident_forced(&be, &load(&p), &e.prompt_ids, &e.tokens);
                    let worst = forced
                        .iter()
                        .zip(&e.logits)
                        .map(|(a, b)| common::rel_diff(a, b))
                        .fold(0f32, f32::max);
                    let u = unit_roundoff(dtype);
                    eprintln!(
                        "{what}: rounded weights move the logits by {worst:.2e} = {:.1}u",
                        worst / u
                    );
                    assert!(
                        worst < 25.0 * u,
                        "{what}: logits off transformers' by {worst} (relative), over 25u = {}",
                        25.0 * u
                    );
                }
            }
        }
    }
    // Which files hold the checkpoint exactly follows from how each fixture
    // is stored (README: f32 llama-mha, f16 llama-gqa-tied/llama-mlp-bias,
    // bf16 the others).
    let mut want: Vec<String> = Vec::new();
    for &(name, arch) in FAMILIES {
        if name != "llama-mha" {
            want.push(format!("{name} as {arch} F16 GGUF"));
        }
        if !matches!(name, "llama-mha" | "llama-gqa-tied" | "llama-mlp-bias") {
            want.push(format!("{name} as {arch} BF16 GGUF"));
        }
    }
    exact_cases.sort();
    want.sort();
    assert_eq!(exact_cases, want);
}

/// Llama-3.1's RoPE as llama.cpp stores it: no metadata, a `rope_freqs.weight`
/// tensor of `head_dim / 2` divisors (base / scaled inverse frequency),
/// which kvpr divides the unscaled table by.
#[test]
fn llama3_rope_as_a_rope_freqs_tensor_gives_transformers_tokens_and_logits() {
    let name = "llama3-rope";
    let e = expected(name);
    let dir = tempfile::tempdir().unwrap();
    let hf = fixture_weights(name).config;
    for dtype in [GgmlDType::F32, GgmlDType::BF16] {
        let mut g = fixture_gguf(name, "llama", dtype);
        let factors = g.tensor_mut("rope_freqs.weight").data.clone();
        assert_eq!(factors.len(), hf.spec.head_dim / 2);
        // Low frequencies divided by the factor 8, the highest kept.
        assert_eq!(factors[0], 1.0);
        assert!(
            (factors[factors.len() - 1] - 8.0).abs() < 1e-5,
            "{factors:?}"
        );
        assert!(g.metadata.iter().all(|(k, _)| !k.contains("rope.scaling")));
        let p = write(&g, dir.path(), &format!("{name}-{dtype:?}.gguf"));
        let model = load(&p);
        assert_eq!(
            model.config.spec.arch.rope_scaling,
            Some(plans::RopeScaling::FreqFactors)
        );
        for (a, b) in model.config.rope_inv_freq.iter().zip(&hf.rope_inv_freq) {
            assert!((a / b - 1.0).abs() < 1e-6, "{a} vs {b}");
        }
        assert_transformers(model, &e, &format!("{name} as llama {dtype:?} GGUF"), 1e-4);

        // Without the tensor the function is another (the README's feature
        // effect, 0.83): the factors are what makes the difference.
        g.tensors.retain(|t| t.name != "rope_freqs.weight");
        let p = write(&g, dir.path(), "no-freqs.gguf");
        let (tokens, logits) = generate_all(load(&p), &e, "no rope_freqs").swap_remove(0);
        assert!(tokens != e.tokens || common::rel_diff(&logits[0], &e.logits[0]) > 1e-2);
    }
}

/// The error `Model::load` gives for a GGUF file, as the CLI prints it.
fn load_error(g: &common::Gguf, dir: &Path, file: &str) -> (RuntimeError, String) {
    let p = write(g, dir, file);
    let err = Model::load(&ModelSource::Gguf(p), &common::cpu())
        .err()
        .unwrap_or_else(|| panic!("{file}: loaded"));
    let text = err.to_string();
    assert!(text.contains(file), "the error names the file: {text}");
    (err, text)
}

/// An Unsupported refusal naming `key`.
fn assert_refused(err: &RuntimeError, text: &str, key: &str) {
    assert!(
        matches!(err, RuntimeError::Plan(plans::PlansError::Unsupported { key: k, .. }) if k == key),
        "expected a refusal of {key}: {text}"
    );
}

#[test]
fn gguf_settings_kvpr_does_not_implement_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Another architecture, with its own keys (as a real file has them) or
    // without any: named, with the ones kvpr runs.
    let w = fixture_weights("llama-mha");
    let mut g = common::gguf_of(&w, "gemma2", GgmlDType::F32);
    g.add_tokenizer(&fixtures().join("llama-mha"));
    let (err, text) = load_error(&g, d, "gemma2.gguf");
    assert_refused(&err, &text, "general.architecture");
    assert!(
        text.contains("\"gemma2\"") && text.contains("llama, qwen2 and qwen3"),
        "{text}"
    );
    let mut g = fixture_gguf("llama-mha", "llama", GgmlDType::F32);
    g.set("general.architecture", Value::String("mamba".into()));
    let (err, text) = load_error(&g, d, "mamba.gguf");
    assert_refused(&err, &text, "general.architecture");
    assert!(
        text.contains("\"mamba\"") && text.contains("llama, qwen2 and qwen3"),
        "{text}"
    );

    // YaRN, as the converter writes the yarn-rope fixture.
    let g = fixture_gguf("yarn-rope", "llama", GgmlDType::F32);
    let (err, text) = load_error(&g, d, "yarn.gguf");
    assert_refused(&err, &text, "llama.rope.scaling.type");
    assert!(text.contains("yarn"), "{text}");

    // Mistral's window of 6, as a llama GGUF would carry it.
    let g = fixture_gguf("mistral-window", "llama", GgmlDType::F32);
    let (err, text) = load_error(&g, d, "window.gguf");
    assert_refused(&err, &text, "llama.attention.sliding_window");
    assert!(text.contains('6'), "{text}");

    // Logit soft-capping (Gemma 2's keys in a llama file).
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        let mut g = fixture_gguf("llama-mha", "llama", GgmlDType::F32);
        g.set(&format!("llama.{key}"), Value::F32(50.0));
        let (err, text) = load_error(&g, d, "softcap.gguf");
        assert_refused(&err, &text, &format!("llama.{key}"));
    }

    // RoPE on part of each head: with head_dim implied by hidden/heads
    // (llama-mha, 8) and with an explicit key_length (qwen3, 16).
    for (name, arch) in [("llama-mha", "llama"), ("qwen3", "qwen3")] {
        let mut g = fixture_gguf(name, arch, GgmlDType::F32);
        let head_dim = fixture_weights(name).config.spec.head_dim;
        let key = format!("{arch}.rope.dimension_count");
        g.set(&key, Value::U32(head_dim as u32 / 2));
        let (err, text) = load_error(&g, d, "partial.gguf");
        assert_refused(&err, &text, &key);
        assert!(
            text.contains(&format!("of {head_dim} dimensions")),
            "{text}"
        );
    }

    // A mixture of experts (Mixtral is a llama GGUF with experts).
    let mut g = fixture_gguf("llama-mha", "llama", GgmlDType::F32);
    g.set("llama.expert_count", Value::U32(8));
    g.set("llama.expert_used_count", Value::U32(2));
    let (err, text) = load_error(&g, d, "moe.gguf");
    assert_refused(&err, &text, "llama.expert_count");

    // Settings that are off load: a window or soft-cap of 0.
    let mut g = fixture_gguf("llama-mha", "llama", GgmlDType::F32);
    g.set("llama.attention.sliding_window", Value::U32(0));
    g.set("llama.attn_logit_softcapping", Value::F32(0.0));
    g.set("llama.expert_count", Value::U32(0));
    let model = load(&write(&g, d, "off.gguf"));
    assert_eq!(model.config.spec.arch.sliding_window, None);
}

#[test]
fn a_gguf_tensor_the_forward_does_not_use_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let w = fixture_weights("llama-mha");
    let kv = w.config.spec.kv_dim();
    for (extra, shape) in [
        // A k bias without the q bias that announces biases.
        ("blk.0.attn_k.bias", vec![kv]),
        // An MoE router, an output-norm bias: nothing kvpr computes.
        ("blk.1.ffn_gate_inp.weight", vec![8, 32]),
        ("output_norm.bias", vec![32]),
    ] {
        let mut g = fixture_gguf("llama-mha", "llama", GgmlDType::F32);
        let n = shape.iter().product();
        g.add_tensor(extra, shape, vec![0.5; n], GgmlDType::F32);
        let (err, text) = load_error(&g, dir.path(), "extra.gguf");
        assert!(
            matches!(&err, RuntimeError::UnusedTensor { name, more: 0, .. } if name == extra),
            "{extra}: {text}"
        );
    }
    // A qwen3 file without its q/k norms is not a qwen3 model.
    let mut g = fixture_gguf("qwen3", "qwen3", GgmlDType::F32);
    g.tensors.retain(|t| {
        !t.name.ends_with("attn_q_norm.weight") && !t.name.ends_with("attn_k_norm.weight")
    });
    let (_, text) = load_error(&g, dir.path(), "qwen3-no-norm.gguf");
    assert!(text.contains("attn_q_norm"), "{text}");
}

/// The GGUF tokenizer: control tokens (type 3) and user-defined ones (type 4,
/// llama.cpp's converter writes the non-special added tokens so) are both
/// matched whole, as the Hugging Face tokenizer matches every added token;
/// only control tokens are dropped when decoding.
#[test]
fn gguf_tokenizer_matches_the_hugging_face_one() {
    let dir = tempfile::tempdir().unwrap();
    let hf = Tokenizer::from_hf_dir(&fixtures().join("llama-mha")).unwrap();
    let text = "Every layer<|im_end|> reads</s> the cache.";
    let mut g = fixture_gguf("llama-mha", "llama", GgmlDType::F32);
    let gguf = Tokenizer::from_gguf(&write(&g, dir.path(), "tk.gguf")).unwrap();
    assert_eq!(gguf.encode(text).unwrap(), hf.encode(text).unwrap());
    assert_eq!(
        gguf.decode(&gguf.encode(text).unwrap()).unwrap(),
        hf.decode(&hf.encode(text).unwrap()).unwrap()
    );
    assert_eq!((gguf.bos_token_id, gguf.add_bos), (Some(1), true));
    assert_eq!(gguf.eos_token_ids, vec![2]);

    // <|im_end|> as a user-defined token.
    let Some((_, Value::Array(types))) = g
        .metadata
        .iter_mut()
        .find(|(k, _)| k == "tokenizer.ggml.token_type")
    else {
        panic!("no token types")
    };
    types[3] = Value::I32(4);
    let gguf = Tokenizer::from_gguf(&write(&g, dir.path(), "tk4.gguf")).unwrap();
    let ids = gguf.encode(text).unwrap();
    assert_eq!(ids, hf.encode(text).unwrap());
    assert!(ids.contains(&3), "{ids:?}");
    assert!(gguf.decode(&ids).unwrap().contains("<|im_end|>"));
}

/// A small uniform generator (xorshift64*): the synthetic weights below.
struct Rng(u64);

impl Rng {
    fn vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        let a = std * 3f32.sqrt();
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let u =
                    (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * u - 1.0) * a
            })
            .collect()
    }
}

/// A two-layer GQA Llama whose every matrix has rows of 256 (K-quant
/// blocks): hidden 256, 4 heads of 64, 2 KV heads, MLP 512, vocab 304 (the
/// fixtures' tokenizer), untied; weights scaled as the synthetic presets.
fn synthetic_256() -> Weights {
    let mut spec = plans::ModelSpec::preset("tiny-gqa").unwrap();
    (
        spec.name,
        spec.n_layers,
        spec.hidden_size,
        spec.n_heads,
        spec.n_kv_heads,
        spec.head_dim,
        spec.intermediate_size,
        spec.vocab_size,
        spec.tie_embeddings,
    ) = ("synthetic-256".into(), 2, 256, 4, 2, 64, 512, 304, false);
    let (h, q, kv, f, v, l) = (256, 256, 128, 512, 304, 2);
    // The preset's structure (layers, untied head), refilled at this shape.
    let mut w = Weights::load(&ModelSource::Preset {
        name: "tiny-gqa".into(),
        seed: 1,
    })
    .unwrap();
    w.config = Config::new(spec, RopeStyle::Halves, Path::new("synthetic-256")).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let std_in = |n: usize| 1.0 / (n as f32).sqrt();
    w.embed_tokens = rng.vec(v * h, 1.0);
    w.lm_head = Some(rng.vec(v * h, std_in(h)));
    w.norm = rng.vec(h, 0.1).iter().map(|x| 1.0 + x).collect();
    for b in &mut w.layers {
        b.input_layernorm = rng.vec(h, 0.1).iter().map(|x| 1.0 + x).collect();
        b.post_attention_layernorm = rng.vec(h, 0.1).iter().map(|x| 1.0 + x).collect();
        let a = &mut b.self_attn;
        a.q_proj = rng.vec(q * h, std_in(h));
        a.k_proj = rng.vec(kv * h, std_in(h));
        a.v_proj = rng.vec(kv * h, std_in(h));
        a.o_proj = rng.vec(h * q, std_in(q * 2 * l));
        let m = &mut b.mlp;
        m.gate_proj = rng.vec(f * h, std_in(h));
        m.up_proj = rng.vec(f * h, std_in(h));
        m.down_proj = rng.vec(h * f, std_in(f * 2 * l));
    }
    w
}

/// The relative RMS error a format's rounding gives uniform weights: each
/// weight moves by up to half a step, uniformly, so by step / sqrt(12) on
/// average. Q8_0 is symmetric, 8 bits per block of 32: step = amax / 127,
/// and for uniform weights amax = sqrt(3) sigma. Q6_K is symmetric, 6 bits
/// (step amax / 32, its sub-block scales rounded to 8 bits). Q5_K and Q4_K
/// store a scale and a minimum per sub-block of 32: the range max - min =
/// 2 sqrt(3) sigma in 31 and 15 steps.
fn nominal_error(dtype: GgmlDType) -> f32 {
    let s3 = 3f32.sqrt();
    let step = match dtype {
        GgmlDType::Q8_0 => s3 / 127.0,
        GgmlDType::Q6K => s3 / 32.0,
        GgmlDType::Q5K => 2.0 * s3 / 31.0,
        GgmlDType::Q4K => 2.0 * s3 / 15.0,
        other => panic!("{other:?}"),
    };
    step / 12f32.sqrt()
}

/// The relative RMS difference of two tensors.
fn rms_error(got: &[f32], want: &[f32]) -> f32 {
    let d: f32 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
    let n: f32 = want.iter().map(|b| b * b).sum();
    (d / n).sqrt()
}

/// The quantised types people download, on a model whose every matrix is
/// stored in the type. Each matrix's rounding is within its format's
/// nominal error ([`nominal_error`]: 0.4% Q8_0, 1.6% Q6_K, 3.2% Q5_K, 6.7%
/// Q4_K). A logit is a chain of such products (two layers of attention and
/// MLP, the head), each adding its own independent error, so the logits move
/// by a small multiple of it: measured 2x here, bounded at 4x. Compared along
/// the f32 file's greedy tokens (teacher-forced: a near-tie flipped by the
/// rounding must not send the rest elsewhere).
#[test]
fn quantised_ggufs_load_generate_and_stay_within_their_precision() {
    let dir = tempfile::tempdir().unwrap();
    let be = common::cpu();
    let w = synthetic_256();
    let tokenizer_of = fixtures().join("llama-mha");
    let e = expected("llama-mha");
    let file = |dtype: GgmlDType| {
        let mut g = common::gguf_of(&w, "llama", dtype);
        g.add_tokenizer(&tokenizer_of);
        // Every matrix is stored in the type (rows of 256), norms in f32.
        for t in &g.tensors {
            let want = if t.shape.len() == 2 {
                dtype
            } else {
                GgmlDType::F32
            };
            assert_eq!(t.dtype, want, "{}", t.name);
        }
        write(&g, dir.path(), &format!("q-{dtype:?}.gguf"))
    };
    let reference = load(&file(GgmlDType::F32));
    let n = 16;
    let mut g = Generator::new(reference, common::cpu(), None);
    g.set_ignore_eos(true);
    let r = g
        .generate(
            std::slice::from_ref(&e.prompt),
            n,
            Sampling::GREEDY,
            |_, _| {},
        )
        .unwrap();
    let tokens = r.tokens[0].clone();
    let ref_logits = common::resident_forced(&be, &g.model, &e.prompt_ids, &tokens);
    let mut errors = Vec::new();
    for dtype in [
        GgmlDType::Q8_0,
        GgmlDType::Q6K,
        GgmlDType::Q5K,
        GgmlDType::Q4K,
    ] {
        let p = file(dtype);
        let nominal = nominal_error(dtype);
        // The rounding the file holds (the embeddings, the head and each
        // layer's up projection) is within the format's nominal error.
        let q = Weights::load(&ModelSource::Gguf(p.clone())).unwrap();
        let weights = [
            rms_error(&q.embed_tokens, &w.embed_tokens),
            rms_error(q.lm_head(), w.lm_head()),
            rms_error(&q.layers[1].mlp.up_proj, &w.layers[1].mlp.up_proj),
        ];
        for err in weights {
            assert!(
                err < nominal,
                "{dtype:?}: weights off by {err}, over {nominal}"
            );
        }
        // It generates (greedy, n tokens)...
        let mut gq = Generator::new(load(&p), common::cpu(), None);
        gq.set_ignore_eos(true);
        let rq = gq
            .generate(
                std::slice::from_ref(&e.prompt),
                n,
                Sampling::GREEDY,
                |_, _| {},
            )
            .unwrap_or_else(|err| panic!("{dtype:?}: {err}"));
        assert_eq!(rq.tokens[0].len(), n, "{dtype:?}");
        // ...and along the f32 file's tokens its logits stay within a small
        // multiple of that error of the f32 file's.
        let got = common::resident_forced(&be, &gq.model, &e.prompt_ids, &tokens);
        let worst = got
            .iter()
            .zip(&ref_logits)
            .map(|(a, b)| common::rel_diff(a, b))
            .fold(0f32, f32::max);
        eprintln!(
            "{dtype:?}: weights off by {weights:?}, logits by {worst:.2e} (relative; nominal {nominal:.2e})"
        );
        assert!(
            worst < 4.0 * nominal,
            "{dtype:?}: logits off by {worst}, over 4 x {nominal}"
        );
        assert!(worst > 0.0, "{dtype:?}: no rounding at all?");
        errors.push(worst);
    }
    // More bits, closer logits.
    assert!(errors.windows(2).all(|p| p[0] < p[1]), "{errors:?}");
}

/// Every GGML type kvpr reads dequantises to within its format's error;
/// every other type is refused naming the tensor and the type (by name where
/// the header reader knows it, by llama.cpp's id otherwise).
#[test]
fn every_readable_type_dequantises_and_every_other_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let w = synthetic_256();
    let up = &w.layers[0].mlp.up_proj;
    let scale = (up.iter().map(|x| x * x).sum::<f32>() / up.len() as f32).sqrt();
    for (dtype, tol) in [
        (GgmlDType::F32, 0.0),
        (GgmlDType::F16, 1e-3),
        (GgmlDType::BF16, 5e-3),
        (GgmlDType::Q4_0, 0.1),
        (GgmlDType::Q4_1, 0.1),
        (GgmlDType::Q5_0, 0.05),
        (GgmlDType::Q5_1, 0.05),
        (GgmlDType::Q8_0, 0.01),
        (GgmlDType::Q2K, 0.4),
        (GgmlDType::Q3K, 0.2),
        (GgmlDType::Q4K, 0.1),
        (GgmlDType::Q5K, 0.05),
        (GgmlDType::Q6K, 0.03),
    ] {
        let p = write(
            &common::gguf_of(&w, "llama", dtype),
            dir.path(),
            &format!("t-{dtype:?}.gguf"),
        );
        let g = Weights::load(&ModelSource::Gguf(p)).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        let got = &g.layers[0].mlp.up_proj;
        let rms = (got
            .iter()
            .zip(up)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            / up.len() as f32)
            .sqrt()
            / scale;
        assert!(rms <= tol, "{dtype:?}: relative RMS error {rms} over {tol}");
    }
    // Q8_1 and Q8_K pass the header reader (their sizes are known) but no
    // reader loads them as weights: refused naming the tensor and the type.
    for (dtype, name) in [(GgmlDType::Q8_1, "Q8_1"), (GgmlDType::Q8K, "Q8K")] {
        let p = write(
            &common::gguf_of(&w, "llama", dtype),
            dir.path(),
            &format!("t-{dtype:?}.gguf"),
        );
        let err = Weights::load(&ModelSource::Gguf(p))
            .err()
            .unwrap_or_else(|| panic!("{name} read"))
            .to_string();
        assert!(
            err.contains("token_embd.weight") && err.contains(&format!("type {name} ")),
            "{err}"
        );
    }
    // llama.cpp's other types: the IQ family, integer and f64 tensors,
    // ternary and MXFP4 ones.
    let p = write(
        &common::gguf_of(&w, "llama", GgmlDType::F32),
        dir.path(),
        "other.gguf",
    );
    let bytes = std::fs::read(&p).unwrap();
    for id in (16..=29).chain([34, 35, 39]) {
        std::fs::write(&p, &bytes).unwrap();
        common::patch_tensor_type(&p, "blk.0.ffn_up.weight", id);
        let err = Weights::load(&ModelSource::Gguf(p.clone()))
            .err()
            .unwrap_or_else(|| panic!("type {id} read"))
            .to_string();
        assert!(
            err.contains("other.gguf")
                && err.contains("blk.0.ffn_up.weight")
                && err.contains(&format!("type {id}")),
            "{err}"
        );
    }
}
