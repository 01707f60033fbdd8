//! The measured timeline (`kvpr.trace/v1`): when each op of each layer of a
//! decode step started and ended on its stream, as the backend's own events
//! saw it. `kvpr run --trace` writes it; `kvpr simulate --trace` draws it
//! under the predicted timeline.
//!
//! Times are microseconds from the step's start event (recorded on the
//! compute stream when the step begins), measured on the backend's clock: the
//! CPU backend's stream clocks, CUDA's event timer.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::io::parse_json;
use crate::{write_atomic, PlanHardware, PlansError, Result, Schedule};

pub const TRACE_SCHEMA: &str = "kvpr.trace/v1";

/// The stream an op ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceStream {
    /// Host to device.
    Copy,
    /// The ops.
    Compute,
    /// Device to host.
    Writeback,
}

impl TraceStream {
    pub fn name(self) -> &'static str {
        match self {
            TraceStream::Copy => "copy",
            TraceStream::Compute => "compute",
            TraceStream::Writeback => "writeback",
        }
    }
}

/// What an op did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceOpKind {
    /// Copy: the resident prefix into the staging buffer (device to device).
    ResidentCopy,
    /// Copy: one chunk of the recomputed range's activations `X`.
    XCopy,
    /// Copy: the transferred K/V.
    KvCopy,
    /// Compute: the new token's norm, Q/K/V projections and RoPE.
    Qkv,
    /// Compute: K/V projections and RoPE of one chunk of `X`.
    Recompute,
    /// Compute: decode attention over the whole context.
    Attention,
    /// Compute: output projection and MLP.
    Dense,
    /// Writeback: the new token's `X` and K/V to the host store.
    Writeback,
    /// Compute: the final norm and the output projection (no layer).
    Head,
}

/// One op on one stream, µs from the step's start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceOp {
    pub stream: TraceStream,
    /// The layer (None for the head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    pub kind: TraceOpKind,
    pub start_us: f64,
    pub end_us: f64,
}

/// One measured decode step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStep {
    /// Index of the decode step in the run (0: the first after prefill).
    pub step: usize,
    /// Context length `s` (tokens already cached).
    pub context: usize,
    pub resident_tokens: usize,
    pub recompute_tokens: usize,
    pub transfer_tokens: usize,
    pub chunks: usize,
    /// The whole step, start event to the last op's end, µs.
    pub step_us: f64,
    /// Every op, grouped by stream in the order each stream ran them.
    pub ops: Vec<TraceOp>,
}

/// A trace, `kvpr.trace/v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    pub schema: String,
    pub kvpr_version: String,
    /// The model's name.
    pub model: String,
    /// The backend, in words (e.g. `cpu (f32, link paced to 2 GB/s)`).
    pub device: String,
    pub schedule: Schedule,
    /// The profile the plan was made for.
    pub hardware: PlanHardware,
    pub batch: usize,
    pub prompt_len: usize,
    pub steps: Vec<TraceStep>,
}

impl Trace {
    pub fn load(path: &Path) -> Result<Self> {
        // A run's trace is a few steps of a few hundred ops each.
        let text = crate::io::read_text_limited(path, crate::io::MAX_JSON_BYTES)?;
        let trace: Trace = parse_json(path, &text, TRACE_SCHEMA)?;
        trace.validate(path)?;
        Ok(trace)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes the trace atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json().as_bytes())
    }

    /// Every step's tokens add up to its context, and every op has finite
    /// times with `0 <= start_us <= end_us`.
    pub fn validate(&self, path: &Path) -> Result<()> {
        for (i, s) in self.steps.iter().enumerate() {
            let field = format!("steps[{i}]");
            let sum = s
                .resident_tokens
                .checked_add(s.recompute_tokens)
                .and_then(|t| t.checked_add(s.transfer_tokens));
            if sum != Some(s.context) {
                return Err(PlansError::invalid(
                    path,
                    field,
                    "resident + recompute + transfer tokens must equal context",
                ));
            }
            if s.chunks == 0 {
                return Err(PlansError::invalid(
                    path,
                    format!("{field}.chunks"),
                    "must be at least 1",
                ));
            }
            if !(s.step_us.is_finite() && s.step_us >= 0.0) {
                return Err(PlansError::invalid(
                    path,
                    format!("{field}.step_us"),
                    format!("{} is not a finite, non-negative time", s.step_us),
                ));
            }
            for (j, op) in s.ops.iter().enumerate() {
                let f = format!("{field}.ops[{j}]");
                for (name, v) in [("start_us", op.start_us), ("end_us", op.end_us)] {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(PlansError::invalid(
                            path,
                            format!("{f}.{name}"),
                            format!("{v} is not a finite, non-negative time"),
                        ));
                    }
                }
                if op.end_us < op.start_us {
                    return Err(PlansError::invalid(
                        path,
                        format!("{f}.end_us"),
                        format!("{} is before start_us {}", op.end_us, op.start_us),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The step measured at context `s`, else the last step.
    pub fn step_at(&self, s: usize) -> Option<&TraceStep> {
        self.steps
            .iter()
            .find(|st| st.context == s)
            .or(self.steps.last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trace {
        Trace {
            schema: TRACE_SCHEMA.into(),
            kvpr_version: crate::KVPR_VERSION.into(),
            model: "tiny-mha".into(),
            device: "cpu (f32, link paced to 2 GB/s)".into(),
            schedule: Schedule::Chunked,
            hardware: PlanHardware {
                name: "cpu-reference".into(),
                fingerprint: "0123456789abcdef".into(),
            },
            batch: 1,
            prompt_len: 5,
            steps: vec![TraceStep {
                step: 0,
                context: 5,
                resident_tokens: 1,
                recompute_tokens: 2,
                transfer_tokens: 2,
                chunks: 2,
                step_us: 120.5,
                ops: vec![
                    TraceOp {
                        stream: TraceStream::Copy,
                        layer: Some(0),
                        kind: TraceOpKind::XCopy,
                        start_us: 0.0,
                        end_us: 10.25,
                    },
                    TraceOp {
                        stream: TraceStream::Compute,
                        layer: None,
                        kind: TraceOpKind::Head,
                        start_us: 100.0,
                        end_us: 120.5,
                    },
                ],
            }],
        }
    }

    #[test]
    fn a_trace_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let t = sample();
        t.save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"kvpr.trace/v1\"") && text.contains("\"x_copy\""));
        assert_eq!(Trace::load(&p).unwrap(), t);
    }

    #[test]
    fn a_bad_trace_names_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let mut t = sample();
        t.steps[0].ops[0].end_us = -1.0;
        t.save(&p).unwrap();
        let e = Trace::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("t.json") && e.contains("steps[0].ops[0].end_us"),
            "{e}"
        );
        let text = sample().to_json().replace("\"x_copy\"", "\"teleport\"");
        std::fs::write(&p, text).unwrap();
        let e = Trace::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("t.json:") && e.contains("steps[0].ops[0].kind"),
            "{e}"
        );
        let text = sample().to_json().replace("\"batch\"", "\"bacth\"");
        std::fs::write(&p, text).unwrap();
        let e = Trace::load(&p).unwrap_err().to_string();
        assert!(e.contains("bacth"), "{e}");
    }
}
