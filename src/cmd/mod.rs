//! One module per subcommand: flags (clap), resolution into validated inputs, output.

pub mod calibrate;
pub mod plan;
pub mod run;
pub mod simulate;
pub mod trace;

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use plans::{HardwareProfile, PlanHardware, Schedule};
use scheduler::{ScheduleChoice, Solver};

/// Loads a hardware profile and names it for the plan file.
pub fn load_profile(path: &Path) -> anyhow::Result<(HardwareProfile, PlanHardware)> {
    let hw = HardwareProfile::load(path).context("reading --hardware")?;
    let id = PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    };
    Ok((hw, id))
}

/// Maps an error building the backend to the flag behind it.
pub fn backend_error(e: kernels::KernelError, device: &str) -> anyhow::Error {
    match e {
        kernels::KernelError::BadLinkRate { .. } => anyhow!("--link-gbps: {e}"),
        e => anyhow::Error::new(e).context(format!("opening --device {device}")),
    }
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

/// A size flag such as `--gpu-memory-budget 4GiB`.
pub fn parse_size(flag: &str, s: &str) -> anyhow::Result<u64> {
    plans::parse_bytes(s).map_err(|e| anyhow!("{flag}: {e}"))
}
