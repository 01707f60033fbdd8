//! Helpers shared by the runtime's integration tests: writing a model as a
//! Hugging Face directory or a GGUF file, finding the real SmolLM2 file, and
//! the fully resident greedy forward on the CPU backend (the oracle).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::{Split, StoreLayout};
use runtime::{Executor, Model, Tokenizer, Weights};

/// The CPU backend, unpaced.
pub fn cpu() -> Backend {
    Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
}

/// `w` on `be` with a byte tokenizer (for forwards driven by ids).
pub fn model_of(w: &Weights, be: &Backend) -> Model {
    let tk = Tokenizer::bytes(w.config.spec.vocab_size, "(synthetic)".into());
    Model::from_weights(w, tk, be).unwrap()
}

/// Index of the largest value (first on ties).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The backend forward, everything resident (no plan): prefill `prompt`
/// (one sequence), then `steps` greedy decode steps. Returns the logits of
/// the prompt and of every step, and each decode step's time in µs.
pub fn resident_greedy(
    be: &Backend,
    model: &Model,
    prompt: &[u32],
    steps: usize,
) -> (Vec<Vec<f32>>, Vec<f64>) {
    let cap = prompt.len() + steps + 1;
    let mut ex = Executor::new(be, model, StoreLayout::all_resident(cap), 1, cap).unwrap();
    ex.prefill(prompt, prompt.len()).unwrap();
    let mut logits = vec![ex.logits().unwrap()];
    let mut us = Vec::with_capacity(steps);
    for i in 0..steps {
        let next = argmax(logits.last().unwrap());
        let s = prompt.len() + i;
        let sp = Split {
            g: s,
            l: 0,
            s,
            chunks: 1,
        };
        ex.set_ids(&[next]).unwrap();
        ex.step(sp).unwrap();
        let st = ex.finish_step().unwrap().unwrap();
        logits.push(ex.logits().unwrap());
        us.push(st.measured_us);
    }
    (logits, us)
}

/// The SmolLM2 GGUF, from `KVPR_MODEL` or the default cache; `None` (with the
/// reason printed) when it is absent.
pub fn smollm2() -> Option<PathBuf> {
    let path = match std::env::var_os("KVPR_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from)?;
            home.join(".cache/kvpr/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} not found; run scripts/fetch-model.sh",
            path.display()
        );
        None
    }
}

/// Every tensor of `w` under its Hugging Face name, `[out, in]`.
pub fn named(w: &Weights) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let s = &w.config.spec;
    let (h, q, kv, f, v) = (
        s.hidden_size,
        s.q_dim(),
        s.kv_dim(),
        s.intermediate_size,
        s.vocab_size,
    );
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![v, h],
        w.embed_tokens.clone(),
    )];
    for (i, b) in w.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &b.self_attn;
        let m = &b.mlp;
        out.push((
            format!("{p}.input_layernorm.weight"),
            vec![h],
            b.input_layernorm.clone(),
        ));
        out.push((
            format!("{p}.self_attn.q_proj.weight"),
            vec![q, h],
            a.q_proj.clone(),
        ));
        out.push((
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, h],
            a.k_proj.clone(),
        ));
        out.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, h],
            a.v_proj.clone(),
        ));
        out.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, q],
            a.o_proj.clone(),
        ));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            b.post_attention_layernorm.clone(),
        ));
        out.push((
            format!("{p}.mlp.gate_proj.weight"),
            vec![f, h],
            m.gate_proj.clone(),
        ));
        out.push((
            format!("{p}.mlp.up_proj.weight"),
            vec![f, h],
            m.up_proj.clone(),
        ));
        out.push((
            format!("{p}.mlp.down_proj.weight"),
            vec![h, f],
            m.down_proj.clone(),
        ));
    }
    out.push(("model.norm.weight".to_string(), vec![h], w.norm.clone()));
    if let Some(head) = &w.lm_head {
        out.push(("lm_head.weight".to_string(), vec![v, h], head.clone()));
    }
    out
}

/// Writes `w` as a Hugging Face directory (config.json + model.safetensors).
pub fn write_hf_dir(w: &Weights, dir: &Path) {
    let s = &w.config.spec;
    let cfg = serde_json::json!({
        "model_type": "llama",
        "hidden_size": s.hidden_size,
        "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.n_kv_heads,
        "head_dim": s.head_dim,
        "num_hidden_layers": s.n_layers,
        "intermediate_size": s.intermediate_size,
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_context,
        "rope_theta": s.rope_theta,
        "rms_norm_eps": s.norm_eps,
        "tie_word_embeddings": s.tie_embeddings,
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let tensors: Vec<(String, Tensor)> = named(w)
        .into_iter()
        .map(|(n, shape, data)| (n, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()))
        .collect();
    candle_core::safetensors::save(
        &tensors
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        dir.join("model.safetensors"),
    )
    .unwrap();
}

/// llama.cpp's Q/K row permutation: rotate_half pairs `(i, i+d/2)` become
/// interleaved pairs `(2i, 2i+1)`.
fn permute_rows(data: &[f32], n_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    let half = head_dim / 2;
    for hh in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = hh * head_dim + 2 * i + j;
                let src = hh * head_dim + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Writes `w` (rotate_half convention) as a llama.cpp-style GGUF, matrices in
/// `dtype` where their rows allow it (f32 otherwise).
pub fn write_gguf(w: &Weights, path: &Path, dtype: GgmlDType) {
    use gguf_file::Value;
    let s = &w.config.spec;
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("synthetic".into())),
        ("llama.embedding_length", Value::U32(s.hidden_size as u32)),
        ("llama.attention.head_count", Value::U32(s.n_heads as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(s.n_kv_heads as u32),
        ),
        ("llama.block_count", Value::U32(s.n_layers as u32)),
        (
            "llama.feed_forward_length",
            Value::U32(s.intermediate_size as u32),
        ),
        ("llama.context_length", Value::U32(s.max_context as u32)),
        ("llama.rope.dimension_count", Value::U32(s.head_dim as u32)),
        ("llama.rope.freq_base", Value::F32(s.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(s.norm_eps as f32),
        ),
    ];
    let tensors: Vec<(String, QTensor)> = named(w)
        .into_iter()
        .map(|(n, shape, data)| {
            let data = if n.ends_with("q_proj.weight") {
                permute_rows(&data, s.n_heads, s.head_dim, shape[1])
            } else if n.ends_with("k_proj.weight") {
                permute_rows(&data, s.n_kv_heads, s.head_dim, shape[1])
            } else {
                data
            };
            let t = Tensor::from_vec(data, shape.clone(), &Device::Cpu).unwrap();
            let dt = if shape.len() == 2 && shape[1] % dtype.block_size() == 0 {
                dtype
            } else {
                GgmlDType::F32
            };
            (
                runtime::gguf_name(&n).expect("a Llama tensor name"),
                QTensor::quantize(&t, dt).unwrap(),
            )
        })
        .collect();
    let mut f = std::fs::File::create(path).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// `max |a - b| / max |b|`.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
    d / m.max(1e-30)
}
