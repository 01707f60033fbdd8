//! What can go wrong while serving, typed: a library error names what failed
//! and why; the CLI adds the flag or file it came from.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServingError {
    /// The scheduler refused the configuration or the requests.
    #[error(transparent)]
    Sched(#[from] scheduler::SchedError),
    /// The engine or the model failed.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// A device operation failed.
    #[error(transparent)]
    Kernel(#[from] kernels::KernelError),
    /// A request the engine cannot take (empty, longer than it takes, bad
    /// sampling): `field` names the request's field at fault.
    #[error("{field}: {reason}")]
    Request { field: String, reason: String },
    /// No room for the request now: the host store is full until a request
    /// finishes.
    #[error("{0}")]
    Full(String),
    /// Allocating the paged cache failed.
    #[error("allocating the paged cache: {0}")]
    Setup(#[source] runtime::RuntimeError),
    /// The scheduler and the engine disagree: a bug, reported rather than
    /// hidden.
    #[error("{0} (a bug)")]
    Invariant(String),
}

pub type Result<T, E = ServingError> = std::result::Result<T, E>;
