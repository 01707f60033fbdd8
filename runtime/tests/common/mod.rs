//! Helpers shared by the runtime's integration tests: writing a model as a
//! Hugging Face directory or a GGUF file, finding the real SmolLM2 file, and
//! the fully resident greedy forward on the CPU backend (the oracle).
#![allow(dead_code)]

pub mod hf;

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::Workload;
use plans::{Dtype, HardwareProfile, ModelSpec, Plan, PlanHardware, Schedule, Split, StoreLayout};
use runtime::{Executor, Model, Tokenizer, Weights};
use scheduler::{make_plan, ForcedSplit, PlanRequest, ScheduleChoice, Solver};

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
        let why = format!("{} not found; run scripts/fetch-model.sh", path.display());
        // `make test` sets it: there a missing model fails, not skips.
        assert!(
            std::env::var_os("KVPR_REQUIRE_MODEL").is_none(),
            "KVPR_REQUIRE_MODEL is set and {why}"
        );
        eprintln!("skipping: {why}");
        None
    }
}

/// Every tensor of `w` under its Hugging Face name, `[out, in]`, in the
/// order a checkpoint lists them: the optional ones (q/k/v/o and MLP biases,
/// Qwen3's q/k norms) wherever `w` has them.
pub fn named(w: &Weights) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let s = &w.config.spec;
    let (h, q, kv, f, v, d) = (
        s.hidden_size,
        s.q_dim(),
        s.kv_dim(),
        s.intermediate_size,
        s.vocab_size,
        s.head_dim,
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
        let mut push = |name: &str, shape: Vec<usize>, data: &Vec<f32>| {
            out.push((format!("{p}.{name}"), shape, data.clone()));
        };
        push("input_layernorm.weight", vec![h], &b.input_layernorm);
        push("self_attn.q_proj.weight", vec![q, h], &a.q_proj);
        push("self_attn.k_proj.weight", vec![kv, h], &a.k_proj);
        push("self_attn.v_proj.weight", vec![kv, h], &a.v_proj);
        push("self_attn.o_proj.weight", vec![h, q], &a.o_proj);
        for (name, len, t) in [
            ("self_attn.q_proj.bias", q, &a.q_bias),
            ("self_attn.k_proj.bias", kv, &a.k_bias),
            ("self_attn.v_proj.bias", kv, &a.v_bias),
            ("self_attn.o_proj.bias", h, &a.o_bias),
            ("self_attn.q_norm.weight", d, &a.q_norm),
            ("self_attn.k_norm.weight", d, &a.k_norm),
        ] {
            if let Some(t) = t {
                push(name, vec![len], t);
            }
        }
        push(
            "post_attention_layernorm.weight",
            vec![h],
            &b.post_attention_layernorm,
        );
        push("mlp.gate_proj.weight", vec![f, h], &m.gate_proj);
        push("mlp.up_proj.weight", vec![f, h], &m.up_proj);
        push("mlp.down_proj.weight", vec![h, f], &m.down_proj);
        for (name, len, t) in [
            ("mlp.gate_proj.bias", f, &m.gate_bias),
            ("mlp.up_proj.bias", f, &m.up_bias),
            ("mlp.down_proj.bias", h, &m.down_bias),
        ] {
            if let Some(t) = t {
                push(name, vec![len], t);
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h], w.norm.clone()));
    if let Some(head) = &w.lm_head {
        out.push(("lm_head.weight".to_string(), vec![v, h], head.clone()));
    }
    out
}

/// Writes `w` as a Hugging Face directory (config.json + model.safetensors):
/// its shape, `model_type` and bias flags (not RoPE scaling or a window).
pub fn write_hf_dir(w: &Weights, dir: &Path) {
    let s = &w.config.spec;
    let cfg = serde_json::json!({
        "model_type": s.arch.kind.name(),
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
        "attention_bias": s.arch.o_bias,
        "mlp_bias": s.arch.mlp_bias,
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

/// llama.cpp's Q/K row permutation (`LlamaModel.permute` of
/// convert_hf_to_gguf.py): within each head, rotate_half pairs `(i, i+d/2)`
/// become interleaved pairs `(2i, 2i+1)`. `cols` is 1 for a bias.
pub fn permute_rows(data: &[f32], n_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    assert_eq!(data.len(), n_heads * head_dim * cols);
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

/// One tensor of a GGUF being written: its llama.cpp name, row-major shape,
/// f32 values and the GGML type it is stored in.
pub struct GgufTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub dtype: GgmlDType,
}

/// A GGUF file before it is written: metadata and tensors, both editable
/// (tests add keys and tensors a converter would write, or should not).
pub struct Gguf {
    pub metadata: Vec<(String, gguf_file::Value)>,
    pub tensors: Vec<GgufTensor>,
}

impl Gguf {
    /// Sets (or replaces) a metadata key.
    pub fn set(&mut self, key: &str, value: gguf_file::Value) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
    }

    /// Removes a metadata key.
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    /// Adds a tensor (stored as `dtype`).
    pub fn add_tensor(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>, dtype: GgmlDType) {
        self.tensors.push(GgufTensor {
            name: name.to_string(),
            shape,
            data,
            dtype,
        });
    }

    /// The tensor named `name`.
    pub fn tensor_mut(&mut self, name: &str) -> &mut GgufTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// Adds the GGUF form of a Hugging Face directory's byte-level BPE
    /// tokenizer, as llama.cpp's converter writes it for a `gpt2` vocabulary:
    /// tokens by id, merges as `"a b"`, token types (3 = control for the
    /// special added tokens, 1 = normal), BOS/EOS ids and `add_bos_token`
    /// from `tokenizer_config.json` / `config.json`.
    pub fn add_tokenizer(&mut self, hf_dir: &Path) {
        use gguf_file::Value;
        let read = |f: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(hf_dir.join(f)).unwrap()).unwrap()
        };
        let tj = read("tokenizer.json");
        let model = &tj["model"];
        assert_eq!(model["type"], "BPE", "a byte-level BPE tokenizer.json");
        let mut by_id: Vec<(u64, String)> = model["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(t, id)| (id.as_u64().unwrap(), t.clone()))
            .collect();
        let mut special = std::collections::HashSet::new();
        for t in tj["added_tokens"].as_array().unwrap() {
            let id = t["id"].as_u64().unwrap();
            if !by_id.iter().any(|(i, _)| *i == id) {
                by_id.push((id, t["content"].as_str().unwrap().to_string()));
            }
            if t["special"].as_bool() == Some(true) {
                special.insert(id);
            }
        }
        by_id.sort();
        for (i, (id, _)) in by_id.iter().enumerate() {
            assert_eq!(*id, i as u64, "token ids are dense");
        }
        let merges: Vec<Value> = model["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Value::String(s.clone()),
                serde_json::Value::Array(p) => Value::String(format!(
                    "{} {}",
                    p[0].as_str().unwrap(),
                    p[1].as_str().unwrap()
                )),
                other => panic!("merge {other}"),
            })
            .collect();
        let types: Vec<Value> = by_id
            .iter()
            .map(|(id, _)| Value::I32(if special.contains(id) { 3 } else { 1 }))
            .collect();
        let tokens: Vec<Value> = by_id.into_iter().map(|(_, t)| Value::String(t)).collect();
        let cfg = read("config.json");
        let tk_cfg = read("tokenizer_config.json");
        self.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        self.set("tokenizer.ggml.pre", Value::String("gpt-2".into()));
        self.set("tokenizer.ggml.tokens", Value::Array(tokens));
        self.set("tokenizer.ggml.token_type", Value::Array(types));
        self.set("tokenizer.ggml.merges", Value::Array(merges));
        if let Some(id) = cfg["bos_token_id"].as_u64() {
            self.set("tokenizer.ggml.bos_token_id", Value::U32(id as u32));
        }
        if let Some(id) = cfg["eos_token_id"].as_u64() {
            self.set("tokenizer.ggml.eos_token_id", Value::U32(id as u32));
        }
        self.set(
            "tokenizer.ggml.add_bos_token",
            Value::Bool(tk_cfg["add_bos_token"].as_bool() == Some(true)),
        );
    }

    /// Writes the file (candle's writer: GGUF version 2, 32-byte alignment).
    pub fn write(&self, path: &Path) {
        let tensors: Vec<(&str, QTensor)> = self
            .tensors
            .iter()
            .map(|t| {
                let x = Tensor::from_vec(t.data.clone(), t.shape.clone(), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&x, t.dtype)
                    .unwrap_or_else(|e| panic!("{} as {:?}: {e}", t.name, t.dtype));
                (t.name.as_str(), q)
            })
            .collect();
        let mut f = std::fs::File::create(path).unwrap();
        let md_refs: Vec<(&str, &gguf_file::Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    }
}

/// `w` (rotate_half convention, Hugging Face names) as llama.cpp's
/// convert_hf_to_gguf.py writes it for architecture `arch` (`llama`,
/// `qwen2` or `qwen3`): the `{arch}.*` hyperparameters, tensors under their
/// GGUF names, and for `llama` only the Q/K weight rows and the q/k biases
/// permuted into interleaved pairs. Matrices are stored as `dtype` where
/// their rows are whole blocks of it (f32 otherwise); 1-D tensors (norms,
/// biases) stay f32, as llama.cpp keeps them.
pub fn gguf_of(w: &Weights, arch: &str, dtype: GgmlDType) -> Gguf {
    use gguf_file::Value;
    let s = &w.config.spec;
    let k = |name: &str| format!("{arch}.{name}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String("synthetic".into())),
        (k("context_length"), Value::U32(s.max_context as u32)),
        (k("embedding_length"), Value::U32(s.hidden_size as u32)),
        (k("block_count"), Value::U32(s.n_layers as u32)),
        (
            k("feed_forward_length"),
            Value::U32(s.intermediate_size as u32),
        ),
        (k("attention.head_count"), Value::U32(s.n_heads as u32)),
        (
            k("attention.head_count_kv"),
            Value::U32(s.n_kv_heads as u32),
        ),
        (k("rope.dimension_count"), Value::U32(s.head_dim as u32)),
        (k("rope.freq_base"), Value::F32(s.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(s.norm_eps as f32),
        ),
    ];
    if s.head_dim * s.n_heads != s.hidden_size {
        metadata.push((k("attention.key_length"), Value::U32(s.head_dim as u32)));
        metadata.push((k("attention.value_length"), Value::U32(s.head_dim as u32)));
    }
    // What convert_hf_to_gguf.py writes for a scaled RoPE and a window.
    let mut extra = Vec::new();
    match &s.arch.rope_scaling {
        None => {}
        Some(plans::RopeScaling::Linear { factor }) => {
            metadata.push((k("rope.scaling.type"), Value::String("linear".into())));
            metadata.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
        }
        Some(r @ plans::RopeScaling::Llama3 { .. }) => {
            // `rope_freqs.weight`: one divisor per frequency, base / scaled.
            let (base, _) = plans::RopeScaling::inv_freq(None, s.rope_theta, s.head_dim);
            let (scaled, _) = plans::RopeScaling::inv_freq(Some(r), s.rope_theta, s.head_dim);
            let factors: Vec<f32> = base.iter().zip(&scaled).map(|(b, x)| b / x).collect();
            extra.push(GgufTensor {
                name: "rope_freqs.weight".into(),
                shape: vec![factors.len()],
                data: factors,
                dtype: GgmlDType::F32,
            });
        }
        Some(plans::RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            ..
        }) => {
            metadata.push((k("rope.scaling.type"), Value::String("yarn".into())));
            metadata.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
            metadata.push((
                k("rope.scaling.original_context_length"),
                Value::U32(*original_max_position_embeddings as u32),
            ));
        }
        Some(plans::RopeScaling::FreqFactors) => {
            panic!("weights read from a GGUF with rope_freqs: write the factors yourself")
        }
        Some(plans::RopeScaling::Dynamic { .. }) => {
            panic!("GGUF has no dynamic NTK RoPE (llama.cpp converts none)")
        }
    }
    if let Some(win) = s.arch.sliding_window {
        metadata.push((k("attention.sliding_window"), Value::U32(win as u32)));
    }
    let permute = arch == "llama";
    let mut tensors: Vec<GgufTensor> = named(w)
        .into_iter()
        .map(|(n, shape, data)| {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            let data = if permute && (n.ends_with("q_proj.weight") || n.ends_with("q_proj.bias")) {
                permute_rows(&data, s.n_heads, s.head_dim, cols)
            } else if permute && (n.ends_with("k_proj.weight") || n.ends_with("k_proj.bias")) {
                permute_rows(&data, s.n_kv_heads, s.head_dim, cols)
            } else {
                data
            };
            let dt = if shape.len() == 2 && shape[1] % dtype.block_size() == 0 {
                dtype
            } else {
                GgmlDType::F32
            };
            GgufTensor {
                name: runtime::gguf_name(&n).expect("a Llama tensor name"),
                shape,
                data,
                dtype: dt,
            }
        })
        .collect();
    tensors.extend(extra);
    Gguf { metadata, tensors }
}

/// Writes `w` (rotate_half convention) as a llama.cpp-style `llama` GGUF,
/// matrices in `dtype` where their rows allow it (f32 otherwise).
pub fn write_gguf(w: &Weights, path: &Path, dtype: GgmlDType) {
    gguf_of(w, "llama", dtype).write(path)
}

/// Sets the GGML type id of tensor `name` in a written GGUF file in place
/// (for types candle cannot write: the header then announces that type).
pub fn patch_tensor_type(path: &Path, name: &str, type_id: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    // A tensor info: u64 name length, the name, u32 n_dims, u64 dims, u32 type.
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .unwrap_or_else(|| panic!("no tensor {name} in {}", path.display()));
    let n_dims_at = at + key.len();
    let n_dims = u32::from_le_bytes(bytes[n_dims_at..n_dims_at + 4].try_into().unwrap());
    let ty_at = n_dims_at + 4 + 8 * n_dims as usize;
    bytes[ty_at..ty_at + 4].copy_from_slice(&type_id.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Prefill `prompt`, then feed `tokens` one at a time (teacher forcing),
/// everything resident: the logits of the prompt's last position and after
/// each token but the last (one row per token of `tokens`).
pub fn resident_forced(
    be: &Backend,
    model: &Model,
    prompt: &[u32],
    tokens: &[u32],
) -> Vec<Vec<f32>> {
    let cap = prompt.len() + tokens.len() + 1;
    let mut ex = Executor::new(be, model, StoreLayout::all_resident(cap), 1, cap).unwrap();
    ex.prefill(prompt, prompt.len()).unwrap();
    let mut logits = vec![ex.logits().unwrap()];
    for (i, &next) in tokens[..tokens.len().saturating_sub(1)].iter().enumerate() {
        let s = prompt.len() + i;
        ex.set_ids(&[next]).unwrap();
        ex.step(Split {
            g: s,
            l: 0,
            s,
            chunks: 1,
        })
        .unwrap();
        ex.finish_step().unwrap().unwrap();
        logits.push(ex.logits().unwrap());
    }
    logits
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

/// The A100 example profile with its GEMM curve relabelled f32 (the CPU
/// backend's dtype); the numbers only shape the plan, the runtime just follows it.
pub fn profile() -> HardwareProfile {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/hardware/a100-pcie4.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"f16\"", "\"f32\"");
    HardwareProfile::parse(&p, &text).unwrap()
}

/// A plan for `spec` on [`profile`] with `schedule` (and `forced`, when
/// given, imposing the split), block 1, exhaustive solver, budgets unbounded.
pub fn plan(
    spec: &ModelSpec,
    batch: usize,
    prompt_len: usize,
    gen_len: usize,
    schedule: Schedule,
    forced: Option<ForcedSplit>,
) -> Plan {
    let hw = profile();
    let workload = Workload {
        batch,
        prompt_len,
        gen_len,
        dtype: Dtype::F32,
        gpu_memory_budget: 1 << 40,
        host_memory_budget: 1 << 40,
    };
    let req = PlanRequest {
        schedule: ScheduleChoice::Fixed(schedule),
        block_tokens: 1,
        solver: Solver::Exhaustive,
        forced,
    };
    let id = PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    };
    make_plan(spec, &hw, id, &workload, &req).unwrap()
}
