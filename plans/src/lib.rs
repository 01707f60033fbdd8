//! The formats every kvpr stage shares: model spec, hardware profile
//! (`kvpr.hardware/v1`), workload, plan (`kvpr.plan/v1`) and measured
//! timeline (`kvpr.trace/v1`).
//!
//! This crate loads, validates and writes those formats and nothing else: it
//! holds no cost model (that is `scheduler`), touches no device (that is
//! `kernels`) and runs no model (that is `runtime`). Every loader names the file,
//! the line, the column and the field when something is wrong, and every writer
//! goes through a temporary file and a rename so nothing half-written is left.
//! Every number is checked on load (finite, in a sane range, sums that do not
//! overflow), and files are read with a size limit.
//!
//! The one rule for a model argument is [`ModelSource::parse`]. GGUF headers are
//! read by the `gguf` module, a bounded pure-Rust reader behind the `gguf` feature (off by
//! default: the scheduler needs no model files and compiles no tensor library).

mod arch;
mod bytes;
mod error;
#[cfg(feature = "gguf")]
pub mod gguf;
mod hardware;
mod io;
mod layout;
mod model;
mod plan;
mod requests;
mod source;
mod trace;
mod workload;

pub use arch::{Arch, ArchKind, RopeScaling};
pub use bytes::{
    blocks_for, bytes_of, prefill_group, ExecutorBytes, PagedBytes, PagedShape, PREFILL_ROWS,
};
pub use error::{PlansError, Result};
#[cfg(feature = "gguf")]
pub use gguf::{GgufError, GgufHeader, GgufTensorInfo, GgufValue};
pub use hardware::{
    BandwidthCurve, BandwidthPoint, DeviceInfo, DeviceKind, GemmCurve, GemmPoint, HardwareProfile,
    LinkCurves, Scalar, Source, GBPS_RANGE, HARDWARE_SCHEMA, LAUNCH_US_RANGE, TFLOPS_RANGE,
};
pub use io::{
    check_output_path, check_outputs, fingerprint, load_json, open_input, read_limited,
    read_text_limited, write_atomic, MAX_JSON_BYTES,
};
pub use layout::{Coverage, Split, StoreLayout};
pub use model::{Family, ModelSpec, MAX_CONTEXT, PRESETS};
pub use plan::{Plan, PlanHardware, Schedule, Step, Summary, MAX_BATCH, MAX_CHUNKS, PLAN_SCHEMA};
pub use requests::{Request, Requests, MAX_REQUESTS};
pub use source::ModelSource;
pub use trace::{Trace, TraceOp, TraceOpKind, TraceStep, TraceStream, TRACE_SCHEMA};
pub use workload::{human_bytes, parse_bytes, Dtype, Field, Workload};

/// The version of kvpr that wrote a file, recorded in every profile and plan.
pub const KVPR_VERSION: &str = env!("CARGO_PKG_VERSION");
