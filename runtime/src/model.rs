//! The Llama-family model on a `kernels::Backend`: weights uploaded once, in
//! candle's llama.rs shape (`Attention`, `Mlp`, `Block`, `Model`), plus the
//! RoPE table both the forward and recomputation rotate with. The layer's
//! projections are in `layer`, the forward that follows a plan in `executor`.

use kernels::{Backend, DeviceBuf, DynamicNtk, RopeFreqs};
use plans::RopeScaling;

use crate::source::{Config, Tensor, TensorSource};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, Layers, Weights};
use crate::ModelSource;
use crate::{Result, RuntimeError};

/// The most bytes of prompt text a token may stand for on average: far more
/// than any tokenizer's (English BPE averages about 4), so a prompt longer
/// than this many bytes per token of context is refused untokenized.
pub const MAX_PROMPT_BYTES_PER_TOKEN: usize = 64;

/// One layer's attention on the device.
pub type Attention = weights::Attention<DeviceBuf>;
/// One layer's MLP on the device.
pub type Mlp = weights::Mlp<DeviceBuf>;
/// One decoder layer on the device.
pub type Block = weights::Block<DeviceBuf>;

/// A Llama-family model whose weights live on a backend, with its tokenizer.
pub struct Model {
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub embed_tokens: DeviceBuf,
    pub layers: Vec<Block>,
    pub norm: DeviceBuf,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<DeviceBuf>,
    /// RoPE's inverse frequencies and attention factor on the device. Under
    /// dynamic NTK scaling a generation turns by [`Model::prompt_rope`]'s
    /// table instead; this one treats every token as its own call.
    pub rope: RopeFreqs,
}

impl Model {
    /// Loads weights and tokenizer from `source`, uploading each tensor as it
    /// is read: a safetensors tensor goes from its mapped bytes to the
    /// backend in one pass (`Backend::upload_stored`: on a device of the
    /// checkpoint's dtype, with no host copy at all), so no f32 copy of the
    /// model, or even of a tensor, is made on the way to a 16-bit device.
    pub fn load(source: &ModelSource, backend: &Backend) -> Result<Self> {
        Self::load_with_progress(source, backend, |_, _| {})
    }

    /// [`Model::load`], calling `progress(layers_done, layers)` as it goes.
    pub fn load_with_progress(
        source: &ModelSource,
        backend: &Backend,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        // One open, one header read: config, tokenizer and tensors come from it.
        let (mut src, mut config) = TensorSource::open(source)?;
        let tokenizer = src.tokenizer(&config)?;
        check_upload_memory(&config, backend)?;
        let mut upload = |t: Tensor<'_>| -> Result<DeviceBuf> {
            Ok(match t {
                Tensor::F32(v) => backend.upload_vec(v)?,
                Tensor::Stored { bytes, dtype } => backend.upload_stored(bytes, dtype)?,
            })
        };
        let (t, factors) = Layers::load(&mut src, &config, &mut upload, progress)?;
        config.apply_freq_factors(factors.as_deref())?;
        Self::assemble(config, tokenizer, t, backend)
    }

    /// Uploads host weights.
    pub fn from_weights(w: &Weights, tokenizer: Tokenizer, backend: &Backend) -> Result<Self> {
        check_upload_memory(&w.config, backend)?;
        let up = |v: &Vec<f32>| -> Result<DeviceBuf> { Ok(backend.upload(v)?) };
        let opt = |v: &Option<Vec<f32>>| v.as_ref().map(up).transpose();
        let layers = w
            .layers
            .iter()
            .map(|b| {
                let (a, m) = (&b.self_attn, &b.mlp);
                Ok(Block {
                    input_layernorm: up(&b.input_layernorm)?,
                    self_attn: Attention {
                        q_proj: up(&a.q_proj)?,
                        k_proj: up(&a.k_proj)?,
                        v_proj: up(&a.v_proj)?,
                        o_proj: up(&a.o_proj)?,
                        q_bias: opt(&a.q_bias)?,
                        k_bias: opt(&a.k_bias)?,
                        v_bias: opt(&a.v_bias)?,
                        o_bias: opt(&a.o_bias)?,
                        q_norm: opt(&a.q_norm)?,
                        k_norm: opt(&a.k_norm)?,
                    },
                    post_attention_layernorm: up(&b.post_attention_layernorm)?,
                    mlp: Mlp {
                        gate_proj: up(&m.gate_proj)?,
                        up_proj: up(&m.up_proj)?,
                        down_proj: up(&m.down_proj)?,
                        gate_bias: opt(&m.gate_bias)?,
                        up_bias: opt(&m.up_bias)?,
                        down_bias: opt(&m.down_bias)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let t = Layers {
            embed_tokens: up(&w.embed_tokens)?,
            layers,
            norm: up(&w.norm)?,
            lm_head: opt(&w.lm_head)?,
        };
        Self::assemble(w.config.clone(), tokenizer, t, backend)
    }

    fn assemble(
        config: Config,
        tokenizer: Tokenizer,
        t: Layers<DeviceBuf>,
        backend: &Backend,
    ) -> Result<Self> {
        let rope = match Self::dynamic_ntk(&config, 0) {
            None => backend.rope_freqs(&config.rope_inv_freq, config.rope_attention_factor)?,
            Some(d) => backend.rope_freqs_dynamic(
                &config.rope_inv_freq,
                config.rope_attention_factor,
                d,
            )?,
        };
        Ok(Model {
            config,
            tokenizer,
            embed_tokens: t.embed_tokens,
            layers: t.layers,
            norm: t.norm,
            lm_head: t.lm_head,
            rope,
        })
    }

    fn dynamic_ntk(config: &Config, prompt_len: usize) -> Option<DynamicNtk> {
        match config.spec.arch.rope_scaling {
            Some(RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings,
            }) => Some(DynamicNtk {
                factor: factor as f32,
                max_pos: original_max_position_embeddings.min(u32::MAX as usize) as u32,
                min_len: prompt_len.min(u32::MAX as usize) as u32,
            }),
            _ => None,
        }
    }

    /// The RoPE table of a generation whose prompts have `prompt_len`
    /// tokens, where it differs from [`Model::rope`]: under dynamic NTK
    /// scaling the prompt is one call, so its keys turn by the base of its
    /// length (transformers' rule; see `kernels::DynamicNtk`). `None`: use
    /// [`Model::rope`].
    pub fn prompt_rope(&self, be: &Backend, prompt_len: usize) -> Result<Option<RopeFreqs>> {
        let Some(d) = Self::dynamic_ntk(&self.config, prompt_len) else {
            return Ok(None);
        };
        let c = &self.config;
        Ok(Some(be.rope_freqs_dynamic(
            &c.rope_inv_freq,
            c.rope_attention_factor,
            d,
        )?))
    }

    /// Prompt `index`'s token ids, refused (naming the index) when it cannot
    /// fit the model's context: by its length in bytes before it is
    /// tokenized (no tokenizer averages more than
    /// [`MAX_PROMPT_BYTES_PER_TOKEN`] bytes a token, so a longer text cannot be
    /// few enough tokens), then by its token count.
    pub fn encode_prompt(&self, index: usize, text: &str) -> Result<Vec<u32>> {
        self.encode_prompt_with(index, text, true)
    }

    /// [`Model::encode_prompt`], with the tokenizer's special tokens (BOS,
    /// the post-processor's) added or not: not for a rendered chat, whose
    /// template writes its own.
    pub fn encode_prompt_with(&self, index: usize, text: &str, special: bool) -> Result<Vec<u32>> {
        let spec = self.spec();
        let too_long = |what: String| RuntimeError::Prompt {
            index,
            reason: format!(
                "{what} is longer than {}'s context of {} tokens; shorten the prompt",
                spec.name, spec.max_context
            ),
        };
        let max_bytes = spec.max_context.saturating_mul(MAX_PROMPT_BYTES_PER_TOKEN);
        if text.len() > max_bytes {
            return Err(too_long(format!(
                "{} bytes (more than {MAX_PROMPT_BYTES_PER_TOKEN} a token)",
                text.len()
            )));
        }
        let ids = self.tokenizer.encode_with(text, special)?;
        if ids.len() > spec.max_context {
            return Err(too_long(format!("{} tokens", ids.len())));
        }
        Ok(ids)
    }

    /// The output projection (the embeddings when tied).
    pub fn lm_head(&self) -> &DeviceBuf {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    pub fn spec(&self) -> &plans::ModelSpec {
        &self.config.spec
    }
}

/// The CPU backend's "device" buffers are host memory too, f32 at any dtype:
/// refuse a model the machine cannot hold before reading it.
fn check_upload_memory(config: &Config, backend: &Backend) -> Result<()> {
    if backend.is_cuda() {
        return Ok(());
    }
    let s = &config.spec;
    crate::check_memory(
        &format!(
            "loading {} ({} parameters) to {}",
            s.name,
            s.total_params(),
            backend.name()
        ),
        s.total_params()
            .saturating_mul(std::mem::size_of::<f32>() as u64),
        "use a smaller model",
    )
}
