//! What a run asks for: batch, lengths, element type and memory budgets.

use serde::{Deserialize, Serialize};

use crate::{ModelSpec, PlansError, Result};

/// Element type of weights, activations and K/V at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// `p`: bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" | "half" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(format!("unknown dtype {s:?}; use f32, f16 or bf16")),
        }
    }
}

/// A decoding workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub batch: usize,
    pub prompt_len: usize,
    pub gen_len: usize,
    pub dtype: Dtype,
    /// Device memory kvpr may use for K/V: the resident prefix of every layer plus
    /// the staging buffers of the layers in flight. Weights are not counted.
    pub gpu_memory_budget: u64,
    /// Host memory kvpr may use for the stored activations and K/V.
    pub host_memory_budget: u64,
}

impl Workload {
    /// Decode steps see contexts `prompt_len ..= max_context_len()`
    /// (saturating: a workload whose sum overflows is refused by `validate`).
    pub fn max_context_len(&self) -> usize {
        self.checked_max_context_len().unwrap_or(usize::MAX)
    }

    /// `prompt_len + gen_len - 1`, `None` if it overflows.
    pub fn checked_max_context_len(&self) -> Option<usize> {
        self.prompt_len.checked_add(self.gen_len.saturating_sub(1))
    }

    /// Rejects workloads no plan can serve. Errors name the [`Field`]; the
    /// caller says where it came from (a flag, a file).
    pub fn validate(&self, model: &ModelSpec) -> Result<()> {
        let err = |field: Field, reason: String| PlansError::Workload { field, reason };
        if self.batch == 0 {
            return Err(err(Field::Batch, "must be at least 1".into()));
        }
        if self.prompt_len == 0 {
            return Err(err(Field::PromptLen, "must be at least 1 token".into()));
        }
        if self.gen_len == 0 {
            return Err(err(Field::GenLen, "must be at least 1 token".into()));
        }
        match self.checked_max_context_len() {
            Some(n) if n <= crate::model::MAX_CONTEXT => {}
            _ => {
                return Err(err(
                    Field::GenLen,
                    format!(
                        "a prompt of {} tokens and {} generated ones exceed any context kvpr plans for (at most {} tokens)",
                        self.prompt_len,
                        self.gen_len,
                        crate::model::MAX_CONTEXT
                    ),
                ))
            }
        }
        if self.prompt_len > model.max_context {
            return Err(err(
                Field::PromptLen,
                format!(
                    "{} tokens is longer than {}'s context of {} tokens; shorten the prompt",
                    self.prompt_len, model.name, model.max_context
                ),
            ));
        }
        Ok(())
    }
}

/// A number of a workload or of a plan request that the user chose. Library
/// errors carry it as data; the CLI names it as the user gave it: a flag
/// (`--batch`) or a field of a file (`plan.json: workload.batch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Batch,
    PromptLen,
    GenLen,
    Dtype,
    GpuMemoryBudget,
    HostMemoryBudget,
    BlockTokens,
    Schedule,
}

impl Field {
    /// The field's name in the plan format (`prompt_len`).
    pub fn name(self) -> &'static str {
        match self {
            Field::Batch => "batch",
            Field::PromptLen => "prompt_len",
            Field::GenLen => "gen_len",
            Field::Dtype => "dtype",
            Field::GpuMemoryBudget => "gpu_memory_budget",
            Field::HostMemoryBudget => "host_memory_budget",
            Field::BlockTokens => "block_tokens",
            Field::Schedule => "schedule",
        }
    }

    /// Its dotted path in a plan file (`workload.batch`, `block_tokens`).
    pub fn plan_path(self) -> String {
        match self {
            Field::BlockTokens | Field::Schedule => self.name().to_string(),
            f => format!("workload.{}", f.name()),
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes in binary units (`512 B`, `1.50 GiB`): the inverse of [`parse_bytes`] for messages and tables.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// Parses a size such as `4GiB`, `512MiB`, `64GB`, `1.5 GiB` or `1000000` (bytes).
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. 4GiB, 512MiB or 64GB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ))
        }
    };
    let bytes = (value * mult).round();
    // `value` has no sign (the split above stops at '-'), but may be huge or inf.
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!(
            "{s:?} is more bytes than kvpr can count (at most 2^64 - 1 bytes, 16 EiB); \
             write a smaller size"
        ));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("64GB").unwrap(), 64_000_000_000);
        assert_eq!(parse_bytes("1.5 KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(parse_bytes(&human_bytes(3 << 30)).unwrap(), 3 << 30);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("4 parsecs").unwrap_err().contains("parsecs"));
    }

    #[test]
    fn sizes_past_u64_negative_or_not_finite_are_refused() {
        for s in [
            "20000000000GiB",
            "1e30",
            "18446744073709551616",
            "inf",
            "NaN",
            "-1GiB",
        ] {
            let e = parse_bytes(s).expect_err(s);
            assert!(e.contains(s), "{s}: {e}");
        }
        let e = parse_bytes("20000000000GiB").unwrap_err();
        assert!(e.contains("more bytes than kvpr can count"), "{e}");
        assert_eq!(parse_bytes("16EiB").ok(), None);
        assert_eq!(parse_bytes("15TiB").unwrap(), 15 << 40);
    }

    #[test]
    fn rejects_zero_batch_and_long_prompts() {
        let m = ModelSpec::preset("tiny-mha").unwrap();
        let mut w = Workload {
            batch: 0,
            prompt_len: 16,
            gen_len: 4,
            dtype: Dtype::F32,
            gpu_memory_budget: 1 << 30,
            host_memory_budget: 1 << 30,
        };
        let e = w.validate(&m).unwrap_err();
        assert!(
            matches!(
                e,
                PlansError::Workload {
                    field: Field::Batch,
                    ..
                }
            ),
            "{e}"
        );
        w.batch = 1;
        w.prompt_len = m.max_context + 1;
        let e = w.validate(&m).unwrap_err();
        assert_eq!(e.field(), Some(Field::PromptLen));
        let e = e.to_string();
        assert!(
            e.starts_with("prompt_len: ") && e.contains("context"),
            "{e}"
        );
        assert!(!e.contains("--"), "a library error names no flag: {e}");
    }
}
