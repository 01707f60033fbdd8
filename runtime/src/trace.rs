//! Recording a decode step's measured timeline (`plans::TraceStep`) with the
//! backend's own events: a start event on the compute stream when the step
//! begins, then a pair of events around each op on the stream it runs on.
//! Times are read with `Backend::elapsed_us` once the step has finished (its
//! logits are downloaded, so every stream has drained): on the CPU backend
//! they are the streams' clocks, on CUDA the event timer.
//!
//! Only a traced step records anything: the executor asks [`Recorder::mark`]
//! through an `Option`, so an untraced step issues no extra event and no
//! extra wait.

use kernels::{Backend, Event, Stream};
use plans::{TraceOp, TraceOpKind, TraceStep, TraceStream};

use crate::Result;
use plans::Split;

/// An op whose events are recorded but not yet read.
struct Pending {
    stream: Stream,
    layer: Option<usize>,
    kind: TraceOpKind,
    start: Event,
    end: Event,
}

/// The events of one traced step.
pub(crate) struct Recorder {
    step: usize,
    start: Event,
    ops: Vec<Pending>,
}

impl Recorder {
    /// Starts tracing decode step `step`: records the start event.
    pub(crate) fn begin(be: &Backend, step: usize) -> Result<Self> {
        Ok(Recorder {
            step,
            start: be.record(Stream::Compute)?,
            ops: Vec::new(),
        })
    }

    /// The event that opens an op on `stream`.
    pub(crate) fn mark(be: &Backend, stream: Stream) -> Result<Event> {
        Ok(be.record(stream)?)
    }

    /// Closes an op opened by `start` on `stream`: records its end event.
    pub(crate) fn close(
        &mut self,
        be: &Backend,
        start: Event,
        stream: Stream,
        layer: Option<usize>,
        kind: TraceOpKind,
    ) -> Result<()> {
        let end = be.record(stream)?;
        self.ops.push(Pending {
            stream,
            layer,
            kind,
            start,
            end,
        });
        Ok(())
    }

    /// Reads every event (the step must have finished) into a trace step:
    /// ops grouped by stream (copy, compute, writeback), each stream's in the
    /// order it ran them.
    pub(crate) fn finish(self, be: &Backend, sp: Split) -> Result<TraceStep> {
        let mut ops = Vec::with_capacity(self.ops.len());
        for p in &self.ops {
            // Clamped at 0: a timer's rounding must not put an op before the step.
            let t = |e: &Event| -> Result<f64> { Ok(be.elapsed_us(&self.start, e)?.max(0.0)) };
            let (start_us, end_us) = (t(&p.start)?, t(&p.end)?);
            ops.push(TraceOp {
                stream: match p.stream {
                    Stream::Copy => TraceStream::Copy,
                    Stream::Compute => TraceStream::Compute,
                    Stream::Writeback => TraceStream::Writeback,
                },
                layer: p.layer,
                kind: p.kind,
                start_us,
                end_us: end_us.max(start_us),
            });
        }
        ops.sort_by_key(|o| o.stream as u8);
        let step_us = ops.iter().map(|o| o.end_us).fold(0.0, f64::max);
        Ok(TraceStep {
            step: self.step,
            context: sp.s,
            resident_tokens: sp.g,
            recompute_tokens: sp.l,
            transfer_tokens: sp.s - sp.g - sp.l,
            chunks: sp.chunks,
            step_us,
            ops,
        })
    }
}
