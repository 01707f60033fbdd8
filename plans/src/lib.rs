//! The formats every kvpr stage shares: model spec, hardware profile
//! (`kvpr.hardware/v1`), workload and plan (`kvpr.plan/v1`).
//!
//! This crate loads, validates and writes those formats and nothing else: it
//! holds no cost model (that is `scheduler`), touches no device (that is
//! `kernels`) and runs no model (that is `runtime`). Every loader names the file,
//! the line, the column and the field when something is wrong, and every writer
//! goes through a temporary file and a rename so nothing half-written is left.

mod error;
mod hardware;
mod io;
mod layout;
mod model;
mod plan;
mod workload;

pub use error::{PlansError, Result};
pub use hardware::{
    BandwidthCurve, BandwidthPoint, DeviceInfo, DeviceKind, GemmCurve, GemmPoint, HardwareProfile,
    LinkCurves, Scalar, Source, HARDWARE_SCHEMA,
};
pub use io::{fingerprint, load_json, write_atomic};
pub use layout::{Coverage, Split, StoreLayout};
pub use model::{Family, ModelSpec, PRESETS};
pub use plan::{Plan, PlanHardware, Schedule, Step, Summary, PLAN_SCHEMA};
pub use workload::{human_bytes, parse_bytes, Dtype, Workload};

/// The version of kvpr that wrote a file, recorded in every profile and plan.
pub const KVPR_VERSION: &str = env!("CARGO_PKG_VERSION");
