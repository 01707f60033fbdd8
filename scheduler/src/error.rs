//! The one error type of the scheduler: every variant names the field the user
//! can change as data ([`SchedError::field`]); the CLI maps it to a flag or to a
//! file's field.

use plans::{Dtype, Field, PlansError, Schedule};

/// Everything that can stop the scheduler from making a plan or a timeline.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// The workload itself is invalid (zero batch, prompt longer than the model's context, ...).
    #[error(transparent)]
    Workload(#[from] PlansError),

    /// A user-facing number is out of range; `field` is what to change.
    #[error("{field}: {reason}")]
    Invalid { field: Field, reason: String },

    /// The hardware profile lacks a figure the cost model needs.
    #[error("hardware profile {profile:?}: {reason}")]
    Profile { profile: String, reason: String },

    /// The profile has no GEMM measurement for the run's element type.
    #[error(
        "hardware profile {profile:?} has no GEMM points for dtype {dtype}: it was measured \
         for {available}; choose one of those, or re-calibrate with `kvpr calibrate` \
         for {dtype}",
        dtype = .dtype.name()
    )]
    NoGemmPoints {
        dtype: Dtype,
        profile: String,
        available: String,
    },

    /// The GPU budget does not even hold the staging buffers of the layers in flight.
    #[error(
        "the GPU memory budget of {budget} is too small for batch {batch} at context {context}: \
         the executor's buffers besides resident K/V (staging, recomputed K/V, the step's and \
         prefill's activations) need {staging}; raise the budget or lower the batch"
    )]
    GpuBudget {
        budget: String,
        batch: usize,
        context: usize,
        staging: String,
    },

    /// A paged cache too small for the longest request under a policy.
    #[error(
        "{capacity} blocks of {block_size} tokens cannot hold the longest request under {policy}; \
         the smallest capacity that works is {least} blocks ({} tokens)",
        least.saturating_mul(*block_size)
    )]
    Capacity {
        capacity: usize,
        block_size: usize,
        policy: &'static str,
        least: usize,
    },

    /// The stored activations and K/V do not fit the host budget.
    #[error(
        "the host memory budget of {budget} is too small: the plan stores {needed} in host \
         memory (activations for recomputed positions, K/V for transferred ones); raise the \
         budget, lower the batch or generate fewer tokens"
    )]
    HostBudget { needed: String, budget: String },

    /// A forced split that cannot be honoured with the chosen schedule.
    #[error("forced split: {0}")]
    Forced(String),

    /// The simulator was asked for a context the plan does not cover.
    #[error(
        "context length {context} is not covered by the plan: it covers {from} ..= {to}; \
         pick a context in that range or make a plan for a longer generation"
    )]
    NotCovered {
        context: usize,
        from: usize,
        to: usize,
    },

    /// The linear program failed (should not happen: every interval's LP is
    /// feasible and bounded; absurd profile figures are the likely cause).
    #[error(
        "LP solver failed for the {schedule} schedule at context {context} on hardware profile \
         {profile:?}: {reason}; the profile's figures were {figures}: check them against the \
         machine or re-run `kvpr calibrate`",
        schedule = .schedule.name()
    )]
    Solver {
        schedule: Schedule,
        context: usize,
        profile: String,
        /// The profile figures the LP's coefficients came from.
        figures: String,
        reason: String,
    },
}

impl SchedError {
    /// The workload or request field the error is about, if it is about one:
    /// the CLI names it as the user gave it (a flag, a file's field).
    pub fn field(&self) -> Option<Field> {
        match self {
            SchedError::Workload(e) => e.field(),
            SchedError::Invalid { field, .. } => Some(*field),
            SchedError::NoGemmPoints { .. } => Some(Field::Dtype),
            SchedError::GpuBudget { .. } => Some(Field::GpuMemoryBudget),
            SchedError::HostBudget { .. } => Some(Field::HostMemoryBudget),
            SchedError::Forced(_) => Some(Field::Schedule),
            SchedError::Profile { .. }
            | SchedError::Capacity { .. }
            | SchedError::NotCovered { .. }
            | SchedError::Solver { .. } => None,
        }
    }
}
