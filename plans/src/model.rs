//! Model shapes: what the cost model and the runtime need to know of a model,
//! from a named preset, a Hugging Face `config.json`, or GGUF metadata.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::arch::{self, Arch, ArchKind};
use crate::io::{read_text_limited, MAX_JSON_BYTES};
use crate::{fingerprint, ModelSource, PlansError, Result};

/// Bounds on a model's shape: far beyond any published model, small enough
/// that sizes computed from them cannot overflow.
pub const MAX_LAYERS: usize = 1 << 12;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_HEAD_DIM: usize = 1 << 12;
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_CONTEXT: usize = 1 << 24;

/// Architecture family: decides the parameter layout (the cost model needs only
/// the shape; the runtime runs the Llama family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama-2 (MHA), Llama-3 / SmolLM2 (GQA): RMSNorm, RoPE, SiLU-gated MLP.
    Llama,
    /// OPT: LayerNorm, learned positions, ReLU MLP with two matrices.
    Opt,
}

/// The shape of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub family: Family,
    pub n_layers: usize,
    /// `h`: hidden size, also the width of the attention input activations.
    pub hidden_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    /// The longest context the model was trained for (positions).
    pub max_context: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
    pub tie_embeddings: bool,
    /// What the forward does beyond plain Llama-2 (biases, q/k norms, a
    /// window, scaled RoPE); absent from files for plain Llama.
    #[serde(default, skip_serializing_if = "Arch::is_plain")]
    pub arch: Arch,
    /// Stable fingerprint of the weights' layout (GGUF) or of the config.
    pub fingerprint: String,
}

/// A row of the preset table: name, family, layers, h, heads, kv heads,
/// head_dim, ffn, vocab, max context, rope theta, tied embeddings.
type PresetRow = (
    &'static str,
    Family,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    f64,
    bool,
);

/// Named presets. The full-size shapes are the published configs; the `tiny`
/// ones keep the attention kind (MHA: `h < 2*h_kv`, GQA: `h >= 2*h_kv`) at a size
/// that runs in milliseconds on a CPU, for tests and CPU-backend studies.
#[rustfmt::skip]
pub const PRESETS: &[PresetRow] = &[
    ("llama-2-7b",      Family::Llama, 32, 4096, 32, 32, 128, 11008,  32000, 4096, 1e4, false),
    ("llama-2-13b",     Family::Llama, 40, 5120, 40, 40, 128, 13824,  32000, 4096, 1e4, false),
    ("llama-3-8b",      Family::Llama, 32, 4096, 32,  8, 128, 14336, 128256, 8192, 5e5, false),
    ("opt-6.7b",        Family::Opt  , 32, 4096, 32, 32, 128, 16384,  50272, 2048, 0.0, true),
    ("opt-13b",         Family::Opt  , 40, 5120, 40, 40, 128, 20480,  50272, 2048, 0.0, true),
    ("opt-30b",         Family::Opt  , 48, 7168, 56, 56, 128, 28672,  50272, 2048, 0.0, true),
    ("smollm2-135m",    Family::Llama, 30,  576,  9,  3,  64,  1536,  49152, 8192, 1e5, true),
    ("llama-2-7b-tiny", Family::Llama,  8,  256,  4,  4,  64,   688,   2048, 4096, 1e4, false),
    ("llama-3-8b-tiny", Family::Llama,  8,  256,  8,  2,  32,   896,   2048, 8192, 5e5, false),
    ("tiny-mha",        Family::Llama,  2,   64,  4,  4,  16,   172,    256,  512, 1e4, false),
    ("tiny-gqa",        Family::Llama,  2,   64,  4,  1,  16,   172,    256,  512, 1e4, false),
    ("tiny-variants",   Family::Llama,  2,   64,  4,  2,  24,   172,    256,  512, 1e4, false),
];

/// What a preset computes beyond plain Llama: `tiny-variants` has every
/// option kvpr implements at once (q/k/v/o and MLP biases, q/k norms, an
/// explicit head_dim, a sliding window, llama3-scaled RoPE), so `kvpr
/// selftest` holds each backend's forward and recomputation of them to the CPU.
fn preset_arch(name: &str) -> Arch {
    match name {
        "tiny-variants" => Arch {
            kind: ArchKind::Qwen3,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            qk_norm: true,
            sliding_window: Some(11),
            rope_scaling: Some(crate::RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 16,
            }),
        },
        _ => Arch::default(),
    }
}

impl ModelSpec {
    /// `n_kv_heads * head_dim`: the width of K (and of V) per token.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// `n_heads * head_dim`: the width of Q and of the attention output.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Recomputing K/V from activations moves fewer bytes than moving K/V only
    /// when the activations are narrower: `h < 2 * h_kv`.
    pub fn recompute_saves_bytes(&self) -> bool {
        self.hidden_size < 2 * self.kv_dim()
    }

    /// Parameters of one decoder layer's matrices (no norms, no biases).
    pub fn layer_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let (q, kv, f) = (
            self.q_dim() as u64,
            self.kv_dim() as u64,
            self.intermediate_size as u64,
        );
        let attn = h * q + 2 * h * kv + q * h;
        let mlp = match self.family {
            Family::Llama => 3 * h * f,
            Family::Opt => 2 * h * f,
        };
        attn + mlp
    }

    /// The dense GEMMs of one decoder layer as `(n, k)` (output width, input
    /// width), each run on `b` rows per decode step: Q, K, V and O, then the
    /// MLP (Llama: gate, up, down; OPT: fc1, fc2). Their `n * k` add up to
    /// [`ModelSpec::layer_params`].
    pub fn layer_gemms(&self) -> Vec<(usize, usize)> {
        let (h, q, kv, f) = (
            self.hidden_size,
            self.q_dim(),
            self.kv_dim(),
            self.intermediate_size,
        );
        let mut v = vec![(q, h), (kv, h), (kv, h), (h, q)];
        match self.family {
            Family::Llama => v.extend([(f, h), (f, h), (h, f)]),
            Family::Opt => v.extend([(f, h), (h, f)]),
        }
        v
    }

    /// Kernel launches of one decode layer besides attention and
    /// recomputation, as the executor issues them: the input norm; Q, K and
    /// V (a GEMM each, then the biases, the per-head q/k norms and RoPE on Q
    /// and K where the model has them); the new token's K and V scattered
    /// into place; the output projection (and its bias) and the residual
    /// add; the post-attention norm; the MLP's GEMMs (and biases), the gate
    /// and the residual add. Plain Llama: 16.
    pub fn layer_launches(&self) -> usize {
        let a = &self.arch;
        let on = |yes: bool, n: usize| if yes { n } else { 0 };
        let mlp = match self.family {
            Family::Llama => 3,
            Family::Opt => 2,
        };
        let attention_in = 1 + 3 + on(a.qkv_bias, 3) + on(a.qk_norm, 2) + 2 + 2;
        let attention_out = 1 + on(a.o_bias, 1) + 1;
        attention_in + attention_out + 1 + mlp + on(a.mlp_bias, mlp) + 1 + 1
    }

    /// Elementwise passes over the rows of recomputed K/V after their two
    /// GEMMs, each reading and writing `h_kv` values a row: RoPE on K, and
    /// the K and V biases and the k-norm where the model has them. Plain
    /// Llama: 1.
    pub fn recompute_passes(&self) -> usize {
        let a = &self.arch;
        1 + if a.qkv_bias { 2 } else { 0 } + if a.qk_norm { 1 } else { 0 }
    }

    /// Kernel launches of recomputing one chunk of K/V: the two GEMMs, one
    /// per [`ModelSpec::recompute_passes`], and the two scatters of K and V
    /// into the rows attention reads. Plain Llama: 5.
    pub fn recompute_launches(&self) -> usize {
        2 + self.recompute_passes() + 2
    }

    /// Kernel launches of a decode step outside the layers: the embedding,
    /// the final norm, the head's GEMM and the argmax.
    pub fn step_launches(&self) -> usize {
        4
    }

    /// The output head's GEMM, `(vocab, h)`, run once per decode step after the last layer.
    pub fn head_gemm(&self) -> (usize, usize) {
        (self.vocab_size, self.hidden_size)
    }

    /// All parameters: layers, embeddings and (unless tied) the output head.
    pub fn total_params(&self) -> u64 {
        let emb = (self.vocab_size * self.hidden_size) as u64;
        let head = if self.tie_embeddings { 0 } else { emb };
        self.layer_params() * self.n_layers as u64 + emb + head
    }

    /// A preset by name (`llama-2-7b`, …); see [`PRESETS`].
    pub fn preset(name: &str) -> Result<Self> {
        let row =
            PRESETS
                .iter()
                .find(|r| r.0 == name)
                .ok_or_else(|| PlansError::UnknownPreset {
                    name: name.to_string(),
                    known: PRESETS.iter().map(|r| r.0).collect::<Vec<_>>().join(", "),
                })?;
        let (
            name,
            family,
            n_layers,
            hidden_size,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn,
            vocab,
            ctx,
            theta,
            tie,
        ) = *row;
        let mut spec = ModelSpec {
            name: name.to_string(),
            family,
            n_layers,
            hidden_size,
            n_heads,
            n_kv_heads,
            head_dim,
            intermediate_size: ffn,
            vocab_size: vocab,
            max_context: ctx,
            rope_theta: theta,
            norm_eps: 1e-5,
            tie_embeddings: tie,
            arch: preset_arch(name),
            fingerprint: String::new(),
        };
        spec.fingerprint = spec.config_fingerprint();
        Ok(spec)
    }

    /// Resolves a model argument by [`ModelSource::parse`]'s rule and reads its shape.
    pub fn resolve(arg: &str) -> Result<Self> {
        ModelSource::parse(arg)?.spec()
    }

    /// From a Hugging Face `config.json` (Llama family incl. GQA, and OPT).
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = read_text_limited(path, MAX_JSON_BYTES)?;
        let cfg: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| PlansError::Json {
                path: path.to_path_buf(),
                line: e.line(),
                column: e.column(),
                field: ".".into(),
                message: e.to_string(),
            })?;
        let need = |key: &str| -> Result<usize> {
            cfg.get(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| {
                    PlansError::invalid(path, key, "missing or not a non-negative integer")
                })
        };
        let opt_f64 =
            |key: &str, default: f64| cfg.get(key).and_then(|v| v.as_f64()).unwrap_or(default);
        let model_type = cfg
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("llama")
            .to_string();
        let (family, kind) = match model_type.as_str() {
            "llama" => (Family::Llama, ArchKind::Llama),
            "mistral" => (Family::Llama, ArchKind::Mistral),
            "qwen2" => (Family::Llama, ArchKind::Qwen2),
            "qwen3" => (Family::Llama, ArchKind::Qwen3),
            "opt" => (Family::Opt, ArchKind::Llama),
            other => {
                return Err(PlansError::Unsupported {
                    path: path.to_path_buf(),
                    key: "model_type".into(),
                    value: format!("{other:?}"),
                    reason: "kvpr runs llama, mistral, qwen2 and qwen3 (and plans opt)".into(),
                })
            }
        };
        let hidden_size = need("hidden_size")?;
        let n_heads = need("num_attention_heads")?;
        let n_kv_heads = cfg
            .get("num_key_value_heads")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = match cfg.get("head_dim").and_then(|v| v.as_u64()) {
            Some(d) => d as usize,
            None => hidden_size.checked_div(n_heads).unwrap_or(0),
        };
        let intermediate_size = match family {
            Family::Llama => need("intermediate_size")?,
            Family::Opt => need("ffn_dim")?,
        };
        let name = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(model_type);
        let n_layers = need("num_hidden_layers")?;
        let max_context = need("max_position_embeddings")?;
        let (arch, rope_theta) = match family {
            Family::Llama => arch::from_hf(&cfg, path, kind, max_context, n_layers)?,
            Family::Opt => (Arch::default(), 0.0),
        };
        // Dynamic NTK has no hard limit in transformers; kvpr runs such a
        // model to the context its scaling was made for.
        let max_context = match arch.rope_scaling {
            Some(arch::RopeScaling::Dynamic { factor, .. }) => {
                ((max_context as f64 * factor).floor() as usize).max(max_context)
            }
            _ => max_context,
        };
        let spec = ModelSpec {
            name,
            family,
            n_layers,
            hidden_size,
            n_heads,
            n_kv_heads,
            head_dim,
            intermediate_size,
            vocab_size: need("vocab_size")?,
            max_context,
            rope_theta,
            norm_eps: opt_f64("rms_norm_eps", 1e-5),
            tie_embeddings: cfg
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(family == Family::Opt),
            arch,
            fingerprint: fingerprint(text.as_bytes()),
        };
        spec.validate(path)?;
        Ok(spec)
    }

    /// From a GGUF file's metadata (the header only; see [`crate::gguf`]).
    #[cfg(feature = "gguf")]
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let (header, _) = crate::GgufHeader::open(path).map_err(|e| PlansError::Model {
            path: path.to_path_buf(),
            reason: format!("corrupt or unsupported GGUF file: {}", e.reason),
        })?;
        Self::from_gguf_header(&header, path)
    }

    /// From a GGUF header already read; the fingerprint covers the tensor layout
    /// (names, shapes, types, offsets) and the file length. `path` names the file
    /// in messages and, without `general.name`, the model.
    #[cfg(feature = "gguf")]
    pub fn from_gguf_header(header: &crate::GgufHeader, path: &Path) -> Result<Self> {
        let bad = |reason: String| PlansError::Model {
            path: path.to_path_buf(),
            reason,
        };
        let md = &header.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("GGUF metadata has no general.architecture".into()))?
            .to_string();
        arch::gguf_kind(&arch, path)?;
        let int = |key: &str| -> Result<usize> {
            md.get(&format!("{arch}.{key}"))
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "GGUF metadata {arch}.{key} missing or not a non-negative integer"
                    ))
                })
        };
        let float = |key: &str, default: f64| {
            md.get(&format!("{arch}.{key}"))
                .and_then(|v| v.as_f64())
                .unwrap_or(default)
        };
        let hidden_size = int("embedding_length")?;
        let n_heads = int("attention.head_count")?;
        let n_kv_heads = int("attention.head_count_kv").unwrap_or(n_heads);
        // llama.cpp's rule: key_length, else hidden / heads. The RoPE width
        // (`rope.dimension_count`) is not the head's: a smaller one is
        // partial RoPE, which `arch::from_gguf` refuses by name.
        let head_dim =
            int("attention.key_length").unwrap_or(hidden_size.checked_div(n_heads).unwrap_or(0));
        let vocab_size = match md.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => header
                .tensors
                .get("token_embd.weight")
                .map(|t| t.dims.iter().copied().max().unwrap_or(0))
                .ok_or_else(|| {
                    bad("GGUF has neither tokenizer.ggml.tokens nor token_embd.weight".into())
                })?,
        };
        let mut layout: Vec<String> = header
            .tensors
            .iter()
            .map(|(n, t)| format!("{n}:{:?}:{}:{}", t.dims, t.type_name(), t.offset))
            .collect();
        layout.sort();
        layout.push(header.file_len.to_string());
        let name = md
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            });
        let arch_opts = arch::from_gguf(header, path, &arch, head_dim)?;
        let spec = ModelSpec {
            name,
            family: Family::Llama,
            n_layers: int("block_count")?,
            hidden_size,
            n_heads,
            n_kv_heads,
            head_dim,
            intermediate_size: int("feed_forward_length")?,
            vocab_size,
            max_context: int("context_length")?,
            rope_theta: float("rope.freq_base", 1e4),
            norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            tie_embeddings: !header.tensors.contains_key("output.weight"),
            arch: arch_opts,
            fingerprint: fingerprint(layout.join("\n").as_bytes()),
        };
        spec.validate(path)?;
        Ok(spec)
    }

    /// Checks the shape is self-consistent; `path` names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let positive = [
            ("num_hidden_layers", self.n_layers),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_context),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(PlansError::invalid(path, field, "must be positive"));
            }
        }
        for (field, v, max) in [
            ("num_hidden_layers", self.n_layers, MAX_LAYERS),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("num_attention_heads", self.n_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("max_position_embeddings", self.max_context, MAX_CONTEXT),
        ] {
            if v > max {
                return Err(PlansError::invalid(
                    path,
                    field,
                    format!("{v} is beyond any model kvpr can run (at most {max})"),
                ));
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta >= 0.0) {
            return Err(PlansError::invalid(
                path,
                "rope_theta",
                format!("{} is not a finite, non-negative number", self.rope_theta),
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return Err(PlansError::invalid(
                path,
                "norm_eps",
                format!("{} is not a number in (0, 1)", self.norm_eps),
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(PlansError::invalid(
                path,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.n_kv_heads, self.n_heads
                ),
            ));
        }
        Ok(())
    }

    /// Fingerprint of the shape itself (used for presets).
    fn config_fingerprint(&self) -> String {
        let mut s = self.clone();
        s.fingerprint.clear();
        fingerprint(&serde_json::to_vec(&s).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_distinct() {
        let mut prints = std::collections::HashSet::new();
        for row in PRESETS {
            let s = ModelSpec::preset(row.0).unwrap();
            s.validate(Path::new(row.0)).unwrap();
            assert!(prints.insert(s.fingerprint.clone()), "{}", row.0);
        }
    }

    #[test]
    fn attention_kinds() {
        for (name, mha) in [
            ("llama-2-7b", true),
            ("opt-6.7b", true),
            ("llama-3-8b", false),
            ("smollm2-135m", false),
            ("tiny-mha", true),
            ("tiny-gqa", false),
            ("llama-2-7b-tiny", true),
        ] {
            assert_eq!(
                ModelSpec::preset(name).unwrap().recompute_saves_bytes(),
                mha,
                "{name}"
            );
        }
    }

    #[test]
    fn layer_gemms_add_up_to_the_layer_parameters() {
        for (name, ..) in PRESETS {
            let m = ModelSpec::preset(name).unwrap();
            let sum: u64 = m.layer_gemms().iter().map(|&(n, k)| (n * k) as u64).sum();
            assert_eq!(sum, m.layer_params(), "{name}");
        }
    }

    #[test]
    fn llama_2_7b_has_about_6_7b_parameters() {
        let p = ModelSpec::preset("llama-2-7b").unwrap().total_params() as f64;
        assert!((p / 6.74e9 - 1.0).abs() < 0.01, "{p}");
    }

    #[test]
    fn unknown_preset_lists_known_ones() {
        let e = ModelSpec::resolve("preset:gpt-5").unwrap_err().to_string();
        assert!(e.contains("gpt-5") && e.contains("llama-2-7b"), "{e}");
    }

    #[test]
    fn hf_config_llama_gqa_and_opt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"model_type":"llama","hidden_size":4096,"num_attention_heads":32,"num_key_value_heads":8,
               "num_hidden_layers":32,"intermediate_size":14336,"vocab_size":128256,
               "max_position_embeddings":8192,"rope_theta":500000.0,"rms_norm_eps":1e-5}"#,
        )
        .unwrap();
        let s = ModelSpec::resolve(dir.path().to_str().unwrap()).unwrap();
        assert_eq!((s.kv_dim(), s.rope_theta), (1024, 5e5));
        std::fs::write(
            &p,
            r#"{"model_type":"opt","hidden_size":4096,"num_attention_heads":32,"num_hidden_layers":32,
               "ffn_dim":16384,"vocab_size":50272,"max_position_embeddings":2048}"#,
        )
        .unwrap();
        let s = ModelSpec::from_hf_config(&p).unwrap();
        assert_eq!(
            (s.family, s.kv_dim(), s.intermediate_size),
            (Family::Opt, 4096, 16384)
        );
    }

    #[test]
    fn hf_config_missing_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"model_type":"llama","hidden_size":64}"#).unwrap();
        let e = ModelSpec::from_hf_config(&p).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("num_attention_heads"),
            "{e}"
        );
    }

    #[cfg(feature = "gguf")]
    #[test]
    fn truncated_gguf_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00\x01").unwrap();
        let e = ModelSpec::resolve(p.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.gguf") && e.contains("GGUF"), "{e}");
    }
}
