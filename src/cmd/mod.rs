//! One module per subcommand: flags (clap), resolution into validated inputs, output.

pub mod bench;
pub mod calibrate;
pub mod num;
pub mod overflow;
mod overflow_plot;
pub mod plan;
pub mod run;
pub mod selftest;
pub mod serve;
mod serve_metrics;
pub mod simulate;
pub mod trace;

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use kernels::{Backend, BackendOptions, DeviceSpec, KernelError};
use plans::{Field, HardwareProfile, PlanHardware, PlansError, Schedule};
use scheduler::{SchedError, ScheduleChoice, Solver};

/// Loads a hardware profile and names it for the plan file.
pub fn load_profile(path: &Path) -> anyhow::Result<(HardwareProfile, PlanHardware)> {
    let hw = HardwareProfile::load(path).context("reading --hardware")?;
    let id = PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    };
    Ok((hw, id))
}

/// `--schedule auto|transfer|paper|chunked`.
pub fn parse_schedule(s: &str) -> anyhow::Result<ScheduleChoice> {
    match s {
        "auto" => Ok(ScheduleChoice::Auto),
        s => Ok(ScheduleChoice::Fixed(
            s.parse::<Schedule>()
                .map_err(|e| anyhow!("--schedule: {e} or auto"))?,
        )),
    }
}

/// `--solver lp|exhaustive`.
pub fn parse_solver(s: &str) -> anyhow::Result<Solver> {
    match s {
        "lp" => Ok(Solver::Lp),
        "exhaustive" => Ok(Solver::Exhaustive),
        s => bail!("--solver: unknown solver {s:?}; use lp or exhaustive"),
    }
}

/// `--dtype f32|f16|bf16` (None: the backend's default).
pub fn parse_dtype(s: Option<&str>) -> anyhow::Result<Option<kernels::Dtype>> {
    s.map(|s| {
        s.parse::<kernels::Dtype>()
            .map_err(|e| anyhow!("--dtype: {e}"))
    })
    .transpose()
}

/// A size flag such as `--gpu-memory-budget 4GiB`.
pub fn parse_size(flag: &str, s: &str) -> anyhow::Result<u64> {
    plans::parse_bytes(s).map_err(|e| anyhow!("{flag}: {e}"))
}

/// Checks a command's output flags before any work, in one place: each is
/// a file that can be written (not a device, FIFO, folder, symlink or
/// immutable file, no trailing slash, in a folder that exists), and none
/// names one of the command's inputs or another output (see
/// [`plans::check_outputs`]). `--model` values that are presets name no
/// file.
pub fn check_io(
    outputs: &[(&str, Option<&Path>)],
    inputs: &[(&str, Option<&Path>)],
) -> anyhow::Result<()> {
    fn given<'a>(v: &[(&'a str, Option<&'a Path>)]) -> Vec<(&'a str, &'a Path)> {
        v.iter()
            .filter_map(|&(f, p)| Some((f, p?)))
            .filter(|(_, p)| !p.to_string_lossy().starts_with("preset:"))
            .collect()
    }
    let (o, i) = (given(outputs), given(inputs));
    plans::check_outputs(&o, &i)?;
    Ok(())
}

/// An output folder flag (`overflow --plot DIR`): a folder, or a name whose
/// parent folder exists (kvpr creates it), checked before any work; the
/// files kvpr writes in it are `files`, returned as paths for [`check_io`].
pub fn output_dir_files(
    flag: &str,
    dir: Option<&Path>,
    files: &[&str],
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{flag} {}: exists and is not a folder", dir.display()),
        Err(_) => {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if parent.exists() && !parent.is_dir() {
                bail!(
                    "{flag} {}: {} is not a folder",
                    dir.display(),
                    parent.display()
                );
            }
            if !parent.is_dir() {
                bail!(
                    "{flag} {}: folder {} does not exist; create it first",
                    dir.display(),
                    parent.display()
                );
            }
            return Ok(Vec::new());
        }
    }
    Ok(files.iter().map(|f| dir.join(f)).collect())
}

/// `--device`, `--dtype` and `--link-gbps`: the backend a command runs on.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceFlags {
    /// cpu, or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32 (the CPU backend's only one), f16 (the CUDA default) or bf16.
    #[arg(long)]
    pub dtype: Option<String>,
    /// CPU backend only: pace the link (the copy streams) to this many GB/s.
    #[arg(long)]
    pub link_gbps: Option<f64>,
}

impl DeviceFlags {
    /// The backend the flags name, opened.
    pub fn backend(&self) -> anyhow::Result<Backend> {
        backend_from_flags(&self.device, self.dtype.as_deref(), self.link_gbps)
    }
}

/// Parses `--device`, `--dtype` and `--link-gbps` and opens the backend.
pub fn backend_from_flags(
    device: &str,
    dtype: Option<&str>,
    link_gbps: Option<f64>,
) -> anyhow::Result<Backend> {
    let spec: DeviceSpec = device.parse().map_err(|e| anyhow!("--device: {e}"))?;
    let dtype = parse_dtype(dtype)?;
    open_backend(spec, BackendOptions { link_gbps, dtype })
}

/// Opens `--device`; without a CUDA driver or library, suggests the CPU.
pub fn open_backend(device: DeviceSpec, opts: BackendOptions) -> anyhow::Result<Backend> {
    Backend::new(device, opts).map_err(|e| {
        let e = match e {
            KernelError::NoDriver | KernelError::MissingLibrary { .. } => {
                anyhow!("{e}; run on the CPU with --device cpu")
            }
            KernelError::BadLinkRate { .. } => return anyhow!("--link-gbps: {e}"),
            KernelError::Unsupported { op, .. } if op.ends_with("compute dtype") => {
                return anyhow!("--dtype: {e}; the CPU backend computes in f32")
            }
            e => e.into(),
        };
        e.context(format!("opening --device {device}"))
    })
}

/// Names a scheduler error after what the user typed: `given` maps the field
/// the error is about to a flag (`--batch`) or a file's field
/// (`plan.json: workload.batch`); `None` leaves the message as it is.
pub fn name_field(e: SchedError, given: impl Fn(Field) -> Option<String>) -> anyhow::Error {
    let Some(name) = e.field().and_then(given) else {
        return e.into();
    };
    match e {
        SchedError::Invalid { reason, .. }
        | SchedError::Workload(PlansError::Workload { reason, .. }) => anyhow!("{name}: {reason}"),
        e => anyhow::Error::new(e).context(name),
    }
}

/// A recomputed share priced on `--hardware` that could not be: a
/// scheduler error names its field as `kvpr plan` would.
pub fn pricing_error(e: serving::ServingError) -> anyhow::Error {
    let e = match e {
        serving::ServingError::Sched(e) => name_field(e, plan_flag),
        e => e.into(),
    };
    e.context("pricing the recomputed share on --hardware")
}

/// The flags of `kvpr plan`, one per field.
pub fn plan_flag(f: Field) -> Option<String> {
    let flag = match f {
        Field::Batch => "--batch",
        Field::PromptLen => "--prompt-len",
        Field::GenLen => "--gen-len",
        Field::Dtype => "--dtype",
        Field::GpuMemoryBudget => "--gpu-memory-budget",
        Field::HostMemoryBudget => "--host-memory-budget",
        Field::BlockTokens => "--block-tokens",
        Field::Schedule => "--schedule",
    };
    Some(flag.to_string())
}

/// Loads `--model` with a progress bar over its layers (when there are
/// enough of them for loading to take a while).
pub fn load_model(
    source: &runtime::ModelSource,
    backend: &Backend,
) -> anyhow::Result<runtime::Model> {
    let bar = crate::fmt::progress_bar(0);
    bar.set_message("loading --model");
    let model = runtime::Model::load_with_progress(source, backend, |done, total| {
        if total >= 8 {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    });
    bar.finish_and_clear();
    model.context("loading --model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_named_after_the_flag_or_the_file_field() {
        let e = SchedError::Invalid {
            field: Field::Batch,
            reason: "must be at least 1".into(),
        };
        assert_eq!(
            format!("{:#}", name_field(e, plan_flag)),
            "--batch: must be at least 1"
        );
        let e = SchedError::HostBudget {
            needed: "2 GiB".into(),
            budget: "1 GiB".into(),
        };
        let named = name_field(e, |f| Some(format!("p.json: {}", f.plan_path())));
        let text = format!("{named:#}");
        assert!(
            text.starts_with("p.json: workload.host_memory_budget: "),
            "{text}"
        );
        assert_eq!(text.matches("1 GiB").count(), 1, "{text}");
    }
}
