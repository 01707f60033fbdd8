//! kvpr's hardware calibration: measures a machine through the same
//! [`kernels::Backend`] calls the runtime makes (pinned copies on the copy and
//! writeback streams, GEMMs and attention on the compute stream, timed with
//! backend events) and returns a [`plans::HardwareProfile`] (`kvpr.hardware/v1`).
//!
//! What it measures: the link (host-to-device and device-to-host, pinned and,
//! on CUDA, pageable, and both directions at once) over geometric transfer
//! sizes; GEMM throughput against rows `m` at the `(n, k)` shapes
//! recomputation uses; the launch overhead of a tiny op; the K/V bandwidth of
//! decode attention; and the device's identity (NVML on CUDA, `/proc` on CPU).
//! Every figure is the median of timed repeats after a warm-up and is marked
//! [`plans::Source::Measured`].
//!
//! This crate must not decide anything from the figures (that is `scheduler`)
//! nor write files (the CLI does, atomically); it must not panic when NVML or
//! the CUDA driver is missing.

mod identity;
mod measure;
mod monitor;

#[cfg(test)]
mod tests;

use kernels::{Backend, KernelError};
use plans::{
    BandwidthCurve, GemmCurve, HardwareProfile, LinkCurves, ModelSpec, Scalar, Source,
    HARDWARE_SCHEMA,
};

pub use identity::rfc3339_utc;
pub use monitor::GpuMonitor;

/// What to measure.
#[derive(Clone, Debug, Default)]
pub struct CalibrateOptions {
    /// Fewer sizes and repeats, capped so the CPU backend finishes in seconds.
    pub quick: bool,
    /// Take the GEMM and attention shapes from this model (else 4096 x 4096,
    /// and Llama-2-7B's attention).
    pub model: Option<ModelSpec>,
    /// The profile's `name` (default: derived from the device).
    pub name: Option<String>,
}

/// Progress reports, for a progress bar.
#[derive(Clone, Debug, PartialEq)]
pub enum CalibrationEvent {
    /// The number of steps the calibration will take.
    Plan { steps: usize },
    /// A step finished; `what` says which, with its figure.
    Step { stage: &'static str, what: String },
}

/// Everything calibration can report.
#[derive(Debug, thiserror::Error)]
pub enum ProfilerError {
    /// A backend call failed while measuring `stage`.
    #[error("calibration failed while measuring {stage}")]
    Kernel {
        stage: &'static str,
        #[source]
        source: KernelError,
    },
    /// A measurement came out unusable (zero or non-finite time).
    #[error("calibration of {stage} gave an unusable figure: {reason}")]
    Measurement { stage: &'static str, reason: String },
    /// The assembled profile failed validation (a bug: report it).
    #[error("the measured profile is invalid")]
    Invalid(#[from] plans::PlansError),
}

pub(crate) trait Stage<T> {
    fn stage(self, stage: &'static str) -> Result<T, ProfilerError>;
}

impl<T> Stage<T> for Result<T, KernelError> {
    fn stage(self, stage: &'static str) -> Result<T, ProfilerError> {
        self.map_err(|source| ProfilerError::Kernel { stage, source })
    }
}

/// Measures `backend` and returns its profile; `progress` sees every step.
pub fn calibrate(
    backend: &Backend,
    opts: &CalibrateOptions,
    progress: &mut dyn FnMut(CalibrationEvent),
) -> Result<HardwareProfile, ProfilerError> {
    let plan = measure::Plan::new(backend, opts);
    progress(CalibrationEvent::Plan {
        steps: plan.steps(),
    });
    let mut notes = Vec::new();

    let device = identity::device_info(backend);
    progress(CalibrationEvent::Step {
        stage: "identity",
        what: device.name.clone(),
    });

    let link = measure::link(backend, &plan, progress)?;
    let gemm = measure::gemm(backend, &plan, progress, &mut notes)?;
    let launch_us = measure::launch_overhead(backend, &plan, progress)?;
    let attention_gbps = measure::attention(backend, &plan, progress, &mut notes)?;

    let curve = |points| BandwidthCurve {
        source: Source::Measured,
        points,
    };
    let measured = |value| Scalar {
        source: Source::Measured,
        value,
    };
    notes.splice(0..0, identity::notes(backend, &device, opts.quick));
    let profile = HardwareProfile {
        schema: HARDWARE_SCHEMA.to_string(),
        name: opts
            .name
            .clone()
            .unwrap_or_else(|| identity::default_name(backend, &device)),
        device,
        link: LinkCurves {
            h2d_pinned: curve(link.h2d_pinned),
            d2h_pinned: curve(link.d2h_pinned),
            h2d_pageable: link.h2d_pageable.map(curve),
            d2h_pageable: link.d2h_pageable.map(curve),
            bidirectional: Some(curve(link.bidirectional)),
        },
        gemm: GemmCurve {
            source: Source::Measured,
            points: gemm,
        },
        attention_gbps: measured(attention_gbps),
        launch_overhead_us: measured(launch_us),
        measured_at: Some(rfc3339_utc(std::time::SystemTime::now())),
        kvpr_version: Some(plans::KVPR_VERSION.to_string()),
        notes,
    };
    profile.validate(std::path::Path::new("(measured profile)"))?;
    Ok(profile)
}
