//! Calibration on the CPU backend: a quick run gives a valid profile with
//! sensible curves, and a paced link measures at its set bandwidth.

use std::path::Path;
use std::time::SystemTime;

use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::{HardwareProfile, ModelSpec, Source};

use crate::*;

/// Calibrations in this binary run one at a time: on two cores, a GEMM sweep
/// beside a paced copy thread would measure the scheduler, not the backend.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(link_gbps: Option<f64>, model: Option<&str>) -> (HardwareProfile, usize, usize) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let be = Backend::new(
        DeviceSpec::Cpu,
        BackendOptions {
            link_gbps,
            dtype: None,
        },
    )
    .unwrap();
    let opts = CalibrateOptions {
        quick: true,
        model: model.map(|m| ModelSpec::resolve(m).unwrap()),
        name: None,
    };
    let (mut planned, mut steps) = (0, 0);
    let p = calibrate(&be, &opts, &mut |e| match e {
        CalibrationEvent::Plan { steps } => planned = steps,
        CalibrationEvent::Step { .. } => steps += 1,
    })
    .unwrap();
    (p, planned, steps)
}

#[test]
fn quick_cpu_calibration_gives_a_valid_profile() {
    let (p, planned, steps) = run(None, Some("llama-2-7b-tiny"));
    assert_eq!(
        planned, steps,
        "the progress plan matches the steps reported"
    );
    let back = HardwareProfile::parse(Path::new("p.json"), &p.to_json()).unwrap();
    assert_eq!(back, p);
    assert_eq!(p.device.kind, plans::DeviceKind::Cpu);
    assert!(p.device.memory_bytes > 0 && p.device.extra.contains_key("cores"));
    assert!(p.measured_at.as_deref().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(p.kvpr_version.as_deref(), Some(plans::KVPR_VERSION));
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("in-memory copy (unpaced)")),
        "{:?}",
        p.notes
    );
    let bidir = p.link.bidirectional.as_ref().unwrap();
    assert!(bidir.points.len() >= 5 && bidir.points.iter().all(|pt| pt.gbps > 0.0));
    // Whether the curve has a cliff is a property of the machine, measured by
    // `kvpr calibrate` and read in its table; a test on a shared 2-core
    // machine holds the curve's shape: every size measured, in order, finite.
    for c in [&p.link.h2d_pinned, &p.link.d2h_pinned] {
        assert_eq!(c.source, Source::Measured);
        assert!(c.points.len() >= 5);
        assert!(c.points.windows(2).all(|w| w[0].bytes < w[1].bytes));
        assert!(c
            .points
            .iter()
            .all(|pt| pt.gbps.is_finite() && pt.gbps > 0.0));
    }
    assert!(p.gemm.points.iter().all(|g| g.tflops > 0.0));
    assert!(p.attention_gbps.value > 0.0 && p.launch_overhead_us.value > 0.0);
}

/// The GEMM sweep measures every row count at the recompute shape. How fast
/// each runs is the machine's business (and a benchmark's): under a noisy
/// neighbour a larger `m` can measure slower, so no ordering is asserted.
#[test]
fn quick_gemm_sweep_measures_every_row_count() {
    let (p, ..) = run(None, Some("llama-2-7b-tiny"));
    let spec = ModelSpec::resolve("llama-2-7b-tiny").unwrap();
    let rows = p.gemm.rows_curve(
        plans::Dtype::F32,
        spec.kv_dim() as u64,
        spec.hidden_size as u64,
    );
    assert!(rows.len() >= 4, "{rows:?}");
    assert_eq!(rows[0].0, 1, "{rows:?}");
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "{rows:?}");
    assert!(
        rows.iter().all(|r| r.1.is_finite() && r.1 > 0.0),
        "{rows:?}"
    );
}

#[test]
fn paced_link_measures_its_set_bandwidth() {
    // Measured on the stream clock, a paced copy cannot beat its window; it
    // can overrun it when the memcpy inside is slower than the window (a
    // loaded machine), so the rate is low enough that the memcpy of the
    // largest size takes a small part of its window, and the lower bound is
    // generous.
    let (p, ..) = run(Some(1.0), Some("tiny-gqa"));
    for c in [&p.link.h2d_pinned, &p.link.d2h_pinned] {
        for pt in c.points.iter().filter(|pt| pt.bytes >= 1 << 20) {
            // A paced copy cannot beat its window (deterministic); how much
            // a loaded machine slows it is not asserted (issue 19).
            assert!(
                pt.gbps > 0.0 && pt.gbps <= 1.05,
                "paced at 1 GB/s, measured {pt:?}"
            );
        }
    }
    // Both paced threads spin at once on two cores here, so single points of
    // the bidirectional curve are noisier: hold their median to the rule.
    let curve = p.link.bidirectional.as_ref().unwrap();
    let mut bidir: Vec<f64> = curve.points.iter().map(|pt| pt.gbps).collect();
    bidir.sort_by(f64::total_cmp);
    let median = bidir[bidir.len() / 2];
    assert!(
        median > 0.0 && median <= 1.05,
        "paced at 1 GB/s, bidirectional {bidir:?}"
    );
    assert_eq!(
        p.device.extra.get("link_gbps").map(String::as_str),
        Some("1")
    );
    assert!(
        p.notes.iter().any(|n| n.contains("paced to 1 GB/s")),
        "{:?}",
        p.notes
    );
}

#[test]
fn rfc3339_formats_utc() {
    let t = |s: u64| rfc3339_utc(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
    assert_eq!(t(0), "1970-01-01T00:00:00Z");
    assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(t(1_709_251_199), "2024-02-29T23:59:59Z");
    assert_eq!(t(4_102_444_800), "2100-01-01T00:00:00Z");
}

#[test]
fn model_calibration_measures_the_dense_shapes() {
    let (p, ..) = run(None, Some("tiny-mha"));
    let spec = ModelSpec::resolve("tiny-mha").unwrap();
    for (n, k) in spec.layer_gemms().into_iter().chain([spec.head_gemm()]) {
        let ms: Vec<u64> = p
            .gemm
            .points
            .iter()
            .filter(|g| (g.n, g.k) == (n as u64, k as u64) && g.dtype == plans::Dtype::F32)
            .map(|g| g.m)
            .collect();
        for m in [1, 4, 16, 64] {
            assert!(ms.contains(&m), "no point at m={m} for ({n}, {k}): {ms:?}");
        }
    }
}

#[test]
fn calibration_statistics_take_the_median() {
    use crate::measure::median;
    // Two batches slowed by a neighbour move neither the figure nor its side.
    assert_eq!(
        median(vec![10.0, 10.5, 9.5, 300.0, 10.0, 250.0, 10.2]),
        10.2
    );
    assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    assert_eq!(median(vec![]), 0.0);
}
