//! The two-stream simulator: a discrete-event replay of one decode step of a
//! plan, op by op, on a `copy` and a `compute` stream, with durations from the
//! same cost primitives as the plan. It checks the closed-form step time and
//! draws the timeline (`kvpr simulate`).
//!
//! Per layer the copy stream sends the activation chunks, then the K/V; the
//! compute stream recomputes chunk `j` once it has landed (and the stream is
//! free), then runs attention once the K/V have arrived and every chunk is
//! recomputed, then the dense part; the output head follows the last layer. Layer `i+1`'s copies are issued when layer
//! `i`'s K/V are ready; layer 0's start at 0. O(L*c) ops.

use plans::{HardwareProfile, Plan};

use crate::cost::CostModel;
use crate::SchedError;

/// The two streams of the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Copy,
    Compute,
}

/// What an op does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Activation chunk `chunk` of the recomputed range, host to device.
    ActivationCopy { chunk: usize },
    /// The transferred K/V, host to device.
    KvCopy,
    /// K/V projections and RoPE for chunk `chunk`.
    Recompute { chunk: usize },
    /// Decode attention over the whole context.
    Attention,
    /// Output projection and MLP.
    Dense,
    /// The output head after the last layer (drawn in the last layer's row).
    Head,
}

/// One op on one stream, µs from the start of the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimelineOp {
    pub stream: StreamKind,
    pub layer: usize,
    pub kind: OpKind,
    pub start_us: f64,
    pub end_us: f64,
}

/// A simulated decode step.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    /// Every op, in issue order per stream (copy and compute interleaved by layer).
    pub ops: Vec<TimelineOp>,
    /// End of the last op, µs.
    pub simulated_step_us: f64,
    /// The cost model's step time for the plan's split at this context, µs.
    pub predicted_step_us: f64,
    /// Time the copy stream is busy, µs.
    pub copy_busy_us: f64,
    /// Time the compute stream is busy, µs.
    pub compute_busy_us: f64,
}

/// Simulates one decode step of `plan` at `context_len` tokens cached on `hw`.
/// The step's split is the plan's step covering `context_len`, with its resident
/// and recomputed tokens capped at the context.
pub fn simulate(
    plan: &Plan,
    hw: &HardwareProfile,
    context_len: usize,
) -> Result<Timeline, SchedError> {
    let step = plan
        .step_for(context_len)
        .ok_or_else(|| SchedError::NotCovered {
            context: context_len,
            from: plan.steps.first().map_or(0, |s| s.context_len_from),
            to: plan.steps.last().map_or(0, |s| s.context_len_to),
        })?;
    let cm = CostModel::new(&plan.model, hw, &plan.workload)?;
    let s = context_len;
    let g = step.resident_tokens.min(s);
    let l = step.recompute_tokens.min(s - g);
    let cost = cm.step(s, g, l, step.chunks, plan.schedule);
    let c = if l == 0 { 1 } else { step.chunks.max(1) };
    let c = if plan.schedule == plans::Schedule::Chunked {
        c
    } else {
        1
    };
    let chunk_copy = cost.t_x / c as f64 * 1e6;
    let (t_kv, r) = (cost.t_kv * 1e6, cost.r * 1e6);
    let (t_attn, t_dense) = (cost.t_attn * 1e6, cost.t_dense * 1e6);

    let n_layers = cm.n_layers();
    let mut ops = Vec::with_capacity(n_layers * (2 * c + 3));
    let (mut copy_free, mut compute_free) = (0.0f64, 0.0f64);
    // When each layer's attention ended: a layer's copies land in the staging
    // buffer of the layer two before, so they wait for its attention.
    let mut attn_end: Vec<f64> = Vec::with_capacity(n_layers);
    let (mut copy_busy, mut compute_busy) = (0.0, 0.0);
    for layer in 0..n_layers {
        // Copy stream: activation chunks, then K/V; issued right after the
        // previous layer's, once the staging buffer is free (the attention of
        // the layer two before has read it), as the executor issues them.
        let mut t = match layer.checked_sub(2) {
            Some(i) => copy_free.max(attn_end[i]),
            None => copy_free,
        };
        let mut arrived = Vec::with_capacity(c);
        if l > 0 {
            for chunk in 0..c {
                t = push(
                    &mut ops,
                    StreamKind::Copy,
                    layer,
                    OpKind::ActivationCopy { chunk },
                    t,
                    chunk_copy,
                );
                arrived.push(t);
                copy_busy += chunk_copy;
            }
        }
        let kv_arrived = push(&mut ops, StreamKind::Copy, layer, OpKind::KvCopy, t, t_kv);
        copy_busy += t_kv;
        copy_free = kv_arrived;
        // Compute stream: each chunk once it has landed, then attention, then dense.
        for (chunk, &at) in arrived.iter().enumerate() {
            let start = compute_free.max(at);
            compute_free = push(
                &mut ops,
                StreamKind::Compute,
                layer,
                OpKind::Recompute { chunk },
                start,
                r,
            );
            compute_busy += r;
        }
        let recomputed = if l > 0 { compute_free } else { 0.0 };
        let kv_ready = kv_arrived.max(recomputed);
        let start = compute_free.max(kv_ready);
        compute_free = push(
            &mut ops,
            StreamKind::Compute,
            layer,
            OpKind::Attention,
            start,
            t_attn,
        );
        attn_end.push(compute_free);
        compute_free = push(
            &mut ops,
            StreamKind::Compute,
            layer,
            OpKind::Dense,
            compute_free,
            t_dense,
        );
        compute_busy += t_attn + t_dense;
    }
    let t_head = cost.t_head * 1e6;
    push(
        &mut ops,
        StreamKind::Compute,
        n_layers.saturating_sub(1),
        OpKind::Head,
        compute_free,
        t_head,
    );
    compute_busy += t_head;
    let end = ops.iter().map(|o| o.end_us).fold(0.0, f64::max);
    Ok(Timeline {
        ops,
        simulated_step_us: end,
        predicted_step_us: cost.step * 1e6,
        copy_busy_us: copy_busy,
        compute_busy_us: compute_busy,
    })
}

/// Appends an op of `dur` µs starting at `start` µs; returns its end.
fn push(
    ops: &mut Vec<TimelineOp>,
    stream: StreamKind,
    layer: usize,
    kind: OpKind,
    start: f64,
    dur: f64,
) -> f64 {
    ops.push(TimelineOp {
        stream,
        layer,
        kind,
        start_us: start,
        end_us: start + dur,
    });
    start + dur
}
