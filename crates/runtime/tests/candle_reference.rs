//! Our f32 Llama forward against an independent implementation:
//! candle-transformers' `quantized_llama` on the same SmolLM2 GGUF.
//!
//! candle quantises activations to Q8 unless `CANDLE_DEQUANTIZE_ALL=1` is set
//! before it loads the model; it reads the variable once per thread, so this
//! comparison lives in its own test binary (its own process) and sets the
//! variable first.

mod common;

use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use kernels::{Backend, BackendOptions, DeviceSpec};
use runtime::{Generator, Model, ModelSource, Reference, Sampling, Tokenizer, Weights};

const STEPS: usize = 16;

fn load_candle(path: &std::path::Path) -> ModelWeights {
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
    let w = Weights::load(&src).unwrap();
    let mut ours = Reference::new(&w, 1, prompt.len() + STEPS + 1).unwrap();
    // The same weights on the CPU backend: the executor's forward.
    let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap();
    let model = Model::from_weights(&w, Tokenizer::load(&src).unwrap(), &be).unwrap();
    drop(w);

    let mut a = ours.forward(&prompt, 0).unwrap();
    let mut b = candle_logits(&mut theirs, &prompt, 0);
    let mut tokens = vec![];
    let (mut t_ours, mut t_theirs, mut worst) = (0f64, 0f64, 0f32);
    for step in 0..=STEPS {
        let d = common::rel_diff(&a, &b);
        assert!(d < 1e-4, "step {step}: relative difference {d}");
        worst = worst.max(d);
        let (na, nb) = (ours.argmax(&a)[0], ours.argmax(&b)[0]);
        assert_eq!(na, nb, "step {step}: greedy tokens differ");
        tokens.push(na);
        if step == STEPS {
            break;
        }
        let pos = prompt.len() + step;
        let t0 = Instant::now();
        a = ours.forward(&[na], pos).unwrap();
        let t1 = Instant::now();
        b = candle_logits(&mut theirs, &[na], pos);
        t_ours += (t1 - t0).as_secs_f64();
        t_theirs += t1.elapsed().as_secs_f64();
    }
    // The backend forward (no plan: all resident) gives the same tokens and
    // the same last logits as candle.
    let mut g = Generator::new(model, be, None);
    let prompt_text = "The capital of France is".to_string();
    let r = g
        .generate(&[prompt_text], STEPS + 1, Sampling::Greedy, |_, _| {})
        .unwrap();
    assert_eq!(r.tokens[0], tokens);
    let d = common::rel_diff(&r.final_logits, &b);
    assert!(d < 1e-4, "backend forward: relative difference {d}");
    let t_backend = r.decode_ms_per_token;
    drop(g);
    let text = tk.decode(&tokens).unwrap();
    eprintln!("greedy continuation: {text:?}; worst relative logit difference {worst:.2e}");
    assert!(text.contains("Paris"), "{text:?}");
    drop(theirs);

    // candle's own quantised path (activations in Q8), for the speed table:
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
    let ms = |t: f64| t * 1e3 / STEPS as f64;
    eprintln!(
        "decode ms/token: ours f32 on the CPU backend {t_backend:.1}, ours f32 host reference {:.1}, \
         candle f32 (dequantised) {:.1}, candle quantised {:.1}",
        ms(t_ours),
        ms(t_theirs),
        ms(t_quant)
    );
}
