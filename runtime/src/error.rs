//! The one error type of the runtime: every variant names what the user needs
//! to find the problem (file, field, tensor, layer, shape).
//!
//! A variant that holds its cause as a `source` does not repeat it in its own
//! message: printed with its chain (`{:#}` of anyhow), the cause follows once.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file that cannot be parsed or whose tensors run past its end.
    #[error("{path}: corrupt or unsupported GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("{path}: corrupt or unsupported safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// A model description kvpr cannot run (wrong family, bad field).
    #[error("{path}: {field}: {reason}")]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: tensor {name} is missing")]
    MissingTensor { path: PathBuf, name: String },
    /// A checkpoint tensor the forward does not use: refused, since dropping
    /// it would compute another function than the checkpoint's.
    #[error("{path}: tensor {name} (and {more} more) is not used by kvpr's forward for this architecture; refusing to compute another function than the checkpoint's (is config.json's model_type or a bias/norm setting wrong?)")]
    UnusedTensor {
        path: PathBuf,
        name: String,
        more: usize,
    },
    #[error("{path}: tensor {name} has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor {name}: cannot convert {dtype} to f32: {reason}")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
        reason: String,
    },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// A prompt the model cannot take (empty, longer than the context, ...).
    #[error("prompt {index}: {reason}")]
    Prompt { index: usize, reason: String },
    /// A request that does not fit this run (batch, lengths, sampling).
    #[error("{what}: {reason}")]
    Request { what: String, reason: String },
    #[error(transparent)]
    Plan(#[from] plans::PlansError),
    /// A backend op failed outside the layers.
    #[error(transparent)]
    Kernel(#[from] kernels::KernelError),
    /// A backend op of layer `layer` failed.
    #[error("layer {layer}")]
    KernelAt {
        layer: usize,
        #[source]
        source: kernels::KernelError,
    },
    /// The host store has no free region for a request; one must finish first.
    #[error(
        "the host store has no free region of {tokens} tokens for request {id} ({free} of {total} tokens free, not together); wait for a request to finish"
    )]
    HostStoreFull {
        id: usize,
        tokens: usize,
        free: usize,
        total: usize,
    },
    /// The run needs more memory than the machine has available.
    #[error(
        "{what} needs {} of memory, but {on} has {} available; {hint}",
        plans::human_bytes(*needed),
        plans::human_bytes(*available)
    )]
    OutOfMemory {
        what: String,
        /// Whose memory: "this machine", or the device's name.
        on: String,
        needed: u64,
        available: u64,
        hint: String,
    },
    /// A compute or copy operation failed; `layer` is `None` outside the layers.
    #[error("{op}{}: {reason}", layer.map(|l| format!(" (layer {l})")).unwrap_or_default())]
    Compute {
        op: String,
        layer: Option<usize>,
        reason: String,
    },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl From<plans::GgufError> for RuntimeError {
    fn from(e: plans::GgufError) -> Self {
        RuntimeError::Gguf {
            path: e.path,
            reason: e.reason,
        }
    }
}

/// Attaches the layer to a backend error.
pub(crate) trait AtLayer<T> {
    fn at(self, layer: usize) -> Result<T>;
}

impl<T> AtLayer<T> for std::result::Result<T, kernels::KernelError> {
    fn at(self, layer: usize) -> Result<T> {
        self.map_err(|source| RuntimeError::KernelAt { layer, source })
    }
}

impl RuntimeError {
    pub(crate) fn compute(op: &str, layer: Option<usize>, reason: impl ToString) -> Self {
        RuntimeError::Compute {
            op: op.to_string(),
            layer,
            reason: reason.to_string(),
        }
    }
}
