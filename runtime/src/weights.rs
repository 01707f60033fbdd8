//! Host-side Llama weights in f32, laid out as the checkpoint names them
//! (candle's llama.rs shape: `Attention`, `Mlp`, `Block`, `Weights`, each with
//! `load`). Matrices are row-major `[out, in]`.

use crate::source::{Config, Init, TensorSource};
use crate::ModelSource;
use crate::Result;

/// One layer's attention projections.
#[derive(Clone, Debug)]
pub struct Attention {
    /// `[n_heads*head_dim, h]`
    pub q_proj: Vec<f32>,
    /// `[n_kv_heads*head_dim, h]`
    pub k_proj: Vec<f32>,
    /// `[n_kv_heads*head_dim, h]`
    pub v_proj: Vec<f32>,
    /// `[h, n_heads*head_dim]`
    pub o_proj: Vec<f32>,
}

impl Attention {
    pub(crate) fn load(src: &mut TensorSource, prefix: &str, cfg: &Config) -> Result<Self> {
        let s = &cfg.spec;
        let (h, q, kv) = (s.hidden_size, s.q_dim(), s.kv_dim());
        let std_in = |fan_in: usize| Init::Std(1.0 / (fan_in as f32).sqrt());
        // The output projection feeds the residual stream: scale it down with
        // depth so synthetic activations stay O(1) through all layers.
        let std_out = Init::Std(1.0 / ((q * 2 * s.n_layers) as f32).sqrt());
        Ok(Attention {
            q_proj: src.get(&format!("{prefix}.q_proj.weight"), &[q, h], std_in(h))?,
            k_proj: src.get(&format!("{prefix}.k_proj.weight"), &[kv, h], std_in(h))?,
            v_proj: src.get(&format!("{prefix}.v_proj.weight"), &[kv, h], std_in(h))?,
            o_proj: src.get(&format!("{prefix}.o_proj.weight"), &[h, q], std_out)?,
        })
    }
}

/// One layer's SiLU-gated MLP.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// `[ffn, h]`
    pub gate_proj: Vec<f32>,
    /// `[ffn, h]`
    pub up_proj: Vec<f32>,
    /// `[h, ffn]`
    pub down_proj: Vec<f32>,
}

impl Mlp {
    pub(crate) fn load(src: &mut TensorSource, prefix: &str, cfg: &Config) -> Result<Self> {
        let s = &cfg.spec;
        let (h, f) = (s.hidden_size, s.intermediate_size);
        let std_in = Init::Std(1.0 / (h as f32).sqrt());
        let std_out = Init::Std(1.0 / ((f * 2 * s.n_layers) as f32).sqrt());
        Ok(Mlp {
            gate_proj: src.get(&format!("{prefix}.gate_proj.weight"), &[f, h], std_in)?,
            up_proj: src.get(&format!("{prefix}.up_proj.weight"), &[f, h], std_in)?,
            down_proj: src.get(&format!("{prefix}.down_proj.weight"), &[h, f], std_out)?,
        })
    }
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct Block {
    /// `[h]`: the RMSNorm whose output is the attention input `X`.
    pub input_layernorm: Vec<f32>,
    pub self_attn: Attention,
    /// `[h]`
    pub post_attention_layernorm: Vec<f32>,
    pub mlp: Mlp,
}

impl Block {
    pub(crate) fn load(src: &mut TensorSource, layer: usize, cfg: &Config) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let h = cfg.spec.hidden_size;
        Ok(Block {
            input_layernorm: src.get(&format!("{p}.input_layernorm.weight"), &[h], Init::Ones)?,
            self_attn: Attention::load(src, &format!("{p}.self_attn"), cfg)?,
            post_attention_layernorm: src.get(
                &format!("{p}.post_attention_layernorm.weight"),
                &[h],
                Init::Ones,
            )?,
            mlp: Mlp::load(src, &format!("{p}.mlp"), cfg)?,
        })
    }
}

/// A whole Llama model's weights on the host.
#[derive(Clone, Debug)]
pub struct Weights {
    pub config: Config,
    /// `[vocab, h]`
    pub embed_tokens: Vec<f32>,
    pub layers: Vec<Block>,
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
    pub(crate) fn from_source(src: &mut TensorSource, config: Config) -> Result<Self> {
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
        let (h, v) = (s.hidden_size, s.vocab_size);
        let embed_tokens = src.get("model.embed_tokens.weight", &[v, h], Init::Std(1.0))?;
        let layers = (0..s.n_layers)
            .map(|i| Block::load(src, i, &config))
            .collect::<Result<Vec<_>>>()?;
        let norm = src.get("model.norm.weight", &[h], Init::Ones)?;
        let has_head = !s.tie_embeddings || src.contains("lm_head.weight");
        let lm_head = if has_head {
            let std = Init::Std(1.0 / (h as f32).sqrt());
            Some(src.get("lm_head.weight", &[v, h], std)?)
        } else {
            None
        };
        Ok(Weights {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// The output projection `[vocab, h]` (the embeddings when tied).
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed_tokens)
    }
}
