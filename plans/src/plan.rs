//! The plan file (`kvpr.plan/v1`): for every context length a run may see, how
//! many tokens are resident, recomputed and transferred, and the predicted times.
//!
//! A plan covers a workload, not one prompt: made for prompts of `prompt_len`
//! tokens generating `gen_len`, its steps cover every context from 1 to
//! `prompt_len + gen_len - 1`, so any prompt of up to `prompt_len` tokens runs
//! from it (and a longer generation too, as long as its contexts are covered).
//! What a run needs is coverage of its own contexts (see [`Plan::check_matches`]).
//! Files written before this rule start at `prompt_len`; they stay valid and
//! serve the prompts whose contexts they cover.

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
/// `context_len_from ..= context_len_to`. Consecutive context ranges with the
/// same split (resident, recompute, chunks) are one step, so a step may span
/// many blocks. `transfer_tokens` is the count at `context_len_to`; at a
/// shorter context `s` it is `s - resident - recompute` ([`Step::transfer_at`]),
/// and at a context shorter than `resident + recompute` the runtime caps the
/// resident and recomputed tokens at `s`. The predictions (`kv_ready_us`,
/// `step_us`) are for a step at `context_len_to`, the longest context of the
/// range; `first_step_us` is the step at `context_len_from`, and a context in
/// between is predicted by interpolating the two ([`Step::step_us_at`]).
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
    /// A whole decode step (all layers) at `context_len_to`, µs.
    pub step_us: f64,
    /// A whole decode step at `context_len_from`, µs, when the step covers
    /// more than one context (absent in older plans: then `step_us` holds for
    /// the whole range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step_us: Option<f64>,
}

impl Step {
    /// The predicted decode step at context `s` (clamped to this step's range),
    /// µs: linear between `first_step_us` at `context_len_from` and `step_us`
    /// at `context_len_to`. With the split fixed over the range, the step's
    /// terms (K/V bytes, attention reads) grow linearly with the context, so
    /// the line is exact up to where the link curve or the `max` of the
    /// pipeline bends.
    pub fn step_us_at(&self, s: usize) -> f64 {
        let (a, b) = (self.context_len_from, self.context_len_to);
        match self.first_step_us {
            Some(first) if b > a => {
                let t = (s.clamp(a, b) - a) as f64 / (b - a) as f64;
                first + t * (self.step_us - first)
            }
            _ => self.step_us,
        }
    }

    /// Tokens transferred as K/V at context length `s` (within this step's range).
    pub fn transfer_at(&self, s: usize) -> usize {
        s.saturating_sub(self.resident_tokens + self.recompute_tokens)
    }
}

/// What the plan predicts over the whole generation, and the memory it needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Mean predicted decode step over the contexts the planned workload
    /// decodes (`prompt_len ..= prompt_len + gen_len - 1`, not the shorter
    /// contexts the plan also covers), each context priced at the end of its
    /// block (the context the split was solved at), µs.
    pub predicted_decode_step_us: f64,
    /// The same mean with the `transfer` schedule (same resident prefix), µs.
    pub transfer_only_step_us: f64,
    /// Bytes that must cross the link at the least, over the measured bandwidth, µs.
    pub io_floor_step_us: f64,
    /// FLOPs of a step over the measured GEMM throughput, µs.
    pub compute_floor_step_us: f64,
    /// `transfer_only_step_us / predicted_decode_step_us`.
    pub speedup_vs_transfer: f64,
    /// Host memory for the stored activations and K/V of the largest run the
    /// plan serves (every step's ranges together: activations for the union of
    /// `[resident, resident + recompute)`, K/V for the union of
    /// `[resident + recompute, context_len_to)`), bytes. A run whose contexts
    /// are a part of the plan's allocates only what those contexts read.
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

    /// Steps are contiguous from the first one's `context_len_from` (1 in plans
    /// from this version, `prompt_len` in older ones, at most `prompt_len`)
    /// up to `workload.max_context_len()`, and every split adds up.
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.check_numbers(path)?;
        let w = &self.workload;
        let Some(first) = self.steps.first() else {
            return Err(PlansError::invalid(path, "steps", "must not be empty"));
        };
        if first.context_len_from == 0 || first.context_len_from > w.prompt_len {
            return Err(PlansError::invalid(
                path,
                "steps[0].context_len_from",
                format!(
                    "is {}; it must be between 1 and workload.prompt_len ({})",
                    first.context_len_from, w.prompt_len
                ),
            ));
        }
        let mut next = first.context_len_from;
        for (i, s) in self.steps.iter().enumerate() {
            let field = format!("steps[{i}]");
            if s.context_len_from != next || s.context_len_to < s.context_len_from {
                return Err(PlansError::invalid(
                    path,
                    field,
                    format!(
                        "context ranges must be contiguous from {} upward (expected context_len_from = {next} and context_len_to >= it)",
                        first.context_len_from
                    ),
                ));
            }
            let sum = s
                .resident_tokens
                .checked_add(s.recompute_tokens)
                .and_then(|x| x.checked_add(s.transfer_tokens));
            if sum != Some(s.context_len_to) {
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
            next = s.context_len_to.saturating_add(1);
        }
        let last = self.steps.last().map_or(0, |s| s.context_len_to);
        if last != w.max_context_len() {
            return Err(PlansError::invalid(
                path,
                "steps",
                format!(
                    "end at context {last}, but the workload (prompt_len {} + gen_len {}) reaches {}",
                    w.prompt_len,
                    w.gen_len,
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
            if let Some(v) = s.first_step_us {
                finite(path, &format!("{field}.first_step_us"), v)?;
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

    /// The contexts the steps cover, `(first, last)` inclusive (`None` without steps).
    pub fn covered(&self) -> Option<(usize, usize)> {
        Some((
            self.steps.first()?.context_len_from,
            self.steps.last()?.context_len_to,
        ))
    }

    /// The predicted decode step at context `s`, µs, if the plan covers it.
    pub fn predicted_step_us(&self, s: usize) -> Option<f64> {
        self.step_for(s).map(|st| st.step_us_at(s))
    }

    /// The step covering context length `s`, if the plan covers it.
    pub fn step_for(&self, s: usize) -> Option<&Step> {
        let i = self.steps.partition_point(|st| st.context_len_to < s);
        self.steps.get(i).filter(|st| st.context_len_from <= s)
    }

    /// Refuses to run this plan for another model, batch or dtype, naming the
    /// field, and for a run whose decode contexts (`workload.prompt_len ..=
    /// workload.max_context_len()`) the steps do not all cover, naming both
    /// ranges. Any prompt length is accepted otherwise: a plan made for
    /// `prompt_len` P serves every prompt of up to P tokens.
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
        if p.dtype != w.dtype {
            return Err(mismatch(
                "dtype",
                p.dtype.name().into(),
                w.dtype.name().into(),
            ));
        }
        let (from, to) = self.covered().unwrap_or((1, 0));
        let (need_from, need_to) = (w.prompt_len, w.max_context_len());
        if need_from < from || need_to > to {
            return Err(PlansError::NotCovered {
                path: path.to_path_buf(),
                from,
                to,
                prompt_len: p.prompt_len,
                gen_len: p.gen_len,
                need_from,
                need_to,
                run_prompt_len: w.prompt_len,
                run_gen_len: w.gen_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dtype;

    fn step(from: usize, to: usize, resident: usize, recompute: usize) -> Step {
        Step {
            context_len_from: from,
            context_len_to: to,
            resident_tokens: resident,
            recompute_tokens: recompute,
            transfer_tokens: to - resident - recompute,
            chunks: 1,
            kv_ready_us: 1.0,
            step_us: 2.0,
            first_step_us: None,
        }
    }

    #[test]
    fn a_prediction_between_the_ends_of_a_step_is_interpolated() {
        let mut st = step(10, 20, 0, 0);
        assert_eq!(st.step_us_at(15), 2.0);
        st.first_step_us = Some(1.0);
        assert_eq!(st.step_us_at(10), 1.0);
        assert_eq!(st.step_us_at(15), 1.5);
        assert_eq!(st.step_us_at(20), 2.0);
        assert_eq!(st.step_us_at(99), 2.0);
    }

    /// A plan for prompts up to 10 tokens + 8 new: contexts 1 ..= 17, the
    /// ranges with the same split merged.
    fn plan() -> Plan {
        let workload = Workload {
            batch: 1,
            prompt_len: 10,
            gen_len: 8,
            dtype: Dtype::F32,
            gpu_memory_budget: 0,
            host_memory_budget: 1 << 30,
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
            steps: vec![step(1, 11, 0, 0), step(12, 15, 0, 4), step(16, 17, 0, 8)],
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

    /// The run's workload: `prompt` tokens, `gen` new.
    fn run(p: &Plan, prompt: usize, gen: usize) -> Workload {
        Workload {
            prompt_len: prompt,
            gen_len: gen,
            ..p.workload.clone()
        }
    }

    fn invalid(p: &Plan) -> String {
        p.validate(Path::new("x.json")).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plan.json");
        plan().save(&p).unwrap();
        let back = Plan::load(&p).unwrap();
        assert_eq!(back, plan());
        assert_eq!(back.covered(), Some((1, 17)));
        assert_eq!(back.step_for(1).unwrap().context_len_to, 11);
        assert_eq!(back.step_for(13).unwrap().context_len_from, 12);
        assert_eq!(back.step_for(17).unwrap().context_len_to, 17);
        assert!(back.step_for(0).is_none() && back.step_for(18).is_none());
    }

    #[test]
    fn gaps_are_refused() {
        let mut p = plan();
        p.steps.remove(1);
        let e = invalid(&p);
        assert!(e.contains("steps[1]") && e.contains("contiguous"), "{e}");
        let mut p = plan();
        p.steps[1].context_len_from = 13;
        assert!(invalid(&p).contains("steps[1]"));
    }

    #[test]
    fn steps_must_start_at_a_covered_prompt_and_reach_the_last_context() {
        let mut p = plan();
        p.steps[0].context_len_from = 0;
        assert!(invalid(&p).contains("steps[0].context_len_from"));
        // Starting past the planned prompt leaves that prompt uncovered.
        let mut p = plan();
        p.steps[0].context_len_from = 11;
        let e = invalid(&p);
        assert!(
            e.contains("steps[0].context_len_from") && e.contains("10"),
            "{e}"
        );
        let mut p = plan();
        p.steps.pop();
        let e = invalid(&p);
        assert!(e.contains("end at context 15") && e.contains("17"), "{e}");
        let mut p = plan();
        p.steps.clear();
        assert!(invalid(&p).contains("empty"));
    }

    #[test]
    fn token_counts_that_wrap_are_refused() {
        let mut p = plan();
        p.steps[0].resident_tokens = usize::MAX;
        p.steps[0].transfer_tokens = 12;
        assert!(invalid(&p).contains("must equal context_len_to"));
    }

    #[test]
    fn a_plan_serves_every_prompt_whose_contexts_it_covers() {
        let p = plan();
        let path = Path::new("x.json");
        for (prompt, gen) in [(1, 1), (1, 17), (5, 8), (10, 8), (12, 6)] {
            p.check_matches(path, &p.model, &run(&p, prompt, gen))
                .unwrap_or_else(|e| panic!("prompt {prompt} + {gen}: {e}"));
        }
        let e = p
            .check_matches(path, &p.model, &run(&p, 15, 4))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.json covers contexts 1..=17 (prompts up to 10 tokens + 8 new)")
                && e.contains("this run needs 15..=18 (15 prompt tokens + 4 new)"),
            "{e}"
        );
    }

    #[test]
    fn an_older_plan_from_its_prompt_serves_what_it_covers() {
        let mut p = plan();
        p.steps = vec![step(10, 11, 0, 0), step(12, 17, 0, 4)];
        p.validate(Path::new("old.json")).unwrap();
        let path = Path::new("old.json");
        p.check_matches(path, &p.model, &run(&p, 10, 8)).unwrap();
        p.check_matches(path, &p.model, &run(&p, 12, 2)).unwrap();
        let e = p
            .check_matches(path, &p.model, &run(&p, 5, 8))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("covers contexts 10..=17 (prompts of 10 tokens + 8 new)")
                && e.contains("needs 5..=12"),
            "{e}"
        );
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
