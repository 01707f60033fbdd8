//! Memory checked against the machine before a large allocation, so a run that
//! cannot fit is refused with a message instead of aborting (or being killed)
//! half-way through.

use crate::{Result, RuntimeError};

/// Bytes the system can still hand out without swapping: `MemAvailable` of
/// `/proc/meminfo`. `None` where the system does not say (not Linux).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Refuses to allocate `needed` bytes for `what` when the machine has less
/// available; `hint` says what would need less. Passes where the available
/// memory is unknown.
pub fn check_memory(what: &str, needed: u64, hint: &str) -> Result<()> {
    match available_memory() {
        Some(available) if needed > available => Err(RuntimeError::OutOfMemory {
            what: what.to_string(),
            on: "this machine".into(),
            needed,
            available,
            hint: hint.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Refuses `needed` bytes of device buffers for `what` where `backend`'s
/// device has less free: a GPU's free memory (`cuMemGetInfo`), or, on the
/// CPU backend, whose device buffers are host memory, the machine's.
pub fn check_device_memory(
    backend: &kernels::Backend,
    what: &str,
    needed: u64,
    hint: &str,
) -> Result<()> {
    match backend.free_memory()? {
        Some(free) if needed > free => Err(RuntimeError::OutOfMemory {
            what: what.to_string(),
            on: backend.name(),
            needed,
            available: free,
            hint: hint.to_string(),
        }),
        Some(_) => Ok(()),
        None => check_memory(what, needed, hint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2 << 20));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn more_than_the_machine_has_is_refused_with_both_figures() {
        if available_memory().is_none() {
            eprintln!("skipping: this system does not report available memory");
            return;
        }
        let e = check_memory("the test", u64::MAX, "ask for less")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the test") && e.contains("available") && e.contains("ask for less"),
            "{e}"
        );
        assert!(check_memory("nothing", 0, "").is_ok());
        assert_eq!(plans::bytes_of(&[usize::MAX, usize::MAX]), u64::MAX);
        assert_eq!(plans::bytes_of(&[3, 4]), 12);
    }
}
