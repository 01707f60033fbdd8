//! kvpr's scheduler: the cost model of a decode step with the KV cache in host
//! memory, the solvers that split each context into resident, recomputed and
//! transferred tokens, plan generation, and the two-stream simulator.
//!
//! It is pure: plain structs in (`plans::ModelSpec`, `HardwareProfile`,
//! `Workload`), a `plans::Plan` or a [`Timeline`] out. It must not do I/O
//! (no files, no printing), touch a device, or run a model: the profiler
//! measures, the runtime executes, and both talk to this crate only through the
//! `plans` formats. Errors are one enum, [`SchedError`]; nothing panics on input.
//!
//! The cost model is in [`cost`] (formulas and the pipeline argument), the
//! solvers in [`solve`], plan generation in [`plan`], the simulator in [`sim`].

pub mod cost;
mod curves;
mod error;
pub mod plan;
pub mod serving;
pub mod sim;
pub mod solve;

pub use cost::{staging_bytes, CostModel, StepCost};
pub use error::SchedError;
pub use plan::{context_ranges, make_plan, ForcedSplit, PlanRequest, ScheduleChoice};
pub use serving::{
    check_capacity, min_capacity, Entry, Eviction, Iteration, Policy, Serving, ServingConfig,
    ServingStats,
};
pub use sim::{simulate, OpKind, StreamKind, Timeline, TimelineOp};
pub use solve::{PricedSplit, Solver, CHUNK_CANDIDATES};

#[cfg(test)]
mod tests_dense;
#[cfg(test)]
mod tests_model;
#[cfg(test)]
mod tests_props;
#[cfg(test)]
mod testutil;
