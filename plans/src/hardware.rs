//! The hardware profile (`kvpr.hardware/v1`): what `kvpr calibrate` measured, or
//! what was typed in from a datasheet, and how to read its curves.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::io::{load_json, parse_json};
use crate::{fingerprint, Dtype, PlansError, Result};

pub const HARDWARE_SCHEMA: &str = "kvpr.hardware/v1";

/// Bandwidths a profile may hold, GB/s: from 1 kB/s to 1 PB/s. Beyond either
/// end the predictions overflow or vanish (and the LP loses its footing).
pub const GBPS_RANGE: (f64, f64) = (1e-6, 1e6);
/// GEMM throughputs a profile may hold, TFLOP/s (1 kFLOP/s to 1 EFLOP/s).
pub const TFLOPS_RANGE: (f64, f64) = (1e-9, 1e6);
/// Launch overheads a profile may hold, µs (up to one second).
pub const LAUNCH_US_RANGE: (f64, f64) = (0.0, 1e6);
/// The largest transfer size of a bandwidth point, bytes (1 PiB).
pub const MAX_BYTES: u64 = 1 << 50;
/// The largest GEMM dimension of a measured point.
pub const MAX_GEMM_DIM: u64 = 1 << 24;

/// Refuses a figure that is not finite or outside `lo ..= hi`, naming the file and field.
fn in_range(path: &Path, field: &str, v: f64, (lo, hi): (f64, f64)) -> Result<()> {
    if v.is_finite() && v >= lo && v <= hi {
        return Ok(());
    }
    Err(PlansError::invalid(
        path,
        field,
        format!("{v:e} is outside the sane range {lo:e} ..= {hi:e}"),
    ))
}

/// Whether a figure was measured on the machine or typed in from a datasheet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Measured,
    Datasheet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Identity of the device a profile describes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    pub name: String,
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_generation: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// Anything else worth recording (clocks, CPU model, host memory, cores).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, String>,
}

/// One point of a bandwidth curve: a transfer of `bytes` ran at `gbps` GB/s (1e9 B/s).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthPoint {
    pub bytes: u64,
    pub gbps: f64,
}

/// Bandwidth against transfer size. The transfer time of `n` bytes is linear
/// between points (each point fixes `t = bytes / gbps`), through the origin
/// below the first point, and at the last point's bandwidth beyond the last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthCurve {
    pub source: Source,
    pub points: Vec<BandwidthPoint>,
}

/// The link between host and device, per direction and host-memory kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkCurves {
    pub h2d_pinned: BandwidthCurve,
    pub d2h_pinned: BandwidthCurve,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2d_pageable: Option<BandwidthCurve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d2h_pageable: Option<BandwidthCurve>,
    /// Host-to-device bandwidth while device-to-host runs at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bidirectional: Option<BandwidthCurve>,
}

/// One GEMM measurement: `[m, k] x [k, n]` in `dtype` ran at `tflops` (1e12 FLOP/s).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmPoint {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub dtype: Dtype,
    pub tflops: f64,
}

/// GEMM throughput against rows `m`, at one or more `(n, k)` shapes and dtypes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmCurve {
    pub source: Source,
    pub points: Vec<GemmPoint>,
}

/// A single figure with where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scalar {
    pub source: Source,
    pub value: f64,
}

/// A hardware profile, `kvpr.hardware/v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    pub schema: String,
    pub name: String,
    pub device: DeviceInfo,
    pub link: LinkCurves,
    pub gemm: GemmCurve,
    /// Effective device-memory bandwidth of decode attention, GB/s (K/V bytes read per second).
    pub attention_gbps: Scalar,
    /// Fixed cost of one kernel launch (or one CPU op dispatch), microseconds.
    pub launch_overhead_us: Scalar,
    /// When the figures were measured (RFC 3339), if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<String>,
    /// The kvpr version that measured them, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvpr_version: Option<String>,
    #[serde(default)]
    pub notes: Vec<String>,
}

impl BandwidthCurve {
    /// A one-point curve: constant bandwidth.
    pub fn constant(source: Source, gbps: f64) -> Self {
        BandwidthCurve {
            source,
            points: vec![BandwidthPoint {
                bytes: 1 << 20,
                gbps,
            }],
        }
    }

    /// Time in seconds to move `bytes` (see the type's doc for interpolation).
    pub fn seconds(&self, bytes: f64) -> f64 {
        let pts = &self.points;
        if bytes <= 0.0 || pts.is_empty() {
            return 0.0;
        }
        let t = |p: &BandwidthPoint| p.bytes as f64 / (p.gbps * 1e9);
        let first = &pts[0];
        if bytes <= first.bytes as f64 {
            return bytes / (first.gbps * 1e9);
        }
        for w in pts.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if bytes <= b.bytes as f64 {
                let f = (bytes - a.bytes as f64) / (b.bytes as f64 - a.bytes as f64);
                return t(a) + f * (t(b) - t(a));
            }
        }
        let last = &pts[pts.len() - 1];
        t(last) + (bytes - last.bytes as f64) / (last.gbps * 1e9)
    }

    /// The largest bandwidth on the curve, GB/s.
    pub fn peak_gbps(&self) -> f64 {
        self.points.iter().map(|p| p.gbps).fold(0.0, f64::max)
    }
}

impl GemmCurve {
    /// The `(m, tflops)` points for `dtype` at the measured `(n, k)` closest to
    /// the requested one (in log scale), sorted by `m`. Empty if the dtype is absent.
    pub fn rows_curve(&self, dtype: Dtype, n: u64, k: u64) -> Vec<(u64, f64)> {
        let of_dtype: Vec<&GemmPoint> = self.points.iter().filter(|p| p.dtype == dtype).collect();
        let dist = |p: &GemmPoint| {
            ((p.n as f64).ln() - (n.max(1) as f64).ln()).abs()
                + ((p.k as f64).ln() - (k.max(1) as f64).ln()).abs()
        };
        let Some(best) = of_dtype
            .iter()
            .min_by(|a, b| dist(a).total_cmp(&dist(b)))
            .map(|p| (p.n, p.k))
        else {
            return Vec::new();
        };
        let mut pts: Vec<(u64, f64)> = of_dtype
            .iter()
            .filter(|p| (p.n, p.k) == best)
            .map(|p| (p.m, p.tflops))
            .collect();
        pts.sort_by_key(|p| p.0);
        pts.dedup_by_key(|p| p.0);
        pts
    }

    /// The dtypes this curve has points for.
    pub fn dtypes(&self) -> Vec<Dtype> {
        let mut d: Vec<Dtype> = self.points.iter().map(|p| p.dtype).collect();
        d.sort_by_key(|d| d.name());
        d.dedup();
        d
    }
}

impl HardwareProfile {
    /// Seconds the link takes for `to_device` bytes one way and `to_host`
    /// the other (the slower direction; they run at once): at `paced_gbps`
    /// where the run paced its link (`--link-gbps`), else at the profile's
    /// curves. The one rule for "the link time of the bytes moved" (`bench`'s
    /// link utilisation, `overflow`'s link floor).
    pub fn link_seconds(&self, paced_gbps: Option<f64>, to_device: f64, to_host: f64) -> f64 {
        match paced_gbps {
            Some(g) => to_device.max(to_host) / (g * 1e9),
            None => self
                .link
                .h2d_pinned
                .seconds(to_device)
                .max(self.link.d2h_pinned.seconds(to_host)),
        }
    }

    /// Loads and validates a profile; errors name file, line, column and field.
    pub fn load(path: &Path) -> Result<Self> {
        let p: HardwareProfile = load_json(path, HARDWARE_SCHEMA)?;
        p.validate(path)?;
        Ok(p)
    }

    /// Parses a profile from text; `path` is used in messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let p: HardwareProfile = parse_json(path, text, HARDWARE_SCHEMA)?;
        p.validate(path)?;
        Ok(p)
    }

    /// Every curve has points, every figure is finite and within its sane range
    /// ([`GBPS_RANGE`], [`TFLOPS_RANGE`], [`LAUNCH_US_RANGE`]), sizes increase.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let mut curves = vec![
            ("link.h2d_pinned", Some(&self.link.h2d_pinned)),
            ("link.d2h_pinned", Some(&self.link.d2h_pinned)),
        ];
        curves.push(("link.h2d_pageable", self.link.h2d_pageable.as_ref()));
        curves.push(("link.d2h_pageable", self.link.d2h_pageable.as_ref()));
        curves.push(("link.bidirectional", self.link.bidirectional.as_ref()));
        for (field, curve) in curves {
            let Some(curve) = curve else { continue };
            if curve.points.is_empty() {
                return Err(PlansError::invalid(
                    path,
                    format!("{field}.points"),
                    "is empty; add at least one {\"bytes\", \"gbps\"} point or run `kvpr calibrate`",
                ));
            }
            for (i, p) in curve.points.iter().enumerate() {
                let at = format!("{field}.points[{i}]");
                in_range(path, &format!("{at}.gbps"), p.gbps, GBPS_RANGE)?;
                if p.bytes == 0 || p.bytes > MAX_BYTES {
                    return Err(PlansError::invalid(
                        path,
                        format!("{at}.bytes"),
                        format!("{} is not in 1 ..= {MAX_BYTES}", p.bytes),
                    ));
                }
                if i > 0 && p.bytes <= curve.points[i - 1].bytes {
                    return Err(PlansError::invalid(
                        path,
                        format!("{field}.points[{i}].bytes"),
                        "points must be sorted by increasing bytes",
                    ));
                }
            }
        }
        if self.gemm.points.is_empty() {
            return Err(PlansError::invalid(
                path,
                "gemm.points",
                "is empty; add at least one {\"m\", \"n\", \"k\", \"dtype\", \"tflops\"} point or run `kvpr calibrate`",
            ));
        }
        for (i, p) in self.gemm.points.iter().enumerate() {
            let at = format!("gemm.points[{i}]");
            in_range(path, &format!("{at}.tflops"), p.tflops, TFLOPS_RANGE)?;
            for (dim, v) in [("m", p.m), ("n", p.n), ("k", p.k)] {
                if v == 0 || v > MAX_GEMM_DIM {
                    return Err(PlansError::invalid(
                        path,
                        format!("{at}.{dim}"),
                        format!("{v} is not in 1 ..= {MAX_GEMM_DIM}"),
                    ));
                }
            }
        }
        in_range(
            path,
            "attention_gbps.value",
            self.attention_gbps.value,
            GBPS_RANGE,
        )?;
        in_range(
            path,
            "launch_overhead_us.value",
            self.launch_overhead_us.value,
            LAUNCH_US_RANGE,
        )?;
        Ok(())
    }

    /// Stable fingerprint of the profile's content.
    pub fn fingerprint(&self) -> String {
        fingerprint(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// Pretty JSON, as written to disk.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The link time of moved bytes is at the paced rate where the run was
    /// paced (`bench` used the profile's rate whatever `--link-gbps` said),
    /// and at the profile's curves otherwise; the slower direction counts.
    #[test]
    fn link_time_follows_the_paced_rate_or_the_profile() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hardware/cpu-reference.json");
        let hw = HardwareProfile::load(&path).unwrap();
        let (down, up) = (4e9, 1e9);
        assert_eq!(hw.link_seconds(Some(2.0), down, up), 2.0);
        assert_eq!(hw.link_seconds(Some(0.5), up, down), 8.0);
        let profile = hw
            .link
            .h2d_pinned
            .seconds(down)
            .max(hw.link.d2h_pinned.seconds(up));
        assert_eq!(hw.link_seconds(None, down, up), profile);
        assert_ne!(hw.link_seconds(None, down, up), 2.0);
    }

    pub(crate) fn tiny_profile() -> HardwareProfile {
        HardwareProfile {
            schema: HARDWARE_SCHEMA.into(),
            name: "test".into(),
            device: DeviceInfo {
                kind: DeviceKind::Cpu,
                name: "test".into(),
                memory_bytes: 1 << 30,
                pcie_generation: None,
                pcie_width: None,
                driver: None,
                compute_capability: None,
                extra: Default::default(),
            },
            link: LinkCurves {
                h2d_pinned: BandwidthCurve::constant(Source::Measured, 2.0),
                d2h_pinned: BandwidthCurve::constant(Source::Measured, 2.0),
                h2d_pageable: None,
                d2h_pageable: None,
                bidirectional: None,
            },
            gemm: GemmCurve {
                source: Source::Measured,
                points: vec![GemmPoint {
                    m: 64,
                    n: 64,
                    k: 64,
                    dtype: Dtype::F32,
                    tflops: 0.05,
                }],
            },
            attention_gbps: Scalar {
                source: Source::Measured,
                value: 10.0,
            },
            launch_overhead_us: Scalar {
                source: Source::Measured,
                value: 5.0,
            },
            measured_at: None,
            kvpr_version: None,
            notes: vec![],
        }
    }

    #[test]
    fn round_trips() {
        let p = tiny_profile();
        let back = HardwareProfile::parse(Path::new("p.json"), &p.to_json()).unwrap();
        assert_eq!(p, back);
    }

    #[test]
    fn missing_curve_is_named() {
        let mut v: serde_json::Value = serde_json::from_str(&tiny_profile().to_json()).unwrap();
        v["link"].as_object_mut().unwrap().remove("d2h_pinned");
        let e = HardwareProfile::parse(Path::new("p.json"), &v.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.json") && e.contains("d2h_pinned"), "{e}");
    }

    #[test]
    fn empty_curve_is_named() {
        let mut p = tiny_profile();
        p.gemm.points.clear();
        let e = HardwareProfile::parse(Path::new("p.json"), &p.to_json())
            .unwrap_err()
            .to_string();
        assert!(e.contains("gemm.points") && e.contains("calibrate"), "{e}");
    }

    #[test]
    fn bandwidth_interpolates_time() {
        let c = BandwidthCurve {
            source: Source::Measured,
            points: vec![
                BandwidthPoint {
                    bytes: 1000,
                    gbps: 1.0,
                },
                BandwidthPoint {
                    bytes: 3000,
                    gbps: 3.0,
                },
            ],
        };
        // 1 us at 1000 B, 1 us at 3000 B: flat between; 500 B at 1 GB/s.
        assert!((c.seconds(2000.0) - 1e-6).abs() < 1e-15);
        assert!((c.seconds(500.0) - 0.5e-6).abs() < 1e-15);
        assert!((c.seconds(6000.0) - 2e-6).abs() < 1e-15);
    }

    #[test]
    fn shipped_profiles_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("hardware");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "json") {
                HardwareProfile::load(&path).unwrap();
                n += 1;
            }
        }
        assert!(
            n >= 2,
            "expected the shipped profiles under {}",
            dir.display()
        );
    }
}
