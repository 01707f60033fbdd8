//! The plan file (`kvpr.plan/v1`): for every context length a run will see, how
//! many tokens are resident, recomputed and transferred, and the predicted times.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::io::load_json;
use crate::model::MAX_CONTEXT;
use crate::{write_atomic, ModelSpec, PlansError, Result, Workload};

pub const PLAN_SCHEMA: &str = "kvpr.plan/v1";

/// The most chunks a step may send its activations in.
pub const MAX_CHUNKS: usize = 256;

/// The largest batch a plan may hold.
pub const MAX_BATCH: usize = 1 << 16;

/// Refuses a prediction that is not a finite, non-negative number.
fn finite(path: &Path, field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(PlansError::invalid(
            path,
            field,
            format!("{v} is not a finite, non-negative number"),
        ))
    }
}

/// How the copy and compute streams share a layer's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Transfer all non-resident K/V (`l = 0`): the FlexGen / offloaded-cache baseline.
    Transfer,
    /// KVPR: send all activations first, recompute once they have all arrived,
    /// while the remaining K/V are transferred.
    Paper,
    /// Ours: activations in chunks, each recomputed as soon as it lands.
    Chunked,
}

impl Schedule {
    pub const ALL: [Schedule; 3] = [Schedule::Transfer, Schedule::Paper, Schedule::Chunked];

    pub fn name(self) -> &'static str {
        match self {
            Schedule::Transfer => "transfer",
            Schedule::Paper => "paper",
            Schedule::Chunked => "chunked",
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Schedule::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown schedule {s:?}; use transfer, paper or chunked"))
    }
}

/// The hardware profile a plan was made for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanHardware {
    pub name: String,
    pub fingerprint: String,
}

/// The split for decode steps whose context length (tokens already cached) is in
/// `context_len_from ..= context_len_to`. `transfer_tokens` is the count at
/// `context_len_to`; at a shorter context `s` it is `s - resident - recompute`.
/// Predictions are for a step at `context_len_to`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub context_len_from: usize,
    pub context_len_to: usize,
    pub resident_tokens: usize,
    pub recompute_tokens: usize,
    pub transfer_tokens: usize,
    /// Chunks the activations are sent and recomputed in (1 unless `chunked`).
    pub chunks: usize,
    /// One layer: from the start of its transfers until all its K/V are on the GPU, µs.
    pub kv_ready_us: f64,
    /// A whole decode step (all layers), µs.
    pub step_us: f64,
}

impl Step {
    /// Tokens transferred as K/V at context length `s` (within this step's range).
    pub fn transfer_at(&self, s: usize) -> usize {
        s.saturating_sub(self.resident_tokens + self.recompute_tokens)
    }
}

/// What the plan predicts over the whole generation, and the memory it needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Mean predicted decode step over all decode steps, µs.
    pub predicted_decode_step_us: f64,
    /// The same workload with the `transfer` schedule, µs.
    pub transfer_only_step_us: f64,
    /// Bytes that must cross the link at the least, over the measured bandwidth, µs.
    pub io_floor_step_us: f64,
    /// FLOPs of a step over the measured GEMM throughput, µs.
    pub compute_floor_step_us: f64,
    /// `transfer_only_step_us / predicted_decode_step_us`.
    pub speedup_vs_transfer: f64,
    /// Host memory for the stored activations and K/V, bytes.
    pub host_memory_bytes: u64,
    /// Device memory for the resident K/V and the staging buffers, bytes (weights not counted).
    pub gpu_memory_bytes: u64,
    /// Whether recomputation can save link bytes for this model (`h < 2*h_kv`).
    pub recompute_saves_bytes: bool,
}

/// A plan, `kvpr.plan/v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub schema: String,
    pub kvpr_version: String,
    pub model: ModelSpec,
    pub hardware: PlanHardware,
    pub workload: Workload,
    pub schedule: Schedule,
    pub block_tokens: usize,
    pub steps: Vec<Step>,
    pub summary: Summary,
    /// Plain sentences for the user (e.g. why nothing is recomputed).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Plan {
    pub fn load(path: &Path) -> Result<Self> {
        let plan: Plan = load_json(path, PLAN_SCHEMA)?;
        plan.validate(path)?;
        Ok(plan)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes the plan atomically; a plan with a number that could not be read
    /// back (a non-finite prediction, tokens that overflow) is refused.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check_numbers(path)?;
        write_atomic(path, self.to_json().as_bytes())
    }

    /// Steps cover `prompt_len ..= max_context_len` contiguously and every split
    /// adds up.
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.check_numbers(path)?;
        let w = &self.workload;
        let mut next = w.prompt_len;
        for (i, s) in self.steps.iter().enumerate() {
            let field = format!("steps[{i}]");
            if s.context_len_from != next || s.context_len_to < s.context_len_from {
                return Err(PlansError::invalid(
                    path,
                    field,
                    format!(
                        "context ranges must be contiguous from {} upward",
                        w.prompt_len
                    ),
                ));
            }
            if s.resident_tokens + s.recompute_tokens + s.transfer_tokens != s.context_len_to {
                return Err(PlansError::invalid(
                    path,
                    field,
                    "resident + recompute + transfer tokens must equal context_len_to",
                ));
            }
            if s.chunks == 0 {
                return Err(PlansError::invalid(
                    path,
                    format!("{field}.chunks"),
                    "must be at least 1",
                ));
            }
            next = s.context_len_to + 1;
        }
        if next != w.max_context_len() + 1 {
            return Err(PlansError::invalid(
                path,
                "steps",
                format!(
                    "must cover contexts {} ..= {}",
                    w.prompt_len,
                    w.max_context_len()
                ),
            ));
        }
        Ok(())
    }

    /// Every number of the file is in range before anything adds them up: the
    /// model's shape, the workload, `block_tokens`, each step's token counts
    /// (summed with checked arithmetic) and chunks, and every prediction finite.
    fn check_numbers(&self, path: &Path) -> Result<()> {
        self.model.validate(path).map_err(|e| match e {
            PlansError::Invalid {
                path,
                field,
                reason,
            } => PlansError::Invalid {
                path,
                field: format!("model.{field}"),
                reason,
            },
            e => e,
        })?;
        let w = &self.workload;
        for (field, v) in [
            ("workload.batch", w.batch),
            ("workload.prompt_len", w.prompt_len),
            ("workload.gen_len", w.gen_len),
            ("block_tokens", self.block_tokens),
        ] {
            if v == 0 {
                return Err(PlansError::invalid(path, field, "must be at least 1"));
            }
        }
        for (field, v, max) in [
            ("workload.batch", w.batch, MAX_BATCH),
            ("block_tokens", self.block_tokens, MAX_CONTEXT),
        ] {
            if v > max {
                return Err(PlansError::invalid(
                    path,
                    field,
                    format!("{v} is more than kvpr plans for (at most {max})"),
                ));
            }
        }
        w.checked_max_context_len()
            .filter(|&n| n <= MAX_CONTEXT)
            .ok_or_else(|| {
                PlansError::invalid(
                    path,
                    "workload.gen_len",
                    format!(
                        "prompt_len {} + gen_len {} is beyond any context kvpr plans for (at most {MAX_CONTEXT} tokens)",
                        w.prompt_len, w.gen_len
                    ),
                )
            })?;
        if self.steps.is_empty() {
            return Err(PlansError::invalid(path, "steps", "is empty"));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let field = format!("steps[{i}]");
            let total = s
                .resident_tokens
                .checked_add(s.recompute_tokens)
                .and_then(|t| t.checked_add(s.transfer_tokens));
            if total != Some(s.context_len_to) {
                return Err(PlansError::invalid(
                    path,
                    field,
                    "resident + recompute + transfer tokens must equal context_len_to",
                ));
            }
            let most = s.recompute_tokens.clamp(1, MAX_CHUNKS);
            if s.chunks == 0 || s.chunks > most {
                return Err(PlansError::invalid(
                    path,
                    format!("{field}.chunks"),
                    format!(
                        "{} is not in 1 ..= {most} (at most one chunk per recomputed token, and {MAX_CHUNKS})",
                        s.chunks
                    ),
                ));
            }
            for (name, v) in [("kv_ready_us", s.kv_ready_us), ("step_us", s.step_us)] {
                finite(path, &format!("{field}.{name}"), v)?;
            }
        }
        let m = &self.summary;
        for (name, v) in [
            ("predicted_decode_step_us", m.predicted_decode_step_us),
            ("transfer_only_step_us", m.transfer_only_step_us),
            ("io_floor_step_us", m.io_floor_step_us),
            ("compute_floor_step_us", m.compute_floor_step_us),
            ("speedup_vs_transfer", m.speedup_vs_transfer),
        ] {
            finite(path, &format!("summary.{name}"), v)?;
        }
        Ok(())
    }

    /// The step covering context length `s`, if the plan covers it.
    pub fn step_for(&self, s: usize) -> Option<&Step> {
        let i = self.steps.partition_point(|st| st.context_len_to < s);
        self.steps.get(i).filter(|st| st.context_len_from <= s)
    }

    /// Refuses to run this plan for another model or workload, naming the field.
    pub fn check_matches(&self, path: &Path, model: &ModelSpec, workload: &Workload) -> Result<()> {
        let mismatch = |field: &str, plan: String, actual: String| PlansError::Mismatch {
            path: path.to_path_buf(),
            field: field.into(),
            plan,
            actual,
        };
        if self.model.fingerprint != model.fingerprint {
            return Err(mismatch(
                "model",
                format!("{} ({})", self.model.name, self.model.fingerprint),
                format!("{} ({})", model.name, model.fingerprint),
            ));
        }
        let (p, w) = (&self.workload, workload);
        if p.batch != w.batch {
            return Err(mismatch("batch", p.batch.to_string(), w.batch.to_string()));
        }
        if p.prompt_len != w.prompt_len {
            return Err(mismatch(
                "prompt_len",
                p.prompt_len.to_string(),
                w.prompt_len.to_string(),
            ));
        }
        if w.max_context_len() > p.max_context_len() {
            return Err(mismatch(
                "gen_len",
                p.gen_len.to_string(),
                format!("{} (the plan covers fewer tokens)", w.gen_len),
            ));
        }
        if p.dtype != w.dtype {
            return Err(mismatch(
                "dtype",
                p.dtype.name().into(),
                w.dtype.name().into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dtype;

    fn plan() -> Plan {
        let workload = Workload {
            batch: 1,
            prompt_len: 10,
            gen_len: 8,
            dtype: Dtype::F32,
            gpu_memory_budget: 0,
            host_memory_budget: 1 << 30,
        };
        let step = |from, to| Step {
            context_len_from: from,
            context_len_to: to,
            resident_tokens: 0,
            recompute_tokens: 4,
            transfer_tokens: to - 4,
            chunks: 1,
            kv_ready_us: 1.0,
            step_us: 2.0,
        };
        Plan {
            schema: PLAN_SCHEMA.into(),
            kvpr_version: crate::KVPR_VERSION.into(),
            model: ModelSpec::preset("tiny-mha").unwrap(),
            hardware: PlanHardware {
                name: "t".into(),
                fingerprint: "0".into(),
            },
            workload,
            schedule: Schedule::Paper,
            block_tokens: 4,
            steps: vec![step(10, 11), step(12, 15), step(16, 17)],
            summary: Summary {
                predicted_decode_step_us: 2.0,
                transfer_only_step_us: 3.0,
                io_floor_step_us: 1.0,
                compute_floor_step_us: 0.1,
                speedup_vs_transfer: 1.5,
                host_memory_bytes: 0,
                gpu_memory_bytes: 0,
                recompute_saves_bytes: true,
            },
            notes: vec![],
        }
    }

    #[test]
    fn round_trip_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plan.json");
        plan().save(&p).unwrap();
        let back = Plan::load(&p).unwrap();
        assert_eq!(back, plan());
        assert_eq!(back.step_for(13).unwrap().context_len_from, 12);
        assert_eq!(back.step_for(17).unwrap().context_len_to, 17);
        assert!(back.step_for(9).is_none() && back.step_for(18).is_none());
    }

    #[test]
    fn gaps_are_refused() {
        let mut p = plan();
        p.steps.remove(1);
        let e = p.validate(Path::new("x.json")).unwrap_err().to_string();
        assert!(e.contains("steps[1]") && e.contains("contiguous"), "{e}");
    }

    #[test]
    fn mismatch_names_the_field() {
        let p = plan();
        let mut w = p.workload.clone();
        w.batch = 2;
        let e = p
            .check_matches(Path::new("x.json"), &p.model, &w)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch") && e.contains("kvpr plan"), "{e}");
        let other = ModelSpec::preset("tiny-gqa").unwrap();
        let e = p
            .check_matches(Path::new("x.json"), &other, &p.workload)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model") && e.contains("tiny-gqa"), "{e}");
    }
}
