//! Loading models from every source, and clear errors for broken files.

mod common;

use candle_core::quantized::GgmlDType;
use runtime::{ModelSource, RopeStyle, Tokenizer, Weights};

fn preset(name: &str, seed: u64) -> Weights {
    Weights::load(&ModelSource::Preset {
        name: name.into(),
        seed,
    })
    .unwrap()
}

/// Prompt + greedy decode on the CPU backend (all resident); returns the
/// prompt's and every step's logits.
fn run(w: &Weights, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let be = common::cpu();
    let model = common::model_of(w, &be);
    common::resident_greedy(&be, &model, prompt, steps).0
}

#[test]
fn synthetic_weights_are_deterministic_and_activations_stay_small() {
    let (a, b, c) = (
        preset("tiny-mha", 1),
        preset("tiny-mha", 1),
        preset("tiny-mha", 2),
    );
    assert_eq!(a.layers[1].mlp.down_proj, b.layers[1].mlp.down_proj);
    assert_ne!(a.layers[1].mlp.down_proj, c.layers[1].mlp.down_proj);
    assert_eq!(a.config.rope, RopeStyle::Halves);
    let logits = run(&a, &[1, 2, 3, 4, 5], 3);
    for l in &logits {
        let m = l.iter().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(m.is_finite() && m > 0.1 && m < 100.0, "max |logit| {m}");
    }
}

#[test]
fn hf_directory_round_trips() {
    let w = preset("tiny-gqa", 5);
    let dir = tempfile::tempdir().unwrap();
    common::write_hf_dir(&w, dir.path());
    let src = ModelSource::parse(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(src, ModelSource::HfDir(dir.path().to_path_buf()));
    let back = Weights::load(&src).unwrap();
    assert_eq!(back.config.rope, RopeStyle::Halves);
    assert_eq!(
        back.layers[1].self_attn.k_proj,
        w.layers[1].self_attn.k_proj
    );
    assert_eq!(back.lm_head(), w.lm_head());
    assert_eq!(run(&back, &[3, 1, 4], 2), run(&w, &[3, 1, 4], 2));
}

#[test]
fn gguf_uses_the_interleaved_rope_and_matches_the_hf_forward() {
    let w = preset("tiny-mha", 9);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    common::write_gguf(&w, &p, GgmlDType::F32);
    let g = Weights::load(&ModelSource::parse(p.to_str().unwrap()).unwrap()).unwrap();
    assert_eq!(g.config.rope, RopeStyle::Interleaved);
    assert_eq!(g.embed_tokens, w.embed_tokens);
    let (a, b) = (run(&g, &[7, 8, 9, 10], 4), run(&w, &[7, 8, 9, 10], 4));
    for (x, y) in a.iter().zip(&b) {
        let d = common::rel_diff(x, y);
        assert!(d < 1e-5, "relative difference {d}");
    }
}

#[test]
fn gguf_quantised_types_dequantise() {
    let w = preset("tiny-mha", 4);
    let dir = tempfile::tempdir().unwrap();
    for (dt, tol) in [
        (GgmlDType::F16, 1e-3),
        (GgmlDType::Q8_0, 1e-2),
        (GgmlDType::Q4_0, 0.2),
        (GgmlDType::Q4_1, 0.2),
    ] {
        let p = dir.path().join(format!("m-{dt:?}.gguf"));
        common::write_gguf(&w, &p, dt);
        let g = Weights::load(&ModelSource::Gguf(p)).unwrap();
        let (a, b) = (&g.layers[0].mlp.up_proj, &w.layers[0].mlp.up_proj);
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
            .sqrt()
            / b.iter().map(|y| y * y).sum::<f32>().sqrt();
        assert!(err < tol, "{dt:?}: relative error {err}");
        assert!(err > 0.0 || dt == GgmlDType::F32);
    }
}

#[test]
fn truncated_gguf_is_a_clear_error() {
    let w = preset("tiny-mha", 1);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    common::write_gguf(&w, &p, GgmlDType::Q8_0);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = Weights::load(&ModelSource::Gguf(p.clone()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.gguf") && e.contains("GGUF"), "{e}");
    // A header cut short fails in the metadata, with the same kind of message.
    std::fs::write(&p, &bytes[..40]).unwrap();
    let e = Weights::load(&ModelSource::Gguf(p.clone()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.gguf") && e.contains("GGUF"), "{e}");
    std::fs::write(&p, b"not a gguf file at all").unwrap();
    let e = Weights::load(&ModelSource::Gguf(p))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.gguf"), "{e}");
}

#[test]
fn broken_hf_directories_are_named() {
    let w = preset("tiny-gqa", 1);
    let dir = tempfile::tempdir().unwrap();
    common::write_hf_dir(&w, dir.path());
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
    let e = Weights::load(&ModelSource::HfDir(dir.path().into()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    // A checkpoint without a layer's tensor names it.
    let mut small = w.clone();
    small.config.spec.n_layers = 1;
    small.layers.truncate(1);
    common::write_hf_dir(&small, dir.path());
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"num_hidden_layers\":1", "\"num_hidden_layers\":2");
    std::fs::write(&cfg, text).unwrap();
    let e = Weights::load(&ModelSource::HfDir(dir.path().into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.layers.1.input_layernorm.weight"), "{e}");
}

#[test]
fn smollm2_loads_and_tokenizes() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let src = ModelSource::Gguf(path);
    let tk = Tokenizer::load(&src).unwrap();
    let text = "The capital of France is";
    let ids = tk.encode(text).unwrap();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(tk.decode(&ids).unwrap(), text);
    assert!(!tk.eos_token_ids.is_empty());
    let spec = plans::ModelSpec::from_gguf(match &src {
        ModelSource::Gguf(p) => p,
        _ => unreachable!(),
    })
    .unwrap();
    let preset = plans::ModelSpec::preset("smollm2-135m").unwrap();
    assert_eq!(
        (
            spec.n_layers,
            spec.hidden_size,
            spec.kv_dim(),
            spec.vocab_size
        ),
        (
            preset.n_layers,
            preset.hidden_size,
            preset.kv_dim(),
            preset.vocab_size
        )
    );
}
