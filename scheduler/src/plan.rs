//! Plan generation: one split per block-aligned context range from context 1
//! up to the workload's last (so the plan serves every prompt of up to
//! `prompt_len` tokens), consecutive ranges with the same split merged into
//! one step, the summary, and the memory the plan needs.

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

/// The context ranges a plan solves a split for: `1 ..= block - 1`, then one
/// block at a time (`k*block ..= (k+1)*block - 1`), up to
/// `workload.max_context_len()` (inclusive ranges). Every context a prompt of
/// up to `prompt_len` tokens decodes is in one.
pub fn context_ranges(workload: &Workload, block: usize) -> Vec<(usize, usize)> {
    let block = block.max(1);
    let last = workload.max_context_len();
    let mut out = Vec::with_capacity(last / block + 1);
    let mut from = 1;
    while from <= last {
        let to = ((from / block + 1) * block - 1).min(last);
        out.push((from, to));
        from = to + 1;
    }
    out
}

/// How many of the planned workload's decode contexts (`prompt_len ..=
/// max_context_len()`) fall in each range: the weights of the summary's means.
fn decode_weights(workload: &Workload, ranges: &[(usize, usize)]) -> Vec<f64> {
    let (a, b) = (workload.prompt_len, workload.max_context_len());
    ranges
        .iter()
        .map(|&(from, to)| (to.min(b) + 1).saturating_sub(from.max(a)) as f64)
        .collect()
}

/// Whether `next`'s split, capped at each context `s` of `prev` as the runtime
/// and the simulator cap it (`g = min(resident, s)`, `l = min(recompute, s - g)`),
/// is `prev`'s: then one step carries both ranges. That is the same resident,
/// recompute and chunks, or e.g. "all resident" twice (`resident = context_len_to`
/// in both: the second, capped, keeps every context of the first resident).
fn same_split(prev: &Step, next: &Step) -> bool {
    let to = prev.context_len_to;
    let (ga, gb) = (prev.resident_tokens, next.resident_tokens);
    let (la, lb) = (prev.recompute_tokens, next.recompute_tokens);
    let g = ga.min(to);
    // Capped values agree on every s <= to iff equal or both at least the cap at `to`.
    let same_g = ga == gb || ga.min(gb) >= to;
    let same_l = la == lb || la.min(lb) >= to - g;
    same_g && same_l && prev.chunks == next.chunks
}

/// How far a merged step's straight-line prediction may stray from the cost
/// model at any of its block ends (relative).
const MERGE_TOLERANCE: f64 = 0.01;

/// The plan's steps: one per range, then consecutive ranges with the same
/// split ([`same_split`]) merged into one step carrying the later range's
/// split, as long as a straight line between the merged step's first context
/// (`first_step_us`, priced here) and its last (`step_us`) predicts every
/// block end in between within [`MERGE_TOLERANCE`]. A run then interpolates
/// the prediction at any context ([`Step::step_us_at`]).
fn merged_steps(
    cm: &CostModel,
    schedule: Schedule,
    ranges: &[(usize, usize)],
    splits: &[PricedSplit],
) -> Vec<Step> {
    merge_steps(ranges, splits, |s, st| {
        let (g, l, c) = (st.resident_tokens, st.recompute_tokens, st.chunks);
        cm.step(s, g, l, c, schedule).step * 1e6
    })
}

/// [`merged_steps`] with the price of a step's split at a context, µs, given.
fn merge_steps(
    ranges: &[(usize, usize)],
    splits: &[PricedSplit],
    price: impl Fn(usize, &Step) -> f64,
) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // The block ends `(context, step_us)` of the last step.
    let mut ends: Vec<(usize, f64)> = Vec::new();
    for (&(from, to), sp) in ranges.iter().zip(splits) {
        let step = Step {
            context_len_from: from,
            context_len_to: to,
            resident_tokens: sp.resident,
            recompute_tokens: sp.recompute,
            transfer_tokens: to - sp.resident - sp.recompute,
            chunks: sp.chunks,
            kv_ready_us: sp.cost.kv_ready * 1e6,
            step_us: sp.cost.step * 1e6,
            first_step_us: None,
        };
        let merged = steps
            .last()
            .filter(|last| same_split(last, &step))
            .map(|last| Step {
                context_len_from: last.context_len_from,
                first_step_us: Some(price(last.context_len_from, &step)),
                ..step
            });
        match merged {
            Some(m)
                if ends
                    .iter()
                    .all(|&(s, t)| (m.step_us_at(s) / t - 1.0).abs() <= MERGE_TOLERANCE) =>
            {
                if let Some(last) = steps.last_mut() {
                    *last = m;
                }
            }
            _ => {
                ends.clear();
                let mut step = step;
                if to > from {
                    step.first_step_us = Some(price(from, &step));
                }
                steps.push(step);
            }
        }
        ends.push((to, sp.cost.step * 1e6));
    }
    steps
}

/// Makes the plan for `model` on `hw` for `workload`: validates the workload,
/// solves one split per context range (at the range's longest context) for
/// every context from 1 to `workload.max_context_len()`, merges the ranges
/// with the same split, and fills the summary. Fails with an error naming the flag when a budget is too small.
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
    let weights = decode_weights(workload, &ranges);
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
            let (sch, splits, means) = auto_splits(&cm, &ranges, &weights, req)?;
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

    let steps = merged_steps(&cm, schedule, &ranges, &splits);
    let summary = summarize(&cm, model, workload, &ranges, &weights, &splits)?;
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

/// Mean of a per-range value, each range weighted by `weights` (its decode
/// contexts in the planned workload), s.
fn weighted_mean(weights: &[f64], mut value: impl FnMut(usize) -> f64) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            sum += w * value(i);
            n += w;
        }
    }
    if n > 0.0 {
        sum / n
    } else {
        0.0
    }
}

/// `Auto`: the three schedules' splits from one pass over the chunk counts
/// (`paper` is the `c = 1` subset of `chunked`, `transfer` the `l = 0` split);
/// returns the fastest over the planned workload's decode contexts and the
/// three means, s.
fn auto_splits(
    cm: &CostModel,
    ranges: &[(usize, usize)],
    weights: &[f64],
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
    let means = [0, 1, 2].map(|k| weighted_mean(weights, |i| per[k][i].cost.step));
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

/// The summary, and the host-budget check. The means are over the planned
/// workload's decode contexts (`weights`); the memory is for the largest run
/// the plan serves: what the shared [`StoreLayout`] of the steps says
/// (activations of positions ever recomputed, K/V of positions ever
/// transferred), the layout the runtime allocates.
fn summarize(
    cm: &CostModel,
    model: &ModelSpec,
    workload: &Workload,
    ranges: &[(usize, usize)],
    weights: &[f64],
    splits: &[PricedSplit],
) -> Result<Summary, SchedError> {
    let predicted = weighted_mean(weights, |i| splits[i].cost.step);
    let transfer = weighted_mean(weights, |i| {
        let (s, g) = (ranges[i].1, splits[i].resident);
        cm.step(s, g, 0, 1, Schedule::Transfer).step
    });
    let io_floor = weighted_mean(weights, |i| cm.io_floor(ranges[i].1, splits[i].resident));
    let compute_floor = weighted_mean(weights, |i| cm.compute_floor(ranges[i].1));

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

    fn workload(prompt_len: usize, gen_len: usize) -> Workload {
        Workload {
            batch: 1,
            prompt_len,
            gen_len,
            dtype: plans::Dtype::F32,
            gpu_memory_budget: 0,
            host_memory_budget: 0,
        }
    }

    #[test]
    fn ranges_are_block_aligned_and_contiguous_from_context_1() {
        let w = workload(10, 8);
        assert_eq!(
            context_ranges(&w, 4),
            vec![(1, 3), (4, 7), (8, 11), (12, 15), (16, 17)]
        );
        assert_eq!(
            context_ranges(&workload(16, 1), 16),
            vec![(1, 15), (16, 16)]
        );
        assert_eq!(context_ranges(&workload(1, 2), 1), vec![(1, 1), (2, 2)]);
        // Only the planned workload's decode contexts (10 ..= 17) weigh in the means.
        assert_eq!(
            decode_weights(&w, &context_ranges(&w, 4)),
            vec![0.0, 0.0, 2.0, 4.0, 2.0]
        );
    }

    fn split(resident: usize, recompute: usize, chunks: usize, step: f64) -> PricedSplit {
        PricedSplit {
            resident,
            recompute,
            chunks,
            cost: crate::cost::StepCost {
                t_x: 0.0,
                t_kv: 0.0,
                r: 0.0,
                t_attn: 0.0,
                t_dense: 0.0,
                t_head: 0.0,
                kv_ready: step / 2.0,
                compute_busy: 0.0,
                period: 0.0,
                step,
                io_bytes_x: 0.0,
                io_bytes_kv: 0.0,
            },
        }
    }

    #[test]
    fn ranges_with_the_same_split_merge_into_one_step() {
        let ranges = [(1, 3), (4, 7), (8, 11), (12, 15), (16, 17)];
        let splits = [
            split(0, 0, 1, 1.0),
            split(0, 0, 1, 2.0),
            split(0, 4, 1, 3.0),
            split(0, 4, 2, 4.0),
            split(0, 4, 2, 5.0),
        ];
        // Prices at the first contexts consistent with the block ends above
        // (a straight line through them), so merging is decided by the split.
        let price = |s: usize, _: &Step| {
            if s == 12 {
                2.5e6
            } else {
                0.25e6 * (s as f64 + 1.0)
            }
        };
        let steps = merge_steps(&ranges, &splits, price);
        // "All resident" merges too: capped at the earlier contexts it is the same split.
        // (8 resident at 8..=11 keeps every context up to 8 resident, as 3 and 7 did.)
        let all = [
            split(3, 0, 1, 1.0),
            split(7, 0, 1, 2.0),
            split(8, 0, 1, 3.0),
            split(8, 4, 2, 4.0),
        ];
        let merged: Vec<_> = merge_steps(&ranges[..4], &all, price)
            .iter()
            .map(|s| {
                (
                    s.context_len_from,
                    s.context_len_to,
                    s.resident_tokens,
                    s.recompute_tokens,
                    s.transfer_tokens,
                )
            })
            .collect();
        assert_eq!(merged, vec![(1, 11, 8, 0, 3), (12, 15, 8, 4, 3)]);
        let got: Vec<_> = steps
            .iter()
            .map(|s| {
                (
                    s.context_len_from,
                    s.context_len_to,
                    s.recompute_tokens,
                    s.transfer_tokens,
                    s.chunks,
                    s.step_us,
                )
            })
            .collect();
        // A merged step keeps the prediction and the transfer count at its last context.
        assert_eq!(
            got,
            vec![
                (1, 7, 0, 7, 1, 2e6),
                (8, 11, 4, 7, 1, 3e6),
                (12, 17, 4, 13, 2, 5e6)
            ]
        );
    }

    #[test]
    fn a_merged_step_predicts_its_first_context_and_interpolates_between() {
        let model = ModelSpec::preset("llama-2-7b").unwrap();
        let hw = crate::testutil::shipped("a100-pcie4");
        let mut w = Workload {
            batch: 4,
            prompt_len: 2048,
            gen_len: 64,
            dtype: plans::Dtype::F16,
            gpu_memory_budget: 0,
            host_memory_budget: u64::MAX,
        };
        w.gpu_memory_budget = crate::staging_bytes(&model, &w);
        for schedule in [Schedule::Transfer, Schedule::Chunked] {
            let req = PlanRequest {
                schedule: ScheduleChoice::Fixed(schedule),
                block_tokens: 16,
                solver: Solver::Lp,
                forced: None,
            };
            let plan = make_plan(&model, &hw, crate::testutil::hw_id(&hw), &w, &req).unwrap();
            let cm = CostModel::new(&model, &hw, &w).unwrap();
            let exact = |st: &Step, s: usize| {
                let c = st.chunks.min(st.recompute_tokens.max(1));
                cm.step(s, st.resident_tokens, st.recompute_tokens, c, plan.schedule)
                    .step
                    * 1e6
            };
            let mut merged = 0;
            for st in &plan.steps {
                let (a, b) = (st.context_len_from, st.context_len_to);
                if b == a {
                    assert_eq!(st.first_step_us, None);
                    continue;
                }
                merged += 1;
                assert!((st.step_us_at(a) / exact(st, a) - 1.0).abs() < 1e-9);
                assert!((st.step_us_at(b) / st.step_us - 1.0).abs() < 1e-12);
                let mid = (a + b) / 2;
                let d = st.step_us_at(mid) / exact(st, mid) - 1.0;
                assert!(d.abs() < 0.02, "{schedule:?} {a}..={b} at {mid}: {d}");
            }
            assert!(merged > 0, "{schedule:?}: some ranges merge");
        }
    }
}
