//! The ops of a ragged decode step, where every sequence of the batch has its
//! own context length: attention over a per-row number of keys, and the
//! scatter of each new token's K/V row into its slot of a paged pool. Each
//! is one call for the whole batch, so a step does not pay an op's dispatch
//! per sequence. Checked here like every other op (see `check.rs`), run by
//! [`crate::device::Device`].

use crate::{check, AttnShape, Backend, DeviceBuf, IdBuf, Result};

impl Backend {
    /// Decode attention over a ragged batch: the layout of
    /// [`Backend::attention`] with one query per row (`a.q_len` must be 1;
    /// `a.q_pos0` is ignored), where row `b` attends key positions
    /// `0 .. lens[lens_off + b]` of its cache rows instead of a causal range
    /// (its query sits at position `lens[lens_off + b] - 1`), or, with a
    /// sliding window `a.window > 0`, the last `a.window` of them.
    /// A length of 0 writes zeros for that row; a length above
    /// `a.kv_capacity` is clamped to it (nothing past a row's cache is read;
    /// the window then ends at the cache's last key).
    /// Grouped-query heads and the f32 softmax as in [`Backend::attention`].
    /// `out` may alias `q`, not `k` or `v`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_ragged(
        &self,
        q: &DeviceBuf,
        k: &DeviceBuf,
        v: &DeviceBuf,
        out: &DeviceBuf,
        a: AttnShape,
        lens: &IdBuf,
        lens_off: usize,
    ) -> Result<()> {
        let op = "attention_ragged";
        let (q_len, kv_len) = check::attention_ragged(&self.name(), &a)?;
        self.range(op, "q", 0, q_len, q)?;
        self.range(op, "k", 0, kv_len, k)?;
        self.range(op, "v", 0, kv_len, v)?;
        self.range(op, "out", 0, q_len, out)?;
        self.range(op, "lens", lens_off, a.batch, lens)?;
        if q_len == 0 {
            return Ok(());
        }
        if out.inner.same(&k.inner) || out.inner.same(&v.inner) {
            return Err(self.shape(op, format!("{a:?}"), "out must not alias k or v"));
        }
        let lens = Some((&lens.inner, lens_off));
        self.kernel()
            .attention(&q.inner, &k.inner, &v.inner, &out.inner, a, lens)
    }

    /// Row `i` of `src` (rows of `width` elements from `src_off`) into row
    /// `idx[idx_off + i]` of `dst`, for `i < rows`, on the compute stream:
    /// `dst[idx[idx_off + i] * width ..][..width] = src[src_off + i * width ..][..width]`.
    /// An index whose row is not all inside `dst` is skipped (nothing is
    /// written for it, and it is no error: indices live on the device). Two
    /// equal indices leave one of their rows, which one is unspecified.
    /// `src` and `dst` must be different buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn scatter_rows(
        &self,
        src: &DeviceBuf,
        src_off: usize,
        dst: &DeviceBuf,
        idx: &IdBuf,
        idx_off: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let op = "scatter_rows";
        let len = check::mul(op, &self.name(), &[rows, width])?;
        self.range(op, "source", src_off, len, src)?;
        self.range(op, "indices", idx_off, rows, idx)?;
        if len == 0 {
            return Ok(());
        }
        if src.inner.same(&dst.inner) {
            return Err(self.shape(
                op,
                format!("{rows} rows of {width}"),
                "src and dst must be different buffers",
            ));
        }
        self.kernel().scatter_rows(
            &src.inner, src_off, &dst.inner, &idx.inner, idx_off, rows, width,
        )
    }
}

#[cfg(test)]
mod tests;
