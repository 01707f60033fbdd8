//! The GPU's utilisation while something runs, through NVML.

use nvml_wrapper::Nvml;

/// Reads one GPU's utilisation; absent where NVML or the GPU is not there.
pub struct GpuMonitor {
    nvml: Nvml,
    index: u32,
}

impl GpuMonitor {
    /// A monitor of GPU `ordinal`, or None without NVML or that GPU.
    pub fn new(ordinal: usize) -> Option<GpuMonitor> {
        let nvml = Nvml::init().ok()?;
        let index = u32::try_from(ordinal).ok()?;
        nvml.device_by_index(index).ok()?;
        Some(GpuMonitor { nvml, index })
    }

    /// The share of the last sample period in which a kernel ran, percent.
    pub fn utilization(&self) -> Option<u32> {
        let dev = self.nvml.device_by_index(self.index).ok()?;
        dev.utilization_rates().ok().map(|u| u.gpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_gpu_gives_no_monitor_rather_than_an_error() {
        // No machine has a GPU at this ordinal.
        assert!(GpuMonitor::new(usize::MAX).is_none());
        match GpuMonitor::new(0) {
            Some(m) => assert!(m.utilization().is_none_or(|u| u <= 100)),
            None => eprintln!("skipped: no NVML or no GPU 0 on this machine"),
        }
    }
}
