//! Serving under KV overflow: an [`Engine`] that runs `scheduler::Serving`'s
//! iterations on `runtime::PagedEngine` with requests added and aborted
//! while it runs, a whole run of known requests over it ([`serve`]), the
//! pricing of the
//! policies' recomputed shares from the cost model ([`resume_share`],
//! [`offload_share`]), and what a run cost ([`RunResult`], [`Sample`],
//! [`link_floor`]).
//!
//! `kvpr overflow` and `kvpr run` (a ragged batch) are thin commands over
//! this crate. It comes after `scheduler` and `runtime` in the pipeline and
//! depends on both.

mod chat;
mod engine;
mod error;
mod pricing;
mod run;

pub use chat::{ChatError, ChatMessage, ChatTemplate};
pub use engine::{Engine, EngineConfig, EngineTimes, Event, FinishReason, RequestParams, Step};
pub use error::{Result, ServingError};
pub use pricing::{link_floor, offload_share, resume_share};
pub use run::{engine_config, quantile, serve, Monitor, RunConfig, RunResult, Sample};
