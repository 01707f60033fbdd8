//! `kvpr calibrate`: measure this machine through a backend and write a
//! hardware profile (`kvpr.hardware/v1`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use kernels::{BackendOptions, DeviceSpec};
use plans::{BandwidthCurve, HardwareProfile, ModelSpec};
use profiler::{CalibrateOptions, CalibrationEvent};

use crate::fmt;

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// Device to measure: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Fewer sizes and repeats (seconds on a CPU).
    #[arg(long)]
    pub quick: bool,
    /// Measure GEMM and attention at this model's shapes: a .gguf file, a
    /// Hugging Face directory or a preset (default: 4096 x 4096).
    #[arg(long)]
    pub model: Option<String>,
    /// CPU backend only: pace the link to this many GB/s (1e9 B/s).
    #[arg(long)]
    pub link_gbps: Option<f64>,
    /// Write the profile here (atomically); default: print only.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the profile as JSON on stdout instead of the tables.
    #[arg(long)]
    pub json: bool,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse::<DeviceSpec>().map_err(|e| e.to_string())
}

pub fn run(args: &CalibrateArgs) -> anyhow::Result<()> {
    super::check_io(
        &[("--out", args.out.as_deref())],
        &[("--model", args.model.as_deref().map(Path::new))],
    )?;
    let model = args
        .model
        .as_deref()
        .map(ModelSpec::resolve)
        .transpose()
        .context("reading --model")?;
    if args.link_gbps.is_some() && args.device != DeviceSpec::Cpu {
        anyhow::bail!(
            "--link-gbps paces the CPU backend's link only; drop it for {}",
            args.device
        );
    }
    let backend = super::open_backend(
        args.device,
        BackendOptions {
            link_gbps: args.link_gbps,
            dtype: None,
        },
    )?;
    let opts = CalibrateOptions {
        quick: args.quick,
        model,
        name: None,
    };

    let bar = fmt::progress_bar(0);
    bar.set_message(format!("calibrating {}", backend.name()));
    let profile = profiler::calibrate(&backend, &opts, &mut |e| match e {
        CalibrationEvent::Plan { steps } => bar.set_length(steps as u64),
        CalibrationEvent::Step { stage, what } => {
            bar.set_message(format!("{stage}: {what}"));
            bar.inc(1);
        }
    })
    .with_context(|| format!("calibrating {}", backend.name()))?;
    bar.finish_and_clear();

    let json = profile.to_json() + "\n";
    if args.json {
        print!("{json}");
    } else {
        print!("{}", render(&profile));
    }
    if let Some(out) = &args.out {
        plans::write_atomic(out, json.as_bytes()).context("writing --out")?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn gbps_at(c: Option<&BandwidthCurve>, bytes: u64) -> String {
    c.and_then(|c| c.points.iter().find(|p| p.bytes == bytes))
        .map(|p| format!("{:.2}", p.gbps))
        .unwrap_or_else(|| "-".into())
}

/// The profile as markdown: identity, link table, GEMM table, scalars.
pub fn render(p: &HardwareProfile) -> String {
    let d = &p.device;
    let mut s = format!("## {}\n\n", p.name);
    s.push_str(&format!(
        "device: {} ({}",
        d.name,
        plans::human_bytes(d.memory_bytes)
    ));
    if let (Some(g), Some(w)) = (d.pcie_generation, d.pcie_width) {
        s.push_str(&format!(", PCIe gen {g} x{w}"));
    }
    if let Some(drv) = &d.driver {
        s.push_str(&format!(", driver {drv}"));
    }
    s.push_str(")\n");
    if let Some(t) = &p.measured_at {
        s.push_str(&format!(
            "measured: {t} by kvpr {}\n",
            p.kvpr_version.as_deref().unwrap_or("?")
        ));
    }
    for n in &p.notes {
        s.push_str(&format!("- {n}\n"));
    }

    let l = &p.link;
    let mut sizes: Vec<u64> = l.h2d_pinned.points.iter().map(|x| x.bytes).collect();
    for c in [Some(&l.d2h_pinned), l.bidirectional.as_ref()]
        .into_iter()
        .flatten()
    {
        sizes.extend(c.points.iter().map(|x| x.bytes));
    }
    sizes.sort_unstable();
    sizes.dedup();
    let pageable = l.h2d_pageable.is_some() || l.d2h_pageable.is_some();
    let mut header = vec!["size", "h2d pinned GB/s", "d2h pinned GB/s"];
    if pageable {
        header.extend(["h2d pageable GB/s", "d2h pageable GB/s"]);
    }
    header.push("bidirectional GB/s");
    let rows: Vec<Vec<String>> = sizes
        .iter()
        .map(|&b| {
            let mut r = vec![
                plans::human_bytes(b),
                gbps_at(Some(&l.h2d_pinned), b),
                gbps_at(Some(&l.d2h_pinned), b),
            ];
            if pageable {
                r.push(gbps_at(l.h2d_pageable.as_ref(), b));
                r.push(gbps_at(l.d2h_pageable.as_ref(), b));
            }
            r.push(gbps_at(l.bidirectional.as_ref(), b));
            r
        })
        .collect();
    s.push_str("\n### link\n\n");
    s.push_str(&fmt::table(&header, &rows));

    let rows: Vec<Vec<String>> = p
        .gemm
        .points
        .iter()
        .map(|g| {
            vec![
                g.dtype.name().to_string(),
                g.n.to_string(),
                g.k.to_string(),
                g.m.to_string(),
                format!("{:.3}", g.tflops),
            ]
        })
        .collect();
    s.push_str("\n### GEMM (out[m, n] = x[m, k] . w[n, k]^T)\n\n");
    s.push_str(&fmt::table(&["dtype", "n", "k", "m", "TFLOP/s"], &rows));

    s.push_str("\n### overheads\n\n");
    s.push_str(&fmt::table(
        &["figure", "value", "unit"],
        &[
            vec![
                "decode attention K/V read".into(),
                format!("{:.2}", p.attention_gbps.value),
                "GB/s".into(),
            ],
            vec![
                "launch overhead".into(),
                format!("{:.3}", p.launch_overhead_us.value),
                "us".into(),
            ],
        ],
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_figure_in_right_aligned_tables() {
        let text = include_str!("../../plans/hardware/h100-pcie5.json");
        let p = HardwareProfile::parse(std::path::Path::new("h100-pcie5.json"), text).unwrap();
        let md = render(&p);
        assert!(
            md.contains("### link") && md.contains("### GEMM") && md.contains("launch overhead")
        );
        assert!(md.contains("---:|"), "{md}");
        assert!(md.lines().count() > p.gemm.points.len() + p.link.h2d_pinned.points.len());
    }

    #[test]
    fn device_flag_is_parsed_with_a_clear_error() {
        assert_eq!(parse_device("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        let e = parse_device("gpu0").unwrap_err();
        assert!(e.contains("cuda:N"), "{e}");
    }
}
