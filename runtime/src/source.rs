//! Where a model comes from and how its tensors are read: a GGUF file, a
//! Hugging Face safetensors directory, or a named preset with seeded random
//! weights. Every tensor comes out as row-major `f32` (`[out, in]` for matrices),
//! under its Hugging Face name (`model.layers.3.self_attn.q_proj.weight`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use plans::{Family, GgufHeader, ModelSource, ModelSpec};
use rand::{Rng, SeedableRng};

use crate::{Result, RuntimeError, Tokenizer};

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
        Ok(Config { spec, rope })
    }
}

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
    Safetensors { tensors: HashMap<String, Tensor> },
    Synthetic { seed: u64 },
}

/// Reads named tensors from one model source (the runtime's `VarBuilder`).
pub(crate) struct TensorSource {
    path: PathBuf,
    format: WeightFormat,
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
                let cfg = Config::new(spec, RopeStyle::Interleaved, p)?;
                let format = WeightFormat::Gguf { header, file };
                Ok((TensorSource { path, format }, cfg))
            }
            ModelSource::HfDir(dir) => {
                let spec = ModelSpec::from_hf_config(&dir.join("config.json"))?;
                let cfg = Config::new(spec, RopeStyle::Halves, dir)?;
                let tensors = read_safetensors_dir(dir)?;
                Ok((
                    TensorSource {
                        path,
                        format: WeightFormat::Safetensors { tensors },
                    },
                    cfg,
                ))
            }
            ModelSource::Preset { name, seed } => {
                let spec = ModelSpec::preset(name)?;
                let cfg = Config::new(spec, RopeStyle::Halves, &path)?;
                let format = WeightFormat::Synthetic { seed: *seed };
                Ok((TensorSource { path, format }, cfg))
            }
        }
    }

    /// Whether the file holds a tensor under this (Hugging Face) name
    /// (synthetic sources hold nothing on disk: tied stays tied).
    pub fn contains(&self, name: &str) -> bool {
        match &self.format {
            WeightFormat::Gguf { header, .. } => gguf_name(name)
                .map(|n| header.tensors.contains_key(&n))
                .unwrap_or(false),
            WeightFormat::Safetensors { tensors } => tensors.contains_key(name),
            WeightFormat::Synthetic { .. } => false,
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
                let dtype = info.type_name().to_string();
                // The header reader checked the type, the size and that the
                // data lies inside the file.
                let info = gguf_file::TensorInfo {
                    ggml_dtype: candle_type(info.ggml_type).ok_or_else(|| RuntimeError::Gguf {
                        path: path.clone(),
                        reason: format!("tensor {gname}: GGML type {dtype} is not readable"),
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
            WeightFormat::Safetensors { tensors } => tensors.get(name).ok_or_else(missing)?.clone(),
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

/// candle's type for a GGML type id the header reader accepted.
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
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        _ => return None,
    })
}

/// Reads every `*.safetensors` file of a directory.
fn read_safetensors_dir(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let entries = std::fs::read_dir(dir).map_err(|source| RuntimeError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(RuntimeError::Safetensors {
            path: dir.to_path_buf(),
            reason: "no *.safetensors file in the directory".into(),
        });
    }
    let mut all = HashMap::new();
    for f in files {
        let data = std::fs::read(&f).map_err(|source| RuntimeError::Io {
            path: f.clone(),
            source,
        })?;
        let tensors = candle_core::safetensors::load_buffer(&data, &Device::Cpu).map_err(|e| {
            RuntimeError::Safetensors {
                path: f.clone(),
                reason: e.to_string(),
            }
        })?;
        all.extend(tensors);
    }
    Ok(all)
}

/// The GGUF (llama.cpp) name of a Hugging Face tensor name, if it is a Llama tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let short = match rest {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.weight"))
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
