//! The one error type of the `kernels` crate.

/// Everything a backend call can report. Variants carry the op, the device and
/// the shape or range involved, so a message alone says what went wrong where.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `libcuda.so.1` could not be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver found (libcuda.so.1 could not be loaded)")]
    NoDriver,
    /// The driver is there but a library the backend needs is not.
    #[error("{device}: {library} could not be loaded; install the CUDA {library} runtime")]
    MissingLibrary {
        device: String,
        library: &'static str,
    },
    /// A driver, cuBLAS or NVRTC call failed.
    #[error("{device}: {call} failed: {message}")]
    Cuda {
        device: String,
        call: &'static str,
        message: String,
    },
    /// NVRTC refused the kernels (the log says where).
    #[error("the CUDA kernels do not compile for {arch}:\n{log}")]
    Compile { arch: String, log: String },
    /// The `--device` text is not one we know.
    #[error("invalid device {spec:?}: expected \"cpu\", \"cuda\" or \"cuda:N\"")]
    BadDeviceSpec { spec: String },
    /// Shapes that do not fit together or do not fit the buffers.
    #[error("{op} on {device}: {reason} (shape {shape})")]
    Shape {
        op: &'static str,
        device: String,
        shape: String,
        reason: String,
    },
    /// An offset and length that reach past the end of a buffer.
    #[error(
        "{op} on {device}: elements {off}..{end} of {what} are outside its {buf_len} elements"
    )]
    OutOfRange {
        op: &'static str,
        device: String,
        what: &'static str,
        off: usize,
        end: usize,
        buf_len: usize,
    },
    /// A buffer or event made by another backend.
    #[error("{op} on {device}: the {what} belongs to another backend")]
    WrongBackend {
        op: &'static str,
        device: String,
        what: &'static str,
    },
    /// A link rate to pace the CPU backend's copies to that is not a number
    /// of GB/s within the range it can pace.
    #[error("a link rate of {} GB/s cannot be paced: it must lie within {min}..={max} GB/s", short(*.gbps))]
    BadLinkRate { gbps: f64, min: f64, max: f64 },
    /// An op this backend does not have yet.
    #[error("{op} is not supported on {device} yet")]
    Unsupported { op: &'static str, device: String },
    /// A copy or writeback stream failed earlier; reported at the next
    /// record, wait or synchronize.
    #[error("{device}: the {stream} stream failed: {message}")]
    StreamFailed {
        device: String,
        stream: &'static str,
        message: String,
    },
    /// A buffer the system could not allocate.
    #[error("{device}: cannot allocate {bytes} bytes: out of memory")]
    OutOfMemory { device: String, bytes: u64 },
}

/// A number as a user would write it: `1e-30`, not thirty zeros.
fn short(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-3..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// `Result` with [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
