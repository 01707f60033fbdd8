//! The device's identity: NVML on CUDA (loaded at run time; its absence is
//! "not available", never a panic), `/proc/cpuinfo` and `/proc/meminfo` on CPU.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use kernels::{Backend, DeviceSpec};
use plans::{DeviceInfo, DeviceKind};

pub(crate) fn device_info(be: &Backend) -> DeviceInfo {
    match be.spec() {
        DeviceSpec::Cpu => cpu_info(be),
        DeviceSpec::Cuda(ordinal) => cuda_info(be, ordinal),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| format!("unknown {} CPU", std::env::consts::ARCH))
}

fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<u64>().ok())
                        .map(|kb| kb * 1024)
                })
        })
        .unwrap_or(0)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cpu_info(be: &Backend) -> DeviceInfo {
    let mut extra = BTreeMap::new();
    extra.insert("cores".to_string(), cores().to_string());
    extra.insert(
        "host_memory_bytes".to_string(),
        mem_total_bytes().to_string(),
    );
    extra.insert("backend".to_string(), be.name());
    if let Some(g) = be.link_gbps() {
        extra.insert("link_gbps".to_string(), g.to_string());
    }
    DeviceInfo {
        kind: DeviceKind::Cpu,
        name: cpu_model(),
        memory_bytes: mem_total_bytes(),
        pcie_generation: None,
        pcie_width: None,
        driver: None,
        compute_capability: None,
        extra,
    }
}

fn cuda_info(be: &Backend, ordinal: usize) -> DeviceInfo {
    use nvml_wrapper::enum_wrappers::device::Clock;
    let mut info = DeviceInfo {
        kind: DeviceKind::Cuda,
        name: be.name(),
        memory_bytes: 0,
        pcie_generation: None,
        pcie_width: None,
        driver: None,
        compute_capability: None,
        extra: BTreeMap::new(),
    };
    info.extra.insert("backend".to_string(), be.name());
    info.extra.insert("host_cpu".to_string(), cpu_model());
    info.extra.insert(
        "host_memory_bytes".to_string(),
        mem_total_bytes().to_string(),
    );
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            info.extra
                .insert("nvml".to_string(), format!("not available: {e}"));
            return info;
        }
    };
    if let Ok(d) = nvml.sys_driver_version() {
        info.driver = Some(d);
    }
    let dev = match nvml.device_by_index(ordinal as u32) {
        Ok(d) => d,
        Err(e) => {
            info.extra.insert(
                "nvml".to_string(),
                format!("device {ordinal} not available: {e}"),
            );
            return info;
        }
    };
    if let Ok(n) = dev.name() {
        info.name = n;
    }
    if let Ok(m) = dev.memory_info() {
        info.memory_bytes = m.total;
    }
    info.pcie_generation = dev.max_pcie_link_gen().ok();
    info.pcie_width = dev.max_pcie_link_width().ok();
    if let Ok(cc) = dev.cuda_compute_capability() {
        info.compute_capability = Some(format!("{}.{}", cc.major, cc.minor));
    }
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            info.extra.insert(k.to_string(), v);
        }
    };
    put(
        "pcie_generation_current",
        dev.current_pcie_link_gen().ok().map(|v| v.to_string()),
    );
    put(
        "pcie_width_current",
        dev.current_pcie_link_width().ok().map(|v| v.to_string()),
    );
    put(
        "clock_graphics_max_mhz",
        dev.max_clock_info(Clock::Graphics)
            .ok()
            .map(|v| v.to_string()),
    );
    put(
        "clock_memory_max_mhz",
        dev.max_clock_info(Clock::Memory)
            .ok()
            .map(|v| v.to_string()),
    );
    put(
        "clock_sm_mhz",
        dev.clock_info(Clock::SM).ok().map(|v| v.to_string()),
    );
    info
}

/// A default profile name, e.g. `cpu-intel-r-xeon-r-processor-2c`.
pub(crate) fn default_name(be: &Backend, d: &DeviceInfo) -> String {
    let slug: String = d
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug = slug
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    match be.spec() {
        DeviceSpec::Cpu => match be.link_gbps() {
            Some(g) => format!("cpu-{slug}-{}c-link{g}", cores()),
            None => format!("cpu-{slug}-{}c", cores()),
        },
        DeviceSpec::Cuda(_) => slug,
    }
}

/// Notes that say what was measured on what.
pub(crate) fn notes(be: &Backend, d: &DeviceInfo, quick: bool) -> Vec<String> {
    let mut n = Vec::new();
    match be.spec() {
        DeviceSpec::Cpu => {
            n.push(format!(
                "CPU backend on {} ({} cores, {:.1} GiB memory)",
                d.name,
                cores(),
                d.memory_bytes as f64 / (1u64 << 30) as f64
            ));
            match be.link_gbps() {
                Some(g) => n.push(format!(
                    "link: the CPU backend's copy threads paced to {g} GB/s (--link-gbps)"
                )),
                None => n.push("link: the CPU backend's in-memory copy (unpaced)".to_string()),
            }
            n.push(
                "the CPU backend has one kind of host memory: pageable curves are omitted"
                    .to_string(),
            );
        }
        DeviceSpec::Cuda(_) => {
            n.push(format!("CUDA backend: {}", be.name()));
            if let Some(e) = d.extra.get("nvml") {
                n.push(format!("NVML {e}"));
            }
        }
    }
    if quick {
        n.push("quick calibration (--quick): fewer sizes and repeats".to_string());
    }
    n
}

/// `t` as RFC 3339 in UTC, e.g. `2025-01-31T12:34:56Z`.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
