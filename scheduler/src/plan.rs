//! Plan generation: one split per block-aligned context range, the summary,
//! and the memory the plan needs.

use plans::{
    HardwareProfile, ModelSpec, Plan, PlanHardware, Schedule, Step, StoreLayout, Summary, Workload,
    KVPR_VERSION, PLAN_SCHEMA,
};

use crate::cost::CostModel;
use crate::solve::{pick, PricedSplit, Solver, CHUNK_CANDIDATES};
use crate::SchedError;
use plans::human_bytes;

/// Which schedule the plan uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleChoice {
    /// Plan `transfer`, `paper` and `chunked` and keep the fastest (ties: the simpler).
    Auto,
    /// This schedule.
    Fixed(Schedule),
}

/// A split imposed instead of solved, for the runtime's correctness tests. It
/// bypasses the "no saving, no recompute" rule but stays block-aligned where it can.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForcedSplit {
    /// Share of the non-resident tokens to recompute, in `[0, 1]`; rounded to
    /// whole blocks (at least one block when positive), 1 means all of them.
    pub recompute_fraction: f64,
    /// Resident tokens (capped at the context); `None`: as many as the GPU budget holds.
    pub resident_tokens: Option<usize>,
    /// Chunks (capped at the recomputed tokens); `None`: 1.
    pub chunks: Option<usize>,
}

/// What `make_plan` is asked for besides the model, profile and workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanRequest {
    pub schedule: ScheduleChoice,
    /// Granularity of the split, tokens (the runtime's KV block).
    pub block_tokens: usize,
    pub solver: Solver,
    pub forced: Option<ForcedSplit>,
}

/// The context ranges a plan has steps for: `prompt_len` up to the next
/// multiple of `block` minus 1, then one block at a time, up to
/// `workload.max_context_len()` (inclusive ranges).
pub fn context_ranges(workload: &Workload, block: usize) -> Vec<(usize, usize)> {
    let block = block.max(1);
    let last = workload.max_context_len();
    let mut out = Vec::new();
    let mut from = workload.prompt_len;
    while from <= last {
        let to = ((from / block + 1) * block - 1).min(last);
        out.push((from, to));
        from = to + 1;
    }
    out
}

/// Makes the plan for `model` on `hw` for `workload`: validates the workload,
/// solves one split per context range (at the range's longest context), and
/// fills the summary. Fails with an error naming the flag when a budget is too small.
pub fn make_plan(
    model: &ModelSpec,
    hw: &HardwareProfile,
    hw_name_fingerprint: PlanHardware,
    workload: &Workload,
    req: &PlanRequest,
) -> Result<Plan, SchedError> {
    workload.validate(model)?;
    if req.block_tokens == 0 {
        return Err(SchedError::Invalid {
            field: plans::Field::BlockTokens,
            reason: "must be at least 1".into(),
        });
    }
    let cm = CostModel::new(model, hw, workload)?;
    let ranges = context_ranges(workload, req.block_tokens);
    let mut notes = Vec::new();

    let (schedule, splits) = match (req.forced, req.schedule) {
        (Some(f), choice) => {
            notes.push(format!(
                "The split is forced for testing ({}% of the non-resident tokens recomputed), not solved.",
                f.recompute_fraction * 100.0
            ));
            forced_splits(&cm, &ranges, &f, choice, req.block_tokens)?
        }
        (None, ScheduleChoice::Fixed(sch)) => {
            let splits = ranges
                .iter()
                .map(|&(_, to)| {
                    cm.best_split(
                        to,
                        cm.resident_tokens(to),
                        sch,
                        req.block_tokens,
                        req.solver,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            (sch, splits)
        }
        (None, ScheduleChoice::Auto) => {
            let (sch, splits, means) = auto_splits(&cm, &ranges, req)?;
            notes.push(format!(
                "auto: chose {} (mean predicted step: transfer {:.3} ms, paper {:.3} ms, chunked {:.3} ms).",
                sch.name(),
                means[0] * 1e3,
                means[1] * 1e3,
                means[2] * 1e3
            ));
            (sch, splits)
        }
    };
    if !model.recompute_saves_bytes() {
        notes.insert(0, no_saving_note(model, req.forced.is_some()));
    }

    let steps: Vec<Step> = ranges
        .iter()
        .zip(&splits)
        .map(|(&(from, to), sp)| Step {
            context_len_from: from,
            context_len_to: to,
            resident_tokens: sp.resident,
            recompute_tokens: sp.recompute,
            transfer_tokens: to - sp.resident - sp.recompute,
            chunks: sp.chunks,
            kv_ready_us: sp.cost.kv_ready * 1e6,
            step_us: sp.cost.step * 1e6,
        })
        .collect();

    let summary = summarize(&cm, model, workload, &ranges, &splits)?;
    Ok(Plan {
        schema: PLAN_SCHEMA.into(),
        kvpr_version: KVPR_VERSION.into(),
        model: model.clone(),
        hardware: hw_name_fingerprint,
        workload: workload.clone(),
        schedule,
        block_tokens: req.block_tokens,
        steps,
        summary,
        notes,
    })
}

/// The plain sentence saying why nothing is recomputed for this model.
fn no_saving_note(model: &ModelSpec, forced: bool) -> String {
    let (h, hkv2) = (model.hidden_size, 2 * model.kv_dim());
    let kind = if model.n_kv_heads < model.n_heads {
        "uses grouped-query attention"
    } else {
        "has wide activations"
    };
    let tail = if forced {
        "recomputation cannot save link bytes; the forced split recomputes anyway."
    } else {
        "recomputation cannot save link bytes and nothing is recomputed."
    };
    format!(
        "{} {kind} (h = {h} >= 2*h_kv = {hkv2}): its activations are no smaller than its K/V, so {tail}",
        model.name
    )
}

/// Mean over all decode steps of a per-range value (each range weighted by its contexts), s.
fn weighted_mean(ranges: &[(usize, usize)], mut value: impl FnMut(usize) -> f64) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    for (i, &(from, to)) in ranges.iter().enumerate() {
        let w = (to - from + 1) as f64;
        sum += w * value(i);
        n += w;
    }
    if n > 0.0 {
        sum / n
    } else {
        0.0
    }
}

/// `Auto`: the three schedules' splits from one pass over the chunk counts
/// (`paper` is the `c = 1` subset of `chunked`, `transfer` the `l = 0` split);
/// returns the fastest and the three means, s.
fn auto_splits(
    cm: &CostModel,
    ranges: &[(usize, usize)],
    req: &PlanRequest,
) -> Result<(Schedule, Vec<PricedSplit>, [f64; 3]), SchedError> {
    let mut per: [Vec<PricedSplit>; 3] = Default::default();
    for &(_, to) in ranges {
        let g = cm.resident_tokens(to);
        let all = cm.best_per_chunks(
            to,
            g,
            &CHUNK_CANDIDATES,
            req.block_tokens,
            req.solver,
            Schedule::Chunked,
        )?;
        let c1: Vec<PricedSplit> = all.iter().copied().filter(|s| s.chunks == 1).collect();
        let none = cm.no_recompute(to, g);
        per[0].push(none);
        per[1].push(pick(&c1).unwrap_or(none));
        per[2].push(pick(&all).unwrap_or(none));
    }
    let means = [0, 1, 2].map(|k| weighted_mean(ranges, |i| per[k][i].cost.step));
    let mut best = 0;
    for k in 1..3 {
        if means[k] < means[best] * (1.0 - 1e-12) {
            best = k;
        }
    }
    let schedule = Schedule::ALL[best];
    let splits = std::mem::take(&mut per[best]);
    Ok((schedule, splits, means))
}

/// The imposed splits of a [`ForcedSplit`].
fn forced_splits(
    cm: &CostModel,
    ranges: &[(usize, usize)],
    f: &ForcedSplit,
    choice: ScheduleChoice,
    block: usize,
) -> Result<(Schedule, Vec<PricedSplit>), SchedError> {
    let frac = f.recompute_fraction;
    if !(frac.is_finite() && (0.0..=1.0).contains(&frac)) {
        return Err(SchedError::Forced(format!(
            "recompute_fraction must be in [0, 1], got {frac}"
        )));
    }
    let chunks = f.chunks.unwrap_or(1);
    if chunks == 0 {
        return Err(SchedError::Forced("chunks must be at least 1".into()));
    }
    let schedule = match choice {
        ScheduleChoice::Auto if chunks > 1 => Schedule::Chunked,
        ScheduleChoice::Auto if frac > 0.0 => Schedule::Paper,
        ScheduleChoice::Auto => Schedule::Transfer,
        ScheduleChoice::Fixed(Schedule::Transfer) if frac > 0.0 => {
            return Err(SchedError::Forced(
                "the transfer schedule recomputes nothing; use the paper or chunked schedule"
                    .into(),
            ))
        }
        ScheduleChoice::Fixed(Schedule::Paper) if chunks > 1 => {
            return Err(SchedError::Forced(
                "the paper schedule uses one chunk; use the chunked schedule".into(),
            ))
        }
        ScheduleChoice::Fixed(s) => s,
    };
    let mut out = Vec::with_capacity(ranges.len());
    for &(_, s) in ranges {
        let g = match f.resident_tokens {
            Some(n) => {
                let g = n.min(s);
                if g > cm.max_resident_tokens() {
                    return Err(SchedError::Forced(format!(
                        "{g} resident tokens do not fit: the GPU memory budget holds {} after the staging buffers",
                        cm.max_resident_tokens()
                    )));
                }
                g
            }
            None => cm.resident_tokens(s),
        };
        let n = s - g;
        let l = if frac >= 1.0 {
            n
        } else {
            let blocks = (frac * n as f64 / block as f64).round() as usize;
            let l = (blocks * block).min(n);
            if l == 0 && frac > 0.0 {
                block.min(n)
            } else {
                l
            }
        };
        let c = if l == 0 { 1 } else { chunks.min(l) };
        out.push(PricedSplit {
            resident: g,
            recompute: l,
            chunks: c,
            cost: cm.step(s, g, l, c, schedule),
        });
    }
    Ok((schedule, out))
}

/// The summary, and the host-budget check: host memory holds what the shared
/// [`StoreLayout`] of the steps says (activations of positions ever recomputed,
/// K/V of positions ever transferred), the layout the runtime allocates.
fn summarize(
    cm: &CostModel,
    model: &ModelSpec,
    workload: &Workload,
    ranges: &[(usize, usize)],
    splits: &[PricedSplit],
) -> Result<Summary, SchedError> {
    let predicted = weighted_mean(ranges, |i| splits[i].cost.step);
    let transfer = weighted_mean(ranges, |i| {
        let (s, g) = (ranges[i].1, splits[i].resident);
        cm.step(s, g, 0, 1, Schedule::Transfer).step
    });
    let io_floor = weighted_mean(ranges, |i| cm.io_floor(ranges[i].1, splits[i].resident));
    let compute_floor = weighted_mean(ranges, |i| cm.compute_floor(ranges[i].1));

    let layout = StoreLayout::from_steps(
        ranges
            .iter()
            .zip(splits)
            .map(|(&(_, to), sp)| (sp.resident, sp.recompute, to)),
    );
    let host = layout.host_bytes(model, workload.batch, workload.dtype);
    if host > workload.host_memory_budget {
        return Err(SchedError::HostBudget {
            needed: human_bytes(host),
            budget: human_bytes(workload.host_memory_budget),
        });
    }
    let max_g = splits.iter().map(|s| s.resident).max().unwrap_or(0) as u64;
    Ok(Summary {
        predicted_decode_step_us: predicted * 1e6,
        transfer_only_step_us: transfer * 1e6,
        io_floor_step_us: io_floor * 1e6,
        compute_floor_step_us: compute_floor * 1e6,
        speedup_vs_transfer: if predicted > 0.0 {
            transfer / predicted
        } else {
            1.0
        },
        host_memory_bytes: host,
        gpu_memory_bytes: cm
            .staging_bytes()
            .saturating_add(max_g.saturating_mul(cm.resident_bytes_per_token())),
        recompute_saves_bytes: cm.recompute_saves_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_block_aligned_and_contiguous() {
        let w = Workload {
            batch: 1,
            prompt_len: 10,
            gen_len: 8,
            dtype: plans::Dtype::F32,
            gpu_memory_budget: 0,
            host_memory_budget: 0,
        };
        assert_eq!(context_ranges(&w, 4), vec![(10, 11), (12, 15), (16, 17)]);
        let w = Workload {
            prompt_len: 16,
            gen_len: 1,
            ..w
        };
        assert_eq!(context_ranges(&w, 16), vec![(16, 16)]);
    }
}
