//! The policies' recomputed shares, priced by the cost model on a hardware
//! profile, and the link floor of what a run moved.

use plans::{HardwareProfile, Requests, Schedule, Workload};
use runtime::PagedCounters;
use scheduler::{CostModel, Policy, Serving, ServingConfig, Solver};

use crate::Result;

/// The cost model for one sequence of `reqs`' mean shape, and that mean
/// context `s` (prompt plus half the output).
fn one_sequence(
    spec: &plans::ModelSpec,
    hw: &HardwareProfile,
    reqs: &Requests,
    dtype: kernels::Dtype,
) -> Result<(CostModel, usize)> {
    let n = reqs.requests.len().max(1);
    let mean_in = reqs.requests.iter().map(|r| r.input_len).sum::<usize>() / n;
    let mean_out = reqs.requests.iter().map(|r| r.output_len).sum::<usize>() / n;
    let w = Workload {
        batch: 1,
        prompt_len: mean_in.max(1),
        gen_len: mean_out.max(1),
        dtype,
        gpu_memory_budget: u64::MAX / 4,
        host_memory_budget: u64::MAX / 4,
    };
    let cost = CostModel::new(spec, hw, &w)?;
    Ok((cost, (mean_in + mean_out / 2).max(1)))
}

/// The cost model for decode steps of `batch` sequences at context `s`.
fn one_step(
    spec: &plans::ModelSpec,
    hw: &HardwareProfile,
    dtype: kernels::Dtype,
    batch: usize,
    s: usize,
) -> Result<CostModel> {
    let w = Workload {
        batch,
        prompt_len: s,
        gen_len: 1,
        dtype,
        gpu_memory_budget: u64::MAX / 4,
        host_memory_budget: u64::MAX / 4,
    };
    Ok(CostModel::new(spec, hw, &w)?)
}

/// The time the bytes a run moved need on the link alone, each direction on
/// its own: at the paced rate where `--link-gbps` sets one, else at the
/// profile's curves.
pub fn link_floor(hw: &HardwareProfile, paced_gbps: Option<f64>, c: &PagedCounters) -> f64 {
    let (to_device, to_host) = (c.bytes_in as f64, (c.bytes_out + c.bytes_x_out) as f64);
    hw.link_seconds(paced_gbps, to_device, to_host)
}

/// `partial`: the share of a resumed context worth recomputing from
/// activations rather than moving as K/V, by the cost model at the
/// workload's mean context. Bringing one sequence back is one layer's copies,
/// `X` of the recomputed share first, then K/V of the rest, while the compute
/// stream recomputes once `X` is in; the share minimises the time until the
/// layer's K/V are all on the device (`kv_ready`), block-aligned.
pub fn resume_share(
    spec: &plans::ModelSpec,
    hw: &HardwareProfile,
    reqs: &Requests,
    dtype: kernels::Dtype,
    block: usize,
) -> Result<f64> {
    let (cost, s) = one_sequence(spec, hw, reqs, dtype)?;
    let best = (0..=s.div_ceil(block))
        .map(|i| (i * block).min(s))
        .map(|l| (l, cost.step(s, 0, l, 1, Schedule::Paper).kv_ready))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
        .map_or(0, |(l, _)| l);
    Ok(best as f64 / s as f64)
}

/// `offload`: the share of an offloaded prefix recomputed in each decode
/// step, by the planner's own rule (`best_split`) for the mean step that
/// carries an offloaded prefix. A dry run of the scheduler under `offload`
/// (every request arriving at once; bookkeeping only, no model) gives that
/// step: its batch, its mean context `s`, and the mean tokens per sequence
/// on the host. The offloaded rest crosses the link while the step computes,
/// so where the step is compute-bound nothing is worth recomputing. Pricing
/// the final overflow instead would over-price the link: the overflow grows
/// from nothing as the requests decode.
pub fn offload_share(
    spec: &plans::ModelSpec,
    hw: &HardwareProfile,
    reqs: &Requests,
    dtype: kernels::Dtype,
    block: usize,
    (capacity, max_batch): (usize, usize),
) -> Result<f64> {
    let cfg = ServingConfig {
        block_size: block,
        capacity_blocks: capacity,
        policy: Policy::Offload,
        max_running: max_batch,
        partial_recompute: 0.0,
        offload_admit_blocks: 0,
    };
    let mut dry = Serving::new(reqs, cfg)?;
    // Over the steps with something offloaded: steps, sequences, context
    // tokens and host tokens.
    let (mut steps, mut seqs, mut ctx, mut host) = (0usize, 0usize, 0usize, 0usize);
    while !dry.done() {
        let it = dry.next_iteration(f64::INFINITY);
        if it.decode.is_empty() {
            break;
        }
        let (mut b, mut c, mut o) = (0, 0, 0);
        for (context, on_host) in dry.running_contexts() {
            (b, c, o) = (b + 1, c + context, o + on_host);
        }
        if o > 0 {
            (steps, seqs, ctx, host) = (steps + 1, seqs + b, ctx + c, host + o);
        }
    }
    if steps == 0 || seqs == 0 {
        return Ok(0.0);
    }
    let batch = seqs.div_ceil(steps);
    let s = ctx.div_ceil(seqs).max(1);
    let off = (host / seqs).min(s);
    if off == 0 {
        return Ok(0.0);
    }
    let cost = one_step(spec, hw, dtype, batch, s)?;
    let split = cost.best_split(s, s - off, Schedule::Chunked, block, Solver::Lp)?;
    Ok(split.recompute as f64 / off as f64)
}

/// `offload`: how many blocks on the host a running batch of `batch`
/// sequences at context `s` can stream each step while the step computes,
/// by the cost model: the step's compute with everything resident, over
/// the link time of one block's K/V of every layer. Under it, admitting a
/// request with its oldest blocks on the host keeps the batch growing
/// without slowing the step below what the device computes.
pub fn offload_admit_blocks(
    spec: &plans::ModelSpec,
    hw: &HardwareProfile,
    dtype: kernels::Dtype,
    block: usize,
    (batch, s): (usize, usize),
) -> Result<usize> {
    let s = s.max(1);
    let cost = one_step(spec, hw, dtype, batch.max(1), s)?;
    let c = cost.step(s, s, 0, 1, Schedule::Transfer);
    let compute = spec.n_layers as f64 * c.compute_busy + c.t_head;
    let per_block = spec.kv_bytes(block, dtype.bytes()) as f64;
    let link = hw.link_seconds(None, per_block, 0.0);
    Ok(match link > 0.0 && compute.is_finite() {
        true => (compute / link).floor().min(1e9) as usize,
        false => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::{link_floor, offload_admit_blocks, offload_share};

    fn reference() -> plans::HardwareProfile {
        let text = include_str!("../../plans/hardware/cpu-reference.json");
        plans::HardwareProfile::parse(std::path::Path::new("cpu-reference.json"), text).unwrap()
    }

    /// The offload share prices the steps a dry run of the scheduler says
    /// will carry an offloaded prefix: none where everything fits, some
    /// recomputation where the link is slow against the step, none where
    /// it is fast (the prefix hides under the compute).
    #[test]
    fn the_offload_share_follows_the_dry_run_and_the_link() {
        let spec = plans::ModelSpec::preset("llama-2-7b-tiny").unwrap();
        let reqs = plans::Requests::at_once(16, 64, 320).unwrap();
        let share = |gbps: f64, capacity: usize| {
            let mut hw = reference();
            for c in [&mut hw.link.h2d_pinned, &mut hw.link.d2h_pinned] {
                *c = plans::BandwidthCurve::constant(plans::Source::Measured, gbps);
            }
            offload_share(&spec, &hw, &reqs, plans::Dtype::F32, 16, (capacity, 32)).unwrap()
        };
        // 16 x 384 tokens in blocks of 16: 384 blocks hold everything.
        assert_eq!(share(0.3, 384), 0.0);
        let slow = share(0.001, 230);
        assert!(slow > 0.0 && slow <= 1.0, "{slow}");
        assert_eq!(share(1000.0, 230), 0.0);
    }

    /// The admission budget is what the link moves under a step: more
    /// blocks on a faster link or a slower step (a bigger batch), none
    /// where one block takes longer than a step.
    #[test]
    fn the_admission_budget_is_what_the_link_hides_under_a_step() {
        let spec = plans::ModelSpec::preset("llama-2-7b-tiny").unwrap();
        let budget = |gbps: f64, batch: usize| {
            let mut hw = reference();
            for c in [&mut hw.link.h2d_pinned, &mut hw.link.d2h_pinned] {
                *c = plans::BandwidthCurve::constant(plans::Source::Measured, gbps);
            }
            offload_admit_blocks(&spec, &hw, plans::Dtype::F32, 16, (batch, 256)).unwrap()
        };
        let (slow, fast) = (budget(0.3, 8), budget(30.0, 8));
        assert!(fast > slow, "{fast} {slow}");
        assert!(budget(0.3, 32) >= slow);
        assert_eq!(budget(1e-6, 1), 0);
    }

    /// The floor prices the link the run had: `--link-gbps` where it paces
    /// one (the profile may have been measured at another rate), else the
    /// profile's; the two directions overlap.
    #[test]
    fn the_link_floor_is_the_slower_direction_at_the_link_the_run_had() {
        let text = include_str!("../../plans/hardware/cpu-reference.json");
        let hw = plans::HardwareProfile::parse(std::path::Path::new("cpu-reference.json"), text)
            .unwrap();
        let c = runtime::PagedCounters {
            bytes_in: 3_000_000_000,
            bytes_out: 500_000_000,
            bytes_x_out: 100_000_000,
            ..Default::default()
        };
        let paced = link_floor(&hw, Some(0.3), &c);
        assert!((paced - 10.0).abs() < 1e-9, "{paced}");
        let profile = link_floor(&hw, None, &c);
        assert!(
            (profile - hw.link.h2d_pinned.seconds(3e9)).abs() < 1e-12,
            "{profile}"
        );
        assert_eq!(link_floor(&hw, Some(1.0), &Default::default()), 0.0);
    }
}
