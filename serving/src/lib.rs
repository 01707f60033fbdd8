//! Serving under KV overflow: an [`Engine`] that runs `scheduler::Serving`'s
//! iterations on `runtime::PagedEngine` with requests added and aborted
//! while it runs, each sampling as it asks; a whole run of known requests
//! over it ([`serve`]); the pricing of the policies' recomputed shares and
//! of admission by offload from the cost model ([`resume_share`],
//! [`offload_share`], [`offload_admit_blocks`]); what a run cost
//! ([`RunResult`], [`Sample`], [`link_floor`]); and what an HTTP front needs
//! besides: chat templates rendered as transformers renders them
//! ([`ChatTemplate`]) and stop strings on streamed text ([`StopText`]).
//!
//! `kvpr overflow`, `kvpr run` (a ragged batch) and `kvpr serve` are thin
//! commands over this crate. It comes after `scheduler` and `runtime` in the pipeline and
//! depends on both.

mod chat;
mod engine;
mod error;
mod pricing;
mod run;
mod stop;

pub use chat::{ChatError, ChatMessage, ChatTemplate};
pub use engine::{Engine, EngineConfig, EngineTimes, Event, FinishReason, RequestParams, Step};
pub use error::{Result, ServingError};
pub use pricing::{link_floor, offload_admit_blocks, offload_share, resume_share};
pub use run::{engine_config, quantile, serve, Monitor, RunConfig, RunResult, Sample};
pub use stop::StopText;
