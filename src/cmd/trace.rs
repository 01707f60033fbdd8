//! `kvpr run --trace`: which decode steps to trace, and the trace file
//! (`kvpr.trace/v1`) made from what the run measured.

use anyhow::bail;
use plans::{Plan, Trace, TRACE_SCHEMA};
use runtime::GenerationReport;

/// `--trace-steps`: decode step indices (0: the first after prefill),
/// `first` and `last` (the last step `--max-new-tokens` allows), separated
/// by commas. A run of `max_new_tokens` has `max_new_tokens - 1` decode steps.
pub fn parse_steps(s: &str, max_new_tokens: usize) -> anyhow::Result<Vec<usize>> {
    let n = max_new_tokens.saturating_sub(1);
    if n == 0 {
        bail!("--trace: --max-new-tokens {max_new_tokens} runs no decode step to trace (the first token comes from prefill); use at least 2");
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let i = match part {
            "first" => 0,
            "last" => n - 1,
            p => match p.parse::<usize>() {
                Ok(i) if i < n => i,
                Ok(i) => bail!(
                    "--trace-steps: step {i} is past the last decode step ({}) of --max-new-tokens {max_new_tokens}",
                    n - 1
                ),
                Err(_) => bail!(
                    "--trace-steps: {p:?} is not a step; give step numbers (0 is the first decode step), first or last, separated by commas"
                ),
            },
        };
        out.push(i);
    }
    Ok(out)
}

/// The trace of a run of `model` on `device` with `plan`.
pub fn make(plan: &Plan, model: &str, device: &str, report: &GenerationReport) -> Trace {
    Trace {
        schema: TRACE_SCHEMA.to_string(),
        kvpr_version: plans::KVPR_VERSION.to_string(),
        model: model.to_string(),
        device: device.to_string(),
        schedule: plan.schedule,
        hardware: plan.hardware.clone(),
        batch: report.tokens.len(),
        prompt_len: report.steps.first().map_or(0, |s| s.context),
        steps: report.trace.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_steps_parse() {
        assert_eq!(parse_steps("last", 8).unwrap(), vec![6]);
        assert_eq!(parse_steps("first, 3,last", 8).unwrap(), vec![0, 3, 6]);
        let e = parse_steps("7", 8).unwrap_err().to_string();
        assert!(e.contains("--trace-steps") && e.contains('6'), "{e}");
        assert!(parse_steps("soon", 8).is_err());
        let e = parse_steps("last", 1).unwrap_err().to_string();
        assert!(e.contains("--max-new-tokens 1"), "{e}");
    }
}
