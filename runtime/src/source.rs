//! Where a model comes from and how its tensors are read: a GGUF file, a
//! Hugging Face safetensors directory, or a named preset with seeded random
//! weights. Every tensor comes out as row-major `f32` (`[out, in]` for matrices),
//! under its Hugging Face name (`model.layers.3.self_attn.q_proj.weight`).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device};
use plans::{ArchKind, Family, GgufHeader, ModelSource, ModelSpec, RopeScaling};
use rand::{Rng, SeedableRng};

use crate::checkpoint::Checkpoint;
use crate::{Result, RuntimeError, Tokenizer};
use kernels::Dtype;

/// How a checkpoint's Q/K projections pair the dimensions RoPE rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: llama.cpp permutes Q/K rows when it writes GGUF.
    Interleaved,
    /// Pairs `(i, i + d/2)` ("rotate_half"): Hugging Face checkpoints.
    Halves,
}

impl RopeStyle {
    pub fn interleaved(self) -> bool {
        self == RopeStyle::Interleaved
    }
}

/// The resolved configuration the forward runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub spec: ModelSpec,
    pub rope: RopeStyle,
    /// RoPE's inverse frequencies (`head_dim / 2`), scaling applied: the one
    /// table the forward and recomputation both rotate with.
    pub rope_inv_freq: Vec<f32>,
    /// The factor RoPE's cos and sin are multiplied by (YaRN; 1 elsewhere).
    pub rope_attention_factor: f32,
}

impl Config {
    /// Checks the shape is one the runtime's Llama forward can run.
    pub fn new(spec: ModelSpec, rope: RopeStyle, path: &Path) -> Result<Self> {
        if spec.family != Family::Llama {
            return Err(RuntimeError::Config {
                path: path.to_path_buf(),
                field: "family".into(),
                reason: format!(
                    "{:?} models are not supported by the runtime; it runs the Llama family",
                    spec.family
                ),
            });
        }
        if spec.head_dim & 1 == 1 {
            return Err(RuntimeError::Config {
                path: path.to_path_buf(),
                field: "head_dim".into(),
                reason: format!("{} is odd; RoPE needs an even head_dim", spec.head_dim),
            });
        }
        if !(spec.rope_theta.is_finite() && spec.rope_theta > 1.0) {
            return Err(RuntimeError::Config {
                path: path.to_path_buf(),
                field: "rope_theta".into(),
                reason: format!("{} is not a RoPE base above 1", spec.rope_theta),
            });
        }
        let (rope_inv_freq, rope_attention_factor) = RopeScaling::inv_freq(
            spec.arch.rope_scaling.as_ref(),
            spec.rope_theta,
            spec.head_dim,
        );
        Ok(Config {
            spec,
            rope,
            rope_inv_freq,
            rope_attention_factor,
        })
    }

    /// Divides the inverse frequencies by a GGUF's `rope_freqs.weight`
    /// (llama.cpp's form of Llama-3.1's scaling), once, at load.
    pub(crate) fn apply_freq_factors(&mut self, factors: Option<&[f32]>) -> Result<()> {
        let Some(factors) = factors else {
            return Ok(());
        };
        if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            return Err(RuntimeError::Config {
                path: PathBuf::from(ROPE_FREQS),
                field: ROPE_FREQS.into(),
                reason: format!("frequency factor {bad} is not a positive number"),
            });
        }
        for (f, d) in self.rope_inv_freq.iter_mut().zip(factors) {
            *f /= d;
        }
        Ok(())
    }
}

/// The name of a GGUF's RoPE frequency factors (no Hugging Face twin).
pub(crate) const ROPE_FREQS: &str = "rope_freqs.weight";

/// A tensor as a source hands it over.
pub(crate) enum Tensor<'a> {
    /// Row-major f32 values (dequantised GGUF, synthetic weights).
    F32(Vec<f32>),
    /// A checkpoint's stored little-endian values, straight from the mapped
    /// file, for `kernels::Backend::upload_stored`.
    Stored { bytes: &'a [u8], dtype: Dtype },
}

impl Tensor<'_> {
    /// The values as f32.
    pub(crate) fn into_f32(self) -> Vec<f32> {
        match self {
            Tensor::F32(v) => v,
            Tensor::Stored { bytes, dtype } => kernels::stored::to_f32(bytes, dtype),
        }
    }
}

/// How a loaded tensor becomes a `T` (f32 on the host, an upload on a backend).
pub(crate) type Sink<'s, T> = dyn FnMut(Tensor<'_>) -> Result<T> + 's;

/// How synthetic weights are drawn.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init {
    /// All ones (norm weights).
    Ones,
    /// Uniform with this standard deviation.
    Std(f32),
}

/// Where a model's tensors come from: a GGUF file, safetensors, or seeded random weights.
enum WeightFormat {
    Gguf { header: GgufHeader, file: File },
    Safetensors { files: Checkpoint },
    Synthetic { seed: u64 },
}

/// Reads named tensors from one model source (the runtime's `VarBuilder`),
/// and remembers which it read, so that a tensor the forward does not use is
/// an error ([`TensorSource::finish`]) rather than silently dropped.
pub(crate) struct TensorSource {
    path: PathBuf,
    format: WeightFormat,
    /// Tensors read so far, under the file's own names.
    used: HashSet<String>,
}

impl TensorSource {
    /// Opens the source and resolves its configuration.
    pub fn open(source: &ModelSource) -> Result<(Self, Config)> {
        let path = source.label();
        match source {
            ModelSource::Gguf(p) => {
                // The header is read once; the spec, the tokenizer and the
                // tensors all come from it.
                let (header, file) = GgufHeader::open(p)?;
                let spec = ModelSpec::from_gguf_header(&header, p)?;
                // llama.cpp permutes Q/K rows into interleaved pairs for the
                // llama architecture only; Qwen GGUFs keep Hugging Face's halves.
                let style = match spec.arch.kind {
                    ArchKind::Llama | ArchKind::Mistral => RopeStyle::Interleaved,
                    ArchKind::Qwen2 | ArchKind::Qwen3 => RopeStyle::Halves,
                };
                let cfg = Config::new(spec, style, p)?;
                let format = WeightFormat::Gguf { header, file };
                Ok((TensorSource::new(path, format), cfg))
            }
            ModelSource::HfDir(dir) => {
                let spec = ModelSpec::from_hf_config(&dir.join("config.json"))?;
                let cfg = Config::new(spec, RopeStyle::Halves, dir)?;
                let files = Checkpoint::open(dir)?;
                Ok((
                    TensorSource::new(path, WeightFormat::Safetensors { files }),
                    cfg,
                ))
            }
            ModelSource::Preset { name, seed } => {
                let spec = ModelSpec::preset(name)?;
                let cfg = Config::new(spec, RopeStyle::Halves, &path)?;
                let format = WeightFormat::Synthetic { seed: *seed };
                Ok((TensorSource::new(path, format), cfg))
            }
        }
    }

    fn new(path: PathBuf, format: WeightFormat) -> Self {
        TensorSource {
            path,
            format,
            used: HashSet::new(),
        }
    }

    /// Whether the file holds a tensor under this (Hugging Face) name
    /// (synthetic sources hold nothing on disk: tied stays tied).
    pub fn contains(&self, name: &str) -> bool {
        match &self.format {
            WeightFormat::Gguf { header, .. } => gguf_name(name)
                .map(|n| header.tensors.contains_key(&n))
                .unwrap_or(false),
            WeightFormat::Safetensors { files } => files.contains(name),
            WeightFormat::Synthetic { .. } => false,
        }
    }

    /// Every tensor of the file the loader did not read is an error naming
    /// it: a checkpoint whose tensors the forward does not all use computes
    /// another function than kvpr would. (`*.rotary_emb.inv_freq`, which old
    /// checkpoints store and transformers recomputes from the config, is the
    /// one exception.)
    pub fn finish(&self) -> Result<()> {
        let names: Vec<String> = match &self.format {
            WeightFormat::Gguf { header, .. } => header.tensors.keys().cloned().collect(),
            WeightFormat::Safetensors { files } => files.names().cloned().collect(),
            WeightFormat::Synthetic { .. } => Vec::new(),
        };
        let mut unused: Vec<String> = names
            .into_iter()
            .filter(|n| !self.used.contains(n) && !n.ends_with(".rotary_emb.inv_freq"))
            .collect();
        unused.sort();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(RuntimeError::UnusedTensor {
                path: self.path.clone(),
                name: first.clone(),
                more: unused.len() - 1,
            }),
        }
    }

    /// The tokenizer that goes with the source (from the header already read,
    /// for a GGUF file).
    pub fn tokenizer(&self, cfg: &Config) -> Result<Tokenizer> {
        match &self.format {
            WeightFormat::Gguf { header, .. } => Tokenizer::from_gguf_header(header, &self.path),
            WeightFormat::Safetensors { .. } => Tokenizer::from_hf_dir(&self.path),
            WeightFormat::Synthetic { .. } => {
                Ok(Tokenizer::bytes(cfg.spec.vocab_size, self.path.clone()))
            }
        }
    }

    /// The tensor `name`, checked against `shape`, through `sink`: a
    /// safetensors tensor as its stored bytes (the sink takes them in one
    /// pass; see [`Tensor`]), anything else as f32.
    pub fn load<T>(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
        sink: &mut Sink<'_, T>,
    ) -> Result<T> {
        let WeightFormat::Safetensors { files } = &self.format else {
            return sink(Tensor::F32(self.get(name, shape, init)?));
        };
        let path = &self.path;
        let t = files.with_tensor(name, |bytes, dtype, found| {
            if found != shape {
                return Err(RuntimeError::Shape {
                    path: path.clone(),
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    found: found.to_vec(),
                });
            }
            sink(Tensor::Stored { bytes, dtype })
        })?;
        let t = t.ok_or_else(|| RuntimeError::MissingTensor {
            path: path.clone(),
            name: name.to_string(),
        })?;
        self.used.insert(name.to_string());
        Ok(t)
    }

    /// The tensor `name` as row-major f32, checked against `shape`.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let path = self.path.clone();
        let missing = || RuntimeError::MissingTensor {
            path: path.clone(),
            name: name.to_string(),
        };
        let tensor = match &mut self.format {
            WeightFormat::Synthetic { seed } => return Ok(synthetic(*seed, name, shape, init)),
            WeightFormat::Gguf { header, file } => {
                let gname = gguf_name(name).ok_or_else(missing)?;
                let info = header.tensors.get(&gname).ok_or_else(missing)?;
                self.used.insert(gname.clone());
                let dtype = info.type_name().to_string();
                // The header reader checked the type, the size and that the
                // data lies inside the file.
                let info = gguf_file::TensorInfo {
                    ggml_dtype: candle_type(info.ggml_type).ok_or_else(|| RuntimeError::Gguf {
                        path: path.clone(),
                        reason: format!(
                            "tensor {gname}: GGML type {dtype} is not readable (kvpr reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2K to Q6K)"
                        ),
                    })?,
                    shape: info.dims.clone().into(),
                    offset: info.offset,
                };
                let q = info
                    .read(file, header.data_offset, &Device::Cpu)
                    .map_err(|e| RuntimeError::Gguf {
                        path: path.clone(),
                        reason: format!("tensor {gname}: {e}"),
                    })?;
                q.dequantize(&Device::Cpu)
                    .map_err(|e| RuntimeError::Dtype {
                        path: path.clone(),
                        name: gname.clone(),
                        dtype,
                        reason: e.to_string(),
                    })?
            }
            WeightFormat::Safetensors { .. } => {
                // The stored bytes, through the one safetensors path.
                return self.load(name, shape, init, &mut |t| Ok(t.into_f32()));
            }
        };
        let found = tensor.dims().to_vec();
        if found != shape {
            return Err(RuntimeError::Shape {
                path,
                name: name.to_string(),
                expected: shape.to_vec(),
                found,
            });
        }
        let dtype = format!("{:?}", tensor.dtype());
        tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| RuntimeError::Dtype {
                path,
                name: name.to_string(),
                dtype,
                reason: e.to_string(),
            })
    }
}

/// candle's type for a GGML type id the header reader accepted, where
/// candle's reader loads it: not Q8_1 (9) or Q8_K (15), which llama.cpp uses
/// only for activations inside its dot products (the error names them).
fn candle_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        30 => GgmlDType::BF16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        _ => return None,
    })
}

/// The GGUF (llama.cpp) name of a Hugging Face tensor name, if it is a Llama tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        ROPE_FREQS => return Some(ROPE_FREQS.into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let short = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// Seeded random weights: each tensor is a pure function of (seed, name, shape).
/// Generated in blocks of [`SYNTHETIC_BLOCK`] values, each from its own
/// generator seeded by (tensor, block), on every core: a Llama-2-7B-shaped
/// preset is 6.7 billion numbers, and the result does not depend on how many
/// threads made it.
fn synthetic(seed: u64, name: &str, shape: &[usize], init: Init) -> Vec<f32> {
    let n: usize = shape.iter().product();
    match init {
        Init::Ones => vec![1.0; n],
        Init::Std(std) => {
            // FNV-1a over the name, mixed with the seed.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in name.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            // Uniform on [-a, a] has standard deviation a / sqrt(3).
            let a = std * 3f32.sqrt();
            let mut out = vec![0f32; n];
            let fill = |i: usize, block: &mut [f32]| {
                let block_seed = h ^ (i as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93);
                let mut rng = rand::rngs::StdRng::seed_from_u64(block_seed);
                block.iter_mut().for_each(|v| *v = rng.random_range(-a..=a));
            };
            let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
            let blocks: Vec<(usize, &mut [f32])> =
                out.chunks_mut(SYNTHETIC_BLOCK).enumerate().collect();
            if threads < 2 || blocks.len() < 2 {
                blocks.into_iter().for_each(|(i, b)| fill(i, b));
                return out;
            }
            let per = blocks.len().div_ceil(threads);
            let mut blocks = blocks;
            std::thread::scope(|s| {
                while !blocks.is_empty() {
                    let rest = blocks.split_off(per.min(blocks.len()));
                    let mine = std::mem::replace(&mut blocks, rest);
                    s.spawn(move || mine.into_iter().for_each(|(i, b)| fill(i, b)));
                }
            });
            out
        }
    }
}

/// Values per independently seeded block of a synthetic tensor.
const SYNTHETIC_BLOCK: usize = 1 << 20;

#[cfg(test)]
mod tests {
    /// A 16-bit safetensors checkpoint reaches the sink as its stored bytes
    /// in the checkpoint's dtype, for every tensor: nothing converts it to
    /// f32 on the way to a device of that dtype (`Backend::upload_stored`
    /// then copies those bytes as they are).
    #[test]
    fn safetensors_tensors_reach_the_sink_as_their_stored_bytes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf");
        for (name, want) in [("qwen2", Dtype::Bf16), ("llama-mlp-bias", Dtype::F16)] {
            let (mut src, config) =
                TensorSource::open(&ModelSource::HfDir(dir.join(name))).unwrap();
            let mut seen = Vec::new();
            let mut sink = |t: Tensor<'_>| -> Result<Vec<f32>> {
                match &t {
                    Tensor::Stored { bytes, dtype } => seen.push((*dtype, bytes.len())),
                    Tensor::F32(v) => panic!("{name}: a tensor of {} came as f32", v.len()),
                }
                Ok(t.into_f32())
            };
            let (layers, _) =
                crate::weights::Layers::load(&mut src, &config, &mut sink, |_, _| {}).unwrap();
            assert!(
                seen.len() > 10 && seen.iter().all(|(d, _)| *d == want),
                "{name}: {seen:?}"
            );
            // The embedding's bytes are 2 per value.
            let s = &config.spec;
            assert_eq!(seen[0].1, 2 * s.vocab_size * s.hidden_size, "{name}");
            assert_eq!(layers.embed_tokens.len(), s.vocab_size * s.hidden_size);
        }
    }

    use super::*;

    #[test]
    fn gguf_names() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.k_proj.weight").as_deref(),
            Some("blk.12.attn_k.weight")
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(
            gguf_name("model.layers.0.self_attn.q_proj.bias").as_deref(),
            Some("blk.0.attn_q.bias")
        );
        assert_eq!(
            gguf_name("model.layers.1.self_attn.k_norm.weight").as_deref(),
            Some("blk.1.attn_k_norm.weight")
        );
    }

    #[test]
    fn synthetic_is_deterministic_and_scaled() {
        let a = synthetic(7, "w", &[64, 64], Init::Std(0.125));
        let b = synthetic(7, "w", &[64, 64], Init::Std(0.125));
        let c = synthetic(8, "w", &[64, 64], Init::Std(0.125));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let var = a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32;
        assert!((var.sqrt() / 0.125 - 1.0).abs() < 0.05, "{}", var.sqrt());
        // Past one block, blocks differ (their own generators) and the whole
        // is the same every time, whatever the threads.
        let big = synthetic(7, "w", &[3, SYNTHETIC_BLOCK], Init::Std(0.125));
        assert_eq!(
            big,
            synthetic(7, "w", &[3, SYNTHETIC_BLOCK], Init::Std(0.125))
        );
        assert_ne!(big[..16], big[SYNTHETIC_BLOCK..SYNTHETIC_BLOCK + 16]);
        assert_eq!(
            big[..64 * 64],
            synthetic(7, "w", &[64 * 64], Init::Std(0.125))[..]
        );
    }
}
