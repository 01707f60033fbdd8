//! What a Llama-family checkpoint computes beyond the plain Llama-2 forward:
//! projection biases, per-head q/k norms, a sliding attention window and a
//! scaled rotary embedding. Read from a Hugging Face `config.json` or from
//! GGUF metadata, every setting that changes the model's function is either
//! resolved here into [`Arch`] or refused by name ([`PlansError::Unsupported`]):
//! kvpr never computes another function than the checkpoint's in silence.
//!
//! The rotary frequencies follow transformers' `modeling_rope_utils.py`, one
//! function per RoPE type ([`RopeScaling::inv_freq`]); they are computed once
//! at load and used by the forward and by recomputation alike.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{PlansError, Result};

/// The checkpoint's architecture name (`model_type` in `config.json`,
/// `general.architecture` in GGUF), within the Llama family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchKind {
    #[default]
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl ArchKind {
    pub fn name(self) -> &'static str {
        match self {
            ArchKind::Llama => "llama",
            ArchKind::Mistral => "mistral",
            ArchKind::Qwen2 => "qwen2",
            ArchKind::Qwen3 => "qwen3",
        }
    }
}

/// A rotary embedding's scaling, resolved (every default applied).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RopeScaling {
    /// Positions divided by `factor` (every inverse frequency divided by it).
    Linear { factor: f64 },
    /// Llama-3.1: low frequencies divided by `factor`, high ones kept, a
    /// smooth ramp between `original / low_freq_factor` and
    /// `original / high_freq_factor` wavelengths.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN: interpolation below a ramp set by `beta_fast`/`beta_slow`
    /// rotations over the original context, extrapolation above it, and cos
    /// and sin multiplied by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// Dynamic NTK (`rope_type: "dynamic"`): the base grows with the
    /// length of the forward call that made a key, beyond
    /// `original_max_position_embeddings` (the config's
    /// `max_position_embeddings`); see `kernels::DynamicNtk`. The context
    /// kvpr runs such a model to is `factor` times the original.
    Dynamic {
        factor: f64,
        original_max_position_embeddings: usize,
    },
    /// A GGUF's `rope_freqs.weight` tensor: one divisor per frequency
    /// (llama.cpp stores Llama-3.1's scaling this way); the runtime reads the
    /// tensor and divides.
    FreqFactors,
}

/// What the forward does beyond plain Llama-2 (all off for presets).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    pub kind: ArchKind,
    /// Biases on the q, k and v projections (Qwen2; Llama's `attention_bias`).
    #[serde(default)]
    pub qkv_bias: bool,
    /// A bias on the output projection (Llama's `attention_bias`).
    #[serde(default)]
    pub o_bias: bool,
    /// Biases on gate, up and down (Llama's `mlp_bias`).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    #[serde(default)]
    pub qk_norm: bool,
    /// Attention over the last `W` positions only (Mistral).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
}

impl Arch {
    /// Plain Llama-2: nothing beyond the base forward.
    pub fn is_plain(&self) -> bool {
        *self == Arch::default()
    }

    /// One line for `kvpr plan` and messages: `qwen2 (q/k/v bias)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.qkv_bias {
            parts.push("q/k/v bias".to_string());
        }
        if self.o_bias {
            parts.push("o bias".into());
        }
        if self.mlp_bias {
            parts.push("MLP bias".into());
        }
        if self.qk_norm {
            parts.push("q/k norm".into());
        }
        if let Some(w) = self.sliding_window {
            parts.push(format!("sliding window {w}"));
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) => parts.push(format!("linear RoPE x{factor}")),
            Some(RopeScaling::Llama3 { factor, .. }) => {
                parts.push(format!("llama3 RoPE x{factor}"))
            }
            Some(RopeScaling::Yarn { factor, .. }) => parts.push(format!("YaRN RoPE x{factor}")),
            Some(RopeScaling::Dynamic { factor, .. }) => {
                parts.push(format!("dynamic NTK RoPE x{factor}"))
            }
            Some(RopeScaling::FreqFactors) => parts.push("RoPE frequency factors".into()),
            None => {}
        }
        if parts.is_empty() {
            self.kind.name().to_string()
        } else {
            format!("{} ({})", self.kind.name(), parts.join(", "))
        }
    }
}

fn unsupported(
    path: &Path,
    key: &str,
    value: impl ToString,
    reason: impl Into<String>,
) -> PlansError {
    PlansError::Unsupported {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Keys that would change the function and that no supported architecture
/// has: refused when set to anything but null/false/1.
const FOREIGN_KEYS: &[(&str, &str)] = &[
    ("attn_logit_softcapping", "logit soft-capping (Gemma 2) is not implemented"),
    ("final_logit_softcapping", "logit soft-capping (Gemma 2) is not implemented"),
    ("query_pre_attn_scalar", "a query scale other than 1/sqrt(head_dim) (Gemma) is not implemented"),
    ("quantization_config", "pre-quantised safetensors (GPTQ/AWQ/FP8) are not read; use a 16- or 32-bit checkpoint or a GGUF file"),
    ("embedding_multiplier", "scaled embeddings (Granite) are not implemented"),
    ("residual_multiplier", "scaled residuals (Granite) are not implemented"),
    ("logits_scaling", "scaled logits (Granite) are not implemented"),
    ("attention_multiplier", "an attention scale other than 1/sqrt(head_dim) is not implemented"),
    ("qk_layernorm", "q/k layer norms outside Qwen3 are not implemented"),
    ("use_qk_norm", "q/k norms outside Qwen3 are not implemented"),
];

/// Whether a config value means "off" (absent, null, false, 0, or 1 for factors).
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// Resolves a Hugging Face config's architecture settings; `kind` comes from
/// `model_type`, `max_pos` is `max_position_embeddings`, `head_dim` the
/// resolved one. Returns the architecture and the RoPE base (`rope_theta`,
/// from the top level or from `rope_parameters`).
pub(crate) fn from_hf(
    cfg: &BTreeMap<String, Value>,
    path: &Path,
    kind: ArchKind,
    max_pos: usize,
    n_layers: usize,
) -> Result<(Arch, f64)> {
    for (key, reason) in FOREIGN_KEYS {
        if let Some(v) = cfg.get(*key) {
            if !is_off(v) {
                return Err(unsupported(path, key, v, *reason));
            }
        }
    }
    if let Some(v) = cfg.get("hidden_act") {
        if !matches!(v.as_str(), Some("silu") | Some("swish")) {
            return Err(unsupported(
                path,
                "hidden_act",
                v,
                "kvpr's MLP is SiLU-gated (hidden_act \"silu\")",
            ));
        }
    }
    if let Some(v) = cfg.get("partial_rotary_factor") {
        if v.as_f64() != Some(1.0) {
            return Err(unsupported(
                path,
                "partial_rotary_factor",
                v,
                "RoPE on part of each head is not implemented (only 1.0)",
            ));
        }
    }
    let flag = |key: &str| -> Result<bool> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(PlansError::invalid(
                path,
                key,
                format!("{v} is not true or false"),
            )),
        }
    };
    let mut arch = Arch {
        kind,
        ..Arch::default()
    };
    match kind {
        ArchKind::Llama => {
            let bias = flag("attention_bias")?;
            (arch.qkv_bias, arch.o_bias, arch.mlp_bias) = (bias, bias, flag("mlp_bias")?);
        }
        ArchKind::Qwen2 => arch.qkv_bias = true,
        ArchKind::Qwen3 => {
            let bias = flag("attention_bias")?;
            (arch.qkv_bias, arch.o_bias, arch.qk_norm) = (bias, bias, true);
        }
        ArchKind::Mistral => {}
    }
    if kind != ArchKind::Llama && flag("mlp_bias")? {
        return Err(unsupported(
            path,
            "mlp_bias",
            true,
            format!("{} has no MLP biases", kind.name()),
        ));
    }
    arch.sliding_window = window_from_hf(cfg, path, kind, n_layers)?;

    // RoPE: `rope_scaling` (older) or `rope_parameters` (transformers 5),
    // each with `type` or `rope_type`; the base may sit inside the latter.
    let mut theta = cfg.get("rope_theta").and_then(Value::as_f64);
    let mut scaling = None;
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(v) = cfg.get(key) else { continue };
        if v.is_null() {
            continue;
        }
        let obj = v
            .as_object()
            .ok_or_else(|| PlansError::invalid(path, key, format!("{v} is not an object")))?;
        if let Some(t) = obj.get("rope_theta").and_then(Value::as_f64) {
            theta = Some(t);
        }
        if let Some(p) = obj.get("partial_rotary_factor") {
            if p.as_f64() != Some(1.0) {
                return Err(unsupported(
                    path,
                    &format!("{key}.partial_rotary_factor"),
                    p,
                    "RoPE on part of each head is not implemented (only 1.0)",
                ));
            }
        }
        let s = rope_from_hf(obj, path, key, max_pos)?;
        if scaling.is_some() && s.is_some() && s != scaling {
            return Err(unsupported(
                path,
                key,
                v,
                "rope_scaling and rope_parameters disagree; keep one",
            ));
        }
        scaling = scaling.or(s);
    }
    arch.rope_scaling = scaling;
    Ok((arch, theta.unwrap_or(1e4)))
}

/// The sliding window a config asks for, if the architecture applies it.
fn window_from_hf(
    cfg: &BTreeMap<String, Value>,
    path: &Path,
    kind: ArchKind,
    n_layers: usize,
) -> Result<Option<usize>> {
    let window = match cfg.get("sliding_window") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|&w| w > 0)
                .and_then(|w| usize::try_from(w).ok())
                .ok_or_else(|| {
                    PlansError::invalid(
                        path,
                        "sliding_window",
                        format!("{v} is not a positive integer"),
                    )
                })?,
        ),
    };
    // Which layers slide: transformers 5 writes `layer_types`; older Qwen
    // configs say it with `use_sliding_window` and `max_window_layers`.
    let sliding_layers: Option<usize> = match cfg.get("layer_types").and_then(Value::as_array) {
        Some(types) => Some(
            types
                .iter()
                .filter(|t| t.as_str() == Some("sliding_attention"))
                .count(),
        ),
        None => match kind {
            ArchKind::Mistral => window.map(|_| n_layers),
            ArchKind::Qwen2 | ArchKind::Qwen3 => {
                let on = matches!(cfg.get("use_sliding_window"), Some(Value::Bool(true)));
                if on && window.is_some() {
                    let from = cfg
                        .get("max_window_layers")
                        .and_then(Value::as_u64)
                        .map_or(0, |m| m as usize);
                    Some(n_layers.saturating_sub(from))
                } else {
                    Some(0)
                }
            }
            // Llama has no window: transformers ignores the key.
            ArchKind::Llama => Some(0),
        },
    };
    match (sliding_layers.unwrap_or(0), window) {
        (0, _) => Ok(None),
        (n, Some(w)) if n == n_layers => Ok(Some(w)),
        (n, Some(w)) => Err(unsupported(
            path,
            "sliding_window",
            w,
            format!(
                "{n} of {n_layers} layers use the window (layer_types / use_sliding_window / max_window_layers); kvpr applies a window to all layers or none"
            ),
        )),
        (_, None) => Err(PlansError::invalid(
            path,
            "layer_types",
            "names sliding_attention layers but sliding_window is not set",
        )),
    }
}

/// One `rope_scaling` / `rope_parameters` object.
fn rope_from_hf(
    obj: &serde_json::Map<String, Value>,
    path: &Path,
    key: &str,
    max_pos: usize,
) -> Result<Option<RopeScaling>> {
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let f = |name: &str| obj.get(name).and_then(Value::as_f64);
    let need = |name: &str| {
        f(name).ok_or_else(|| {
            PlansError::invalid(path, format!("{key}.{name}"), "missing or not a number")
        })
    };
    let positive = |name: &str, v: f64| -> Result<f64> {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(PlansError::invalid(
                path,
                format!("{key}.{name}"),
                format!("{v} is not a positive number"),
            ))
        }
    };
    // `None`: the key is required (llama3); else its default (yarn).
    let original = |default: Option<usize>| -> Result<usize> {
        let name = format!("{key}.original_max_position_embeddings");
        match obj.get("original_max_position_embeddings") {
            None | Some(Value::Null) => default
                .ok_or_else(|| PlansError::invalid(path, name, "missing (llama3 RoPE needs it)")),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    PlansError::invalid(path, name, format!("{v} is not a positive integer"))
                }),
        }
    };
    Ok(match kind {
        "default" | "none" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: positive("factor", need("factor")?)?,
        }),
        "llama3" => {
            let low = positive("low_freq_factor", need("low_freq_factor")?)?;
            let high = positive("high_freq_factor", need("high_freq_factor")?)?;
            if high <= low {
                return Err(PlansError::invalid(
                    path,
                    format!("{key}.high_freq_factor"),
                    format!("{high} must be above low_freq_factor {low}"),
                ));
            }
            Some(RopeScaling::Llama3 {
                factor: positive("factor", need("factor")?)?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original(None)?,
            })
        }
        "yarn" => {
            let mut factor = positive("factor", need("factor")?)?;
            // transformers: with an explicit original context, the factor is
            // the ratio of the two contexts (DeepSeek-V3's convention).
            let has_original = obj
                .get("original_max_position_embeddings")
                .is_some_and(|v| !v.is_null());
            let orig = original(Some(max_pos))?;
            if has_original {
                factor = max_pos as f64 / orig as f64;
            }
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match f("attention_factor") {
                Some(a) => positive("attention_factor", a)?,
                None => match (
                    f("mscale").filter(|m| *m != 0.0),
                    f("mscale_all_dim").filter(|m| *m != 0.0),
                ) {
                    (Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                },
            };
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: f("beta_fast").filter(|b| *b != 0.0).unwrap_or(32.0),
                beta_slow: f("beta_slow").filter(|b| *b != 0.0).unwrap_or(1.0),
                attention_factor,
                truncate: obj.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            })
        }
        "dynamic" => {
            let factor = positive("factor", need("factor")?)?;
            if factor < 1.0 {
                return Err(PlansError::invalid(
                    path,
                    format!("{key}.factor"),
                    format!("{factor} is below 1: dynamic NTK only ever extends the context"),
                ));
            }
            Some(RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings: max_pos,
            })
        }
        other => {
            return Err(unsupported(
                path,
                &format!("{key}.rope_type"),
                format!("{other:?}"),
                "kvpr implements RoPE types default, linear, dynamic, llama3 and yarn",
            ))
        }
    })
}

impl RopeScaling {
    /// The inverse frequencies (`head_dim / 2` of them) and the factor cos and
    /// sin are multiplied by, for base `theta`: transformers'
    /// `_compute_*_parameters`, evaluated in f64 and rounded to f32.
    /// [`RopeScaling::FreqFactors`] gives the unscaled table: the runtime
    /// divides it by the checkpoint's factors.
    pub fn inv_freq(scaling: Option<&RopeScaling>, theta: f64, head_dim: usize) -> (Vec<f32>, f32) {
        let dim = head_dim as f64;
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim))
            .collect();
        let (freqs, factor): (Vec<f64>, f64) = match scaling {
            // Dynamic NTK rescales per row at run time (kernels::DynamicNtk).
            None | Some(RopeScaling::FreqFactors) | Some(RopeScaling::Dynamic { .. }) => {
                (base, 1.0)
            }
            Some(RopeScaling::Linear { factor }) => {
                (base.iter().map(|f| f / factor).collect(), 1.0)
            }
            Some(&RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                let freqs = base
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            Some(&RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            }) => {
                let orig = original_max_position_embeddings as f64;
                let correction = |rotations: f64| {
                    dim * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                let freqs = base
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (f / factor) * (1.0 - extrapolation) + f * extrapolation
                    })
                    .collect();
                (freqs, attention_factor)
            }
        };
        (freqs.into_iter().map(|f| f as f32).collect(), factor as f32)
    }
}

/// The architecture a GGUF's `general.architecture` names, or its refusal
/// (checked before any `{arch}.*` key is read: another architecture's file
/// need not have the keys a Llama has).
#[cfg(feature = "gguf")]
pub(crate) fn gguf_kind(arch_name: &str, path: &Path) -> Result<ArchKind> {
    match arch_name {
        "llama" => Ok(ArchKind::Llama),
        "qwen2" => Ok(ArchKind::Qwen2),
        "qwen3" => Ok(ArchKind::Qwen3),
        other => Err(unsupported(
            path,
            "general.architecture",
            format!("{other:?}"),
            "kvpr runs GGUF architectures llama, qwen2 and qwen3",
        )),
    }
}

/// Resolves a GGUF file's architecture settings from its metadata and
/// tensor names: GGUF has no flags for biases or q/k norms, the tensors say.
#[cfg(feature = "gguf")]
pub(crate) fn from_gguf(
    header: &crate::GgufHeader,
    path: &Path,
    arch_name: &str,
    head_dim: usize,
) -> Result<Arch> {
    let kind = gguf_kind(arch_name, path)?;
    let md = &header.metadata;
    let key = |name: &str| format!("{arch_name}.{name}");
    let get = |name: &str| md.get(&key(name));
    // A number set to 0 means "off" (llama.cpp writes integers for counts
    // and windows, floats for caps).
    let is_zero = |v: &crate::GgufValue| v.as_f64() == Some(0.0) || v.as_u64() == Some(0);
    for (name, reason) in [
        (
            "attn_logit_softcapping",
            "logit soft-capping is not implemented",
        ),
        (
            "final_logit_softcapping",
            "logit soft-capping is not implemented",
        ),
        (
            "attention.sliding_window",
            "sliding-window attention from GGUF is not implemented",
        ),
        (
            "rope.scaling.yarn_log_multiplier",
            "YaRN from GGUF is not implemented",
        ),
        (
            "expert_count",
            "mixture-of-experts layers (Mixtral) are not implemented",
        ),
    ] {
        if let Some(v) = get(name) {
            if !is_zero(v) {
                return Err(unsupported(path, &key(name), format!("{v:?}"), reason));
            }
        }
    }
    if let Some(d) = get("rope.dimension_count").and_then(|v| v.as_u64()) {
        if d as usize != head_dim {
            return Err(unsupported(
                path,
                &key("rope.dimension_count"),
                d,
                format!("RoPE on {d} of {head_dim} dimensions per head is not implemented"),
            ));
        }
    }
    let tensor = |name: &str| header.tensors.contains_key(name);
    let mut arch = Arch {
        kind,
        qkv_bias: tensor("blk.0.attn_q.bias"),
        o_bias: tensor("blk.0.attn_output.bias"),
        mlp_bias: tensor("blk.0.ffn_gate.bias"),
        qk_norm: tensor("blk.0.attn_q_norm.weight"),
        ..Arch::default()
    };
    if kind == ArchKind::Qwen3 && !arch.qk_norm {
        return Err(PlansError::Model {
            path: path.to_path_buf(),
            reason: "a qwen3 GGUF without blk.0.attn_q_norm.weight".into(),
        });
    }
    let scaling_type = get("rope.scaling.type").and_then(|v| v.as_str().map(str::to_string));
    let factor = get("rope.scaling.factor")
        .and_then(|v| v.as_f64())
        .or_else(|| get("rope.scale_linear").and_then(|v| v.as_f64()));
    arch.rope_scaling = match (scaling_type.as_deref(), factor) {
        (None | Some("none"), None) => None,
        (None | Some("none"), Some(f)) if f == 1.0 || f == 0.0 => None,
        (None | Some("linear"), Some(f)) if f.is_finite() && f > 0.0 => {
            Some(RopeScaling::Linear { factor: f })
        }
        (t, f) => {
            return Err(unsupported(
                path,
                &key("rope.scaling.type"),
                format!("{t:?} (factor {f:?})"),
                "kvpr runs GGUF RoPE scaling none, linear and llama3's rope_freqs tensor",
            ))
        }
    };
    if tensor("rope_freqs.weight") {
        if arch.rope_scaling.is_some() {
            return Err(unsupported(
                path,
                "rope_freqs.weight",
                "present",
                "frequency factors together with rope.scaling are not implemented",
            ));
        }
        arch.rope_scaling = Some(RopeScaling::FreqFactors);
    }
    Ok(arch)
}

#[cfg(test)]
#[path = "arch_tests.rs"]
mod tests;
