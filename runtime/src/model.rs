//! The Llama model on a `kernels::Backend`: weights uploaded once, in
//! candle's llama.rs shape (`Attention`, `Mlp`, `Block`, `Model`, each with
//! `load`). The forward itself, which must follow a plan, is in `executor`.

use kernels::{Backend, DeviceBuf};

use crate::source::{Config, TensorSource};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, Weights};
use crate::ModelSource;
use crate::{AtLayer, Result};

/// One layer's attention projections on the device (`[out, in]`).
pub struct Attention {
    pub q_proj: DeviceBuf,
    pub k_proj: DeviceBuf,
    pub v_proj: DeviceBuf,
    pub o_proj: DeviceBuf,
}

impl Attention {
    fn load(w: &weights::Attention, backend: &Backend, layer: usize) -> Result<Self> {
        Ok(Attention {
            q_proj: backend.upload(&w.q_proj).at(layer)?,
            k_proj: backend.upload(&w.k_proj).at(layer)?,
            v_proj: backend.upload(&w.v_proj).at(layer)?,
            o_proj: backend.upload(&w.o_proj).at(layer)?,
        })
    }
}

/// One layer's SiLU-gated MLP on the device.
pub struct Mlp {
    pub gate_proj: DeviceBuf,
    pub up_proj: DeviceBuf,
    pub down_proj: DeviceBuf,
}

impl Mlp {
    fn load(w: &weights::Mlp, backend: &Backend, layer: usize) -> Result<Self> {
        Ok(Mlp {
            gate_proj: backend.upload(&w.gate_proj).at(layer)?,
            up_proj: backend.upload(&w.up_proj).at(layer)?,
            down_proj: backend.upload(&w.down_proj).at(layer)?,
        })
    }
}

/// One decoder layer on the device.
pub struct Block {
    pub input_layernorm: DeviceBuf,
    pub self_attn: Attention,
    pub post_attention_layernorm: DeviceBuf,
    pub mlp: Mlp,
}

impl Block {
    fn load(w: &weights::Block, backend: &Backend, layer: usize) -> Result<Self> {
        Ok(Block {
            input_layernorm: backend.upload(&w.input_layernorm).at(layer)?,
            self_attn: Attention::load(&w.self_attn, backend, layer)?,
            post_attention_layernorm: backend.upload(&w.post_attention_layernorm).at(layer)?,
            mlp: Mlp::load(&w.mlp, backend, layer)?,
        })
    }
}

/// A Llama model whose weights live on a backend, with its tokenizer.
pub struct Model {
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub embed_tokens: DeviceBuf,
    pub layers: Vec<Block>,
    pub norm: DeviceBuf,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<DeviceBuf>,
}

impl Model {
    /// Loads weights and tokenizer from `source` and uploads the weights.
    pub fn load(source: &ModelSource, backend: &Backend) -> Result<Self> {
        // One open, one header read: config, tokenizer and tensors come from it.
        let (mut src, config) = TensorSource::open(source)?;
        let tokenizer = src.tokenizer(&config)?;
        let w = Weights::from_source(&mut src, config)?;
        Self::from_weights(&w, tokenizer, backend)
    }

    /// Uploads host weights.
    pub fn from_weights(w: &Weights, tokenizer: Tokenizer, backend: &Backend) -> Result<Self> {
        if !backend.is_cuda() {
            // The CPU backend's "device" buffers are host memory too, f32 at any dtype.
            let s = &w.config.spec;
            crate::check_memory(
                &format!(
                    "uploading {} ({} parameters) to {}",
                    s.name,
                    s.total_params(),
                    backend.name()
                ),
                s.total_params()
                    .saturating_mul(std::mem::size_of::<f32>() as u64),
                "use a smaller model",
            )?;
        }
        let layers = w
            .layers
            .iter()
            .enumerate()
            .map(|(i, b)| Block::load(b, backend, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            config: w.config.clone(),
            tokenizer,
            embed_tokens: backend.upload(&w.embed_tokens)?,
            layers,
            norm: backend.upload(&w.norm)?,
            lm_head: match &w.lm_head {
                Some(h) => Some(backend.upload(h)?),
                None => None,
            },
        })
    }

    /// The output projection (the embeddings when tied).
    pub fn lm_head(&self) -> &DeviceBuf {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    pub fn spec(&self) -> &plans::ModelSpec {
        &self.config.spec
    }
}
