//! One module per subcommand: flags (clap), resolution into validated inputs, output.

pub mod plan;
pub mod simulate;

use std::path::Path;

use anyhow::Context;
use plans::{HardwareProfile, PlanHardware};

/// Loads a hardware profile and names it for the plan file.
pub fn load_profile(path: &Path) -> anyhow::Result<(HardwareProfile, PlanHardware)> {
    let hw = HardwareProfile::load(path).context("reading --hardware")?;
    let id = PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    };
    Ok((hw, id))
}
