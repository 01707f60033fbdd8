//! Our f32 Llama forward (the `kernels` CPU backend, everything resident)
//! against an independent implementation: candle-transformers'
//! `quantized_llama`, on the same weights.
//!
//! candle quantises activations to Q8 for quantised weights unless
//! `CANDLE_DEQUANTIZE_ALL=1` is set before it loads the model; it reads the
//! variable once per thread, so this comparison lives in its own test binary
//! (its own process) and sets the variable first. Synthetic models are written
//! as f32 GGUF files, which candle always runs in f32.

mod common;

use std::path::Path;
use std::time::Instant;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use kernels::Backend;
use runtime::{Model, ModelSource, Tokenizer, Weights};

const STEPS: usize = 16;

fn load_candle(path: &Path) -> ModelWeights {
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap()
}

fn candle_logits(m: &mut ModelWeights, ids: &[u32], pos: usize) -> Vec<f32> {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&x, pos)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Runs our greedy decode of `prompt` for `STEPS` steps, feeds candle the
/// same tokens, and checks every step's logits (within `1e-4` relative) and
/// greedy token. Returns the tokens, the worst difference, and our and
/// candle's decode ms/token.
fn compare(
    be: &Backend,
    model: &Model,
    theirs: &mut ModelWeights,
    prompt: &[u32],
) -> (Vec<u32>, f32, f64, f64) {
    let (ours, us) = common::resident_greedy(be, model, prompt, STEPS);
    let (mut worst, mut t_theirs, mut tokens) = (0f32, 0f64, vec![]);
    let mut b = candle_logits(theirs, prompt, 0);
    for (step, a) in ours.iter().enumerate() {
        let d = common::rel_diff(a, &b);
        assert!(d < 1e-4, "step {step}: relative difference {d}");
        worst = worst.max(d);
        let (na, nb) = (common::argmax(a), common::argmax(&b));
        assert_eq!(na, nb, "step {step}: greedy tokens differ");
        tokens.push(na);
        if step == STEPS {
            break;
        }
        let t0 = Instant::now();
        b = candle_logits(theirs, &[na], prompt.len() + step);
        t_theirs += t0.elapsed().as_secs_f64();
    }
    let ours_ms = us.iter().sum::<f64>() / 1e3 / STEPS as f64;
    (tokens, worst, ours_ms, t_theirs * 1e3 / STEPS as f64)
}

/// A synthetic MHA model (seeded weights), written as an f32 GGUF (so both
/// sides use the interleaved RoPE layout of llama.cpp files).
#[test]
fn synthetic_mha_matches_candle_transformers() {
    let src = ModelSource::Preset {
        name: "llama-2-7b-tiny".into(),
        seed: 3,
    };
    let w = Weights::load(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    common::write_gguf(&w, &path, GgmlDType::F32);
    let be = common::cpu();
    let g = Weights::load(&ModelSource::Gguf(path.clone())).unwrap();
    let model = common::model_of(&g, &be);
    let mut theirs = load_candle(&path);
    let (_, worst, ..) = compare(&be, &model, &mut theirs, &[1, 7, 42, 99, 3]);
    eprintln!("synthetic: worst relative logit difference {worst:.2e}");
}

#[test]
fn smollm2_matches_candle_transformers() {
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let Some(path) = common::smollm2() else {
        return;
    };
    let src = ModelSource::Gguf(path.clone());
    let tk = Tokenizer::load(&src).unwrap();
    let prompt = tk.encode("The capital of France is").unwrap();

    let mut theirs = load_candle(&path);
    let be = common::cpu();
    let model = Model::load(&src, &be).unwrap();
    let (tokens, worst, t_ours, t_theirs) = compare(&be, &model, &mut theirs, &prompt);
    drop(model);
    let text = tk.decode(&tokens).unwrap();
    eprintln!("greedy continuation: {text:?}; worst relative logit difference {worst:.2e}");
    assert!(text.contains("Paris"), "{text:?}");
    drop(theirs);

    // candle's own quantised path (activations in Q8), for the speed line:
    // a fresh thread with the variable cleared reads it anew.
    std::env::remove_var("CANDLE_DEQUANTIZE_ALL");
    let p = path.clone();
    let t_quant = std::thread::spawn(move || {
        let mut q = load_candle(&p);
        let _ = candle_logits(&mut q, &prompt, 0);
        let t0 = Instant::now();
        for (i, &id) in tokens[..STEPS].iter().enumerate() {
            let _ = candle_logits(&mut q, &[id], prompt.len() + i);
        }
        t0.elapsed().as_secs_f64()
    })
    .join()
    .unwrap();
    eprintln!(
        "decode ms/token: ours f32 on the CPU backend {t_ours:.1}, candle f32 (dequantised) \
         {t_theirs:.1}, candle quantised {:.1}",
        t_quant * 1e3 / STEPS as f64
    );
}
