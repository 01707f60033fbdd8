//! kvpr's runtime: loads a Llama-family model (GGUF, Hugging Face safetensors,
//! or a synthetic preset), tokenizes, and decodes with the KV cache in host
//! memory exactly as a plan says: per layer and step, a resident prefix stays on
//! the device, a range is recomputed from stored activations and the rest is
//! transferred.
//!
//! It does what the plan decided and decides nothing itself: the split comes
//! from `scheduler` (through a `plans::Plan`), the ops from `kernels`. It never
//! panics across its API on user input: every failure is a [`RuntimeError`]
//! naming the file, tensor, layer or shape.

mod checkpoint;
mod error;
mod executor;
mod generate;
mod layer;
mod memory;
mod model;
mod paged;
pub mod selftest;
mod source;
mod store;
mod tokenizer;
mod trace;
mod weights;

pub(crate) use error::AtLayer;
pub use error::{Result, RuntimeError};
pub use executor::{Executor, StepStats};
pub use generate::{GenerationReport, Generator, Sampling, StepReport};
pub use memory::{available_memory, check_device_memory, check_memory};
pub use model::{Attention, Block, Mlp, Model};
pub use paged::{PagedConfig, PagedCounters, PagedEngine};
pub use plans::ModelSource;
pub use source::{gguf_name, Config, RopeStyle};
pub use store::{HostStore, Stored};
pub use tokenizer::Tokenizer;
pub use weights::{Layers, Weights};
