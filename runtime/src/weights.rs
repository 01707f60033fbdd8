//! A Llama-family model's tensors, laid out as the checkpoint names them
//! (candle's llama.rs shape: `Attention`, `Mlp`, `Block`, `Layers`, each with
//! `load`), generic over where a tensor lives: [`Weights`] holds them on the
//! host in f32 (tests, references), [`crate::Model`] on a backend. One loader
//! serves both, so the device path converts and uploads one tensor at a time
//! and never holds a whole-model f32 copy. Matrices are row-major `[out, in]`.
//!
//! Which optional tensors a layer has (biases, q/k norms) is decided by the
//! resolved [`plans::Arch`], never by what happens to be in the file: a
//! tensor the architecture does not use is an error
//! ([`TensorSource::finish`]), and one it needs is an error when missing.

use crate::source::{Config, Init, Sink, TensorSource};
use crate::ModelSource;
use crate::Result;

/// One layer's attention: projections, optional biases and q/k norms.
#[derive(Clone, Debug)]
pub struct Attention<T> {
    /// `[n_heads*head_dim, h]`
    pub q_proj: T,
    /// `[n_kv_heads*head_dim, h]`
    pub k_proj: T,
    /// `[n_kv_heads*head_dim, h]`
    pub v_proj: T,
    /// `[h, n_heads*head_dim]`
    pub o_proj: T,
    /// `[n_heads*head_dim]`, `[kv_dim]`, `[kv_dim]` (Qwen2, Llama `attention_bias`).
    pub q_bias: Option<T>,
    pub k_bias: Option<T>,
    pub v_bias: Option<T>,
    /// `[h]` (Llama `attention_bias`).
    pub o_bias: Option<T>,
    /// `[head_dim]` each: per-head RMSNorm before RoPE (Qwen3).
    pub q_norm: Option<T>,
    pub k_norm: Option<T>,
}

/// Reads `name` (shape, init) through `sink`, or nothing when `on` is false.
fn optional<T>(
    src: &mut TensorSource,
    sink: &mut Sink<'_, T>,
    on: bool,
    name: &str,
    shape: &[usize],
    init: Init,
) -> Result<Option<T>> {
    if !on {
        return Ok(None);
    }
    Ok(Some(src.load(name, shape, init, sink)?))
}

impl<T> Attention<T> {
    pub(crate) fn load(
        src: &mut TensorSource,
        prefix: &str,
        cfg: &Config,
        sink: &mut Sink<'_, T>,
    ) -> Result<Self> {
        let s = &cfg.spec;
        let (h, q, kv, d) = (s.hidden_size, s.q_dim(), s.kv_dim(), s.head_dim);
        let arch = &s.arch;
        let std_in = |fan_in: usize| Init::Std(1.0 / (fan_in as f32).sqrt());
        // The output projection feeds the residual stream: scale it down with
        // depth so synthetic activations stay O(1) through all layers.
        let std_out = Init::Std(1.0 / ((q * 2 * s.n_layers) as f32).sqrt());
        let mut get = |name: &str, shape: &[usize], init: Init| -> Result<T> {
            src.load(&format!("{prefix}.{name}"), shape, init, sink)
        };
        let (q_proj, k_proj) = (
            get("q_proj.weight", &[q, h], std_in(h))?,
            get("k_proj.weight", &[kv, h], std_in(h))?,
        );
        let v_proj = get("v_proj.weight", &[kv, h], std_in(h))?;
        let o_proj = get("o_proj.weight", &[h, q], std_out)?;
        let bias = Init::Std(0.1);
        let mut opt = |on: bool, name: &str, shape: &[usize], init: Init| {
            optional(src, sink, on, &format!("{prefix}.{name}"), shape, init)
        };
        Ok(Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_bias: opt(arch.qkv_bias, "q_proj.bias", &[q], bias)?,
            k_bias: opt(arch.qkv_bias, "k_proj.bias", &[kv], bias)?,
            v_bias: opt(arch.qkv_bias, "v_proj.bias", &[kv], bias)?,
            o_bias: opt(arch.o_bias, "o_proj.bias", &[h], bias)?,
            q_norm: opt(arch.qk_norm, "q_norm.weight", &[d], Init::Ones)?,
            k_norm: opt(arch.qk_norm, "k_norm.weight", &[d], Init::Ones)?,
        })
    }
}

/// One layer's SiLU-gated MLP, with optional biases (Llama `mlp_bias`).
#[derive(Clone, Debug)]
pub struct Mlp<T> {
    /// `[ffn, h]`
    pub gate_proj: T,
    /// `[ffn, h]`
    pub up_proj: T,
    /// `[h, ffn]`
    pub down_proj: T,
    /// `[ffn]`, `[ffn]`, `[h]`
    pub gate_bias: Option<T>,
    pub up_bias: Option<T>,
    pub down_bias: Option<T>,
}

impl<T> Mlp<T> {
    pub(crate) fn load(
        src: &mut TensorSource,
        prefix: &str,
        cfg: &Config,
        sink: &mut Sink<'_, T>,
    ) -> Result<Self> {
        let s = &cfg.spec;
        let (h, f, on) = (s.hidden_size, s.intermediate_size, s.arch.mlp_bias);
        let std_in = Init::Std(1.0 / (h as f32).sqrt());
        let std_out = Init::Std(1.0 / ((f * 2 * s.n_layers) as f32).sqrt());
        let name = |n: &str| format!("{prefix}.{n}");
        let bias = Init::Std(0.1);
        Ok(Mlp {
            gate_proj: src.load(&name("gate_proj.weight"), &[f, h], std_in, sink)?,
            up_proj: src.load(&name("up_proj.weight"), &[f, h], std_in, sink)?,
            down_proj: src.load(&name("down_proj.weight"), &[h, f], std_out, sink)?,
            gate_bias: optional(src, sink, on, &name("gate_proj.bias"), &[f], bias)?,
            up_bias: optional(src, sink, on, &name("up_proj.bias"), &[f], bias)?,
            down_bias: optional(src, sink, on, &name("down_proj.bias"), &[h], bias)?,
        })
    }
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct Block<T> {
    /// `[h]`: the RMSNorm whose output is the attention input `X`.
    pub input_layernorm: T,
    pub self_attn: Attention<T>,
    /// `[h]`
    pub post_attention_layernorm: T,
    pub mlp: Mlp<T>,
}

impl<T> Block<T> {
    pub(crate) fn load(
        src: &mut TensorSource,
        layer: usize,
        cfg: &Config,
        sink: &mut Sink<'_, T>,
    ) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let h = cfg.spec.hidden_size;
        let input_layernorm = src.load(
            &format!("{p}.input_layernorm.weight"),
            &[h],
            Init::Ones,
            sink,
        )?;
        let self_attn = Attention::load(src, &format!("{p}.self_attn"), cfg, sink)?;
        let post = src.load(
            &format!("{p}.post_attention_layernorm.weight"),
            &[h],
            Init::Ones,
            sink,
        )?;
        Ok(Block {
            input_layernorm,
            self_attn,
            post_attention_layernorm: post,
            mlp: Mlp::load(src, &format!("{p}.mlp"), cfg, sink)?,
        })
    }
}

/// Every tensor of a model, wherever `T` keeps it.
#[derive(Clone, Debug)]
pub struct Layers<T> {
    /// `[vocab, h]`
    pub embed_tokens: T,
    pub layers: Vec<Block<T>>,
    /// `[h]`
    pub norm: T,
    /// `[vocab, h]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<T>,
}

impl<T> Layers<T> {
    /// Reads every tensor the architecture uses, in checkpoint order, through
    /// `sink`, then checks the checkpoint holds nothing else. Returns the
    /// tensors and the RoPE inverse frequencies (divided by a GGUF's
    /// `rope_freqs.weight` where it has one).
    pub(crate) fn load(
        src: &mut TensorSource,
        config: &Config,
        sink: &mut Sink<'_, T>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(Self, Option<Vec<f32>>)> {
        let s = &config.spec;
        let (h, v, nl) = (s.hidden_size, s.vocab_size, s.n_layers);
        let embed_tokens = src.load("model.embed_tokens.weight", &[v, h], Init::Std(1.0), sink)?;
        let mut layers = Vec::with_capacity(nl);
        for i in 0..nl {
            layers.push(Block::load(src, i, config, sink)?);
            progress(i + 1, nl);
        }
        let norm = src.load("model.norm.weight", &[h], Init::Ones, sink)?;
        let has_head = !s.tie_embeddings || src.contains("lm_head.weight");
        let lm_head = if has_head {
            let std = Init::Std(1.0 / (h as f32).sqrt());
            Some(src.load("lm_head.weight", &[v, h], std, sink)?)
        } else {
            None
        };
        let freq_factors = match s.arch.rope_scaling {
            Some(plans::RopeScaling::FreqFactors) => {
                Some(src.get(crate::source::ROPE_FREQS, &[s.head_dim / 2], Init::Ones)?)
            }
            _ => None,
        };
        src.finish()?;
        Ok((
            Layers {
                embed_tokens,
                layers,
                norm,
                lm_head,
            },
            freq_factors,
        ))
    }

    /// The output projection `[vocab, h]` (the embeddings when tied).
    pub fn lm_head(&self) -> &T {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}

/// A whole model's weights on the host, in f32.
#[derive(Clone, Debug)]
pub struct Weights {
    pub config: Config,
    /// `[vocab, h]`
    pub embed_tokens: Vec<f32>,
    pub layers: Vec<Block<Vec<f32>>>,
    /// `[h]`
    pub norm: Vec<f32>,
    /// `[vocab, h]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Vec<f32>>,
}

impl Weights {
    /// Loads (and dequantises) every tensor of the source.
    pub fn load(source: &ModelSource) -> Result<Self> {
        let (mut src, config) = TensorSource::open(source)?;
        Self::from_source(&mut src, config)
    }

    /// Reads every tensor of an open source.
    pub(crate) fn from_source(src: &mut TensorSource, mut config: Config) -> Result<Self> {
        let s = config.spec.clone();
        crate::check_memory(
            &format!(
                "loading {} ({} parameters as f32)",
                s.name,
                s.total_params()
            ),
            s.total_params().saturating_mul(4),
            "use a smaller model",
        )?;
        let (t, factors) = Layers::load(src, &config, &mut |t| Ok(t.into_f32()), |_, _| {})?;
        config.apply_freq_factors(factors.as_deref())?;
        Ok(Weights {
            config,
            embed_tokens: t.embed_tokens,
            layers: t.layers,
            norm: t.norm,
            lm_head: t.lm_head,
        })
    }

    /// The output projection `[vocab, h]` (the embeddings when tied).
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed_tokens)
    }
}
