//! The boundary both backends implement. [`crate::Backend`] has checked every
//! range and shape before a call gets here, so an implementation only runs
//! it; each may still refuse what its device cannot do (a typed error).
//!
//! Buffers arrive as the crate's handle enums; an implementation takes its
//! own variant and reports [`crate::KernelError::WrongBackend`] for the other.

use crate::{
    AttnShape, BufInner, Dtype, DynamicNtk, EventInner, FreqsInner, HostInner, IdInner, Result,
    RopeFreqs, RopeShape, Rows, SampleArgs, Stream,
};

pub(crate) trait Device: Send + Sync {
    /// Long name, e.g. `cuda:0 (NVIDIA H100, f16)`.
    fn name(&self) -> String;
    /// Short name for errors: `cpu`, `cuda:0`.
    fn short_name(&self) -> String;
    fn dtype(&self) -> Dtype;
    fn link_gbps(&self) -> Option<f64> {
        None
    }
    /// Device memory free now, in bytes, where the device has memory of its
    /// own (`None`: the device is host memory).
    fn free_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn alloc(&self, len: usize) -> Result<BufInner>;
    fn upload(&self, data: &[f32]) -> Result<BufInner>;
    /// [`Device::upload`] of a vector the caller gives up (the CPU backend
    /// keeps it as it is instead of copying it).
    fn upload_owned(&self, data: Vec<f32>) -> Result<BufInner> {
        self.upload(&data)
    }
    /// A buffer of `bytes.len() / src.bytes()` values stored as `src`
    /// (whole values, checked by `Backend`), converted to the device's
    /// dtype.
    fn upload_stored(&self, bytes: &[u8], src: Dtype) -> Result<BufInner>;
    fn download(&self, buf: &BufInner, off: usize, len: usize) -> Result<Vec<f32>>;
    fn alloc_ids(&self, len: usize) -> Result<IdInner>;
    fn write_ids(&self, dst: &IdInner, off: usize, ids: &[u32]) -> Result<()>;
    fn read_ids(&self, src: &IdInner, off: usize, len: usize) -> Result<Vec<u32>>;
    /// A host buffer and whether it is page-locked.
    fn alloc_host(&self, len: usize, pinned: bool) -> Result<(HostInner, bool)>;
    fn host_write(&self, dst: &HostInner, off: usize, data: &[f32]) -> Result<()>;
    fn host_read(&self, src: &HostInner, off: usize, len: usize) -> Result<Vec<f32>>;

    #[allow(clippy::too_many_arguments)]
    fn copy_h2d(
        &self,
        stream: Stream,
        src: &HostInner,
        src_off: usize,
        dst: &BufInner,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn copy_d2h(
        &self,
        stream: Stream,
        src: &BufInner,
        src_off: usize,
        dst: &HostInner,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn copy_d2d(
        &self,
        stream: Stream,
        src: &BufInner,
        src_off: usize,
        dst: &BufInner,
        dst_off: usize,
        len: usize,
    ) -> Result<()>;

    fn record(&self, stream: Stream) -> Result<EventInner>;
    fn wait(&self, stream: Stream, ev: &EventInner) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    fn elapsed_us(&self, start: &EventInner, end: &EventInner) -> Result<f64>;
    #[cfg(test)]
    fn inject_panic(&self, _stream: Stream, _message: &'static str) -> Result<()> {
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        x: &BufInner,
        x_off: usize,
        w: &BufInner,
        w_off: usize,
        out: &BufInner,
        out_off: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()>;
    /// [`crate::Backend::rmsnorm_at`]: `out` is `x` at the same offset or
    /// does not overlap it.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm(
        &self,
        x: &BufInner,
        x_off: usize,
        weight: &BufInner,
        out: &BufInner,
        out_off: usize,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// [`crate::Backend::add_bias`]: `bias` is another buffer than `x`.
    fn add_bias(
        &self,
        x: &BufInner,
        x_off: usize,
        bias: &BufInner,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    /// A frequency table (checked: not empty, finite, factor > 0).
    fn rope_freqs(
        &self,
        inv_freq: &[f32],
        attention_factor: f32,
        dynamic: Option<DynamicNtk>,
    ) -> Result<FreqsInner>;
    /// RoPE with `freqs`, whose length is `r.head_dim / 2`.
    fn rope(
        &self,
        x: &BufInner,
        x_off: usize,
        pos: &IdInner,
        pos_off: usize,
        freqs: &RopeFreqs,
        r: RopeShape,
    ) -> Result<()>;
    /// Causal attention ([`crate::Backend::attention`]) for `lens: None`; for
    /// `Some((lens, off))` ([`crate::Backend::attention_ragged`]), `a.q_len ==
    /// 1` and row `b` attends keys `0 .. n` with `n = min(lens[off + b],
    /// a.kv_capacity)`. Both with `a.window` (see [`crate::AttnShape`]; for a
    /// ragged row, the last `window` of its `n` keys).
    fn attention(
        &self,
        q: &BufInner,
        k: &BufInner,
        v: &BufInner,
        out: &BufInner,
        a: AttnShape,
        lens: Option<(&IdInner, usize)>,
    ) -> Result<()>;
    fn silu_gate(&self, gate: &BufInner, up: &BufInner, out: &BufInner, len: usize) -> Result<()>;
    fn add(&self, a: &BufInner, b: &BufInner, out: &BufInner, len: usize) -> Result<()>;
    fn scatter(
        &self,
        src: &BufInner,
        src_off: usize,
        dst: &BufInner,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()>;
    /// [`crate::Backend::scatter_rows`]: `src` and `dst` are different
    /// buffers; an index whose row is not all inside `dst` is skipped.
    #[allow(clippy::too_many_arguments)]
    fn scatter_rows(
        &self,
        src: &BufInner,
        src_off: usize,
        dst: &BufInner,
        idx: &IdInner,
        idx_off: usize,
        rows: usize,
        width: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn embedding(
        &self,
        table: &BufInner,
        ids: &IdInner,
        ids_off: usize,
        out: &BufInner,
        out_off: usize,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    fn argmax(
        &self,
        x: &BufInner,
        rows: usize,
        cols: usize,
        out: &IdInner,
        out_off: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        x: &BufInner,
        rows: usize,
        cols: usize,
        out: &IdInner,
        out_off: usize,
        s: SampleArgs,
    ) -> Result<()>;
}
