//! The compute ops of [`Backend`]: each checks its call once (shapes, ranges,
//! aliasing, which backend a buffer or table belongs to; see `check.rs`),
//! then hands it to the [`crate::device::Device`] on the compute stream.
//! The ragged decode step's ops are in `ragged.rs`.

use crate::{
    check, AttnShape, Backend, DeviceBuf, DynamicNtk, IdBuf, Result, RopeFreqs, RopeShape, Rows,
    SampleArgs,
};

impl Backend {
    /// `out[m, n] = x[m, k] . w[n, k]^T` (w row-major `[n, k]`, like `nn.Linear`),
    /// at element offsets `x_off`, `w_off`, `out_off`. On the compute stream.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        x: &DeviceBuf,
        x_off: usize,
        w: &DeviceBuf,
        w_off: usize,
        out: &DeviceBuf,
        out_off: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let d = self.name();
        let op = "gemm";
        self.range(op, "x", x_off, check::mul(op, &d, &[m, k])?, x)?;
        self.range(op, "w", w_off, check::mul(op, &d, &[n, k])?, w)?;
        self.range(op, "out", out_off, check::mul(op, &d, &[m, n])?, out)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        self.kernel().gemm(
            &x.inner, x_off, &w.inner, w_off, &out.inner, out_off, m, n, k,
        )
    }

    /// RMSNorm of `rows` rows of `dim`: `out = x / sqrt(mean(x^2) + eps) * weight`.
    /// `out` may alias `x`. [`Backend::rmsnorm_at`] from offset 0 in both.
    pub fn rmsnorm(
        &self,
        x: &DeviceBuf,
        weight: &DeviceBuf,
        out: &DeviceBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_at(x, 0, weight, out, 0, rows, dim, eps)
    }

    /// RMSNorm of `rows` rows of `dim` read from `x[x_off..]`, written to
    /// `out[out_off..]`, on the compute stream: per row,
    /// `out = x / sqrt(mean(x^2) + eps) * weight[..dim]`. `out` may be `x` at
    /// the same offset (in place; Qwen3's per-head q/k norm runs on
    /// `tokens * heads` rows of `head_dim` inside the q or k buffer), but not
    /// `x` at another offset whose rows overlap, nor the weights.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_at(
        &self,
        x: &DeviceBuf,
        x_off: usize,
        weight: &DeviceBuf,
        out: &DeviceBuf,
        out_off: usize,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let op = "rmsnorm";
        let len = check::mul(op, &self.name(), &[rows, dim])?;
        self.range(op, "x", x_off, len, x)?;
        self.range(op, "weight", 0, dim, weight)?;
        self.range(op, "out", out_off, len, out)?;
        if len == 0 {
            return Ok(());
        }
        let shape = || format!("rows={rows} dim={dim} x_off={x_off} out_off={out_off}");
        let overlap = x_off < out_off + len && out_off < x_off + len;
        if out.inner.same(&x.inner) && x_off != out_off && overlap {
            return Err(self.shape(
                op,
                shape(),
                "out may alias x only at the same offset (in place)",
            ));
        }
        if weight.inner.same(&out.inner) {
            return Err(self.shape(op, shape(), "out must not alias the weights"));
        }
        self.kernel().rmsnorm(
            &x.inner,
            x_off,
            &weight.inner,
            &out.inner,
            out_off,
            rows,
            dim,
            eps,
        )
    }

    /// `x[x_off + r*dim + j] += bias[j]` for `r < rows`, `j < dim`, in place
    /// on the compute stream (f32 arithmetic, stored in the compute dtype):
    /// the q/k/v biases of Qwen2-style attention after their projection.
    /// `bias` must hold at least `dim` elements and be another buffer than `x`.
    pub fn add_bias(
        &self,
        x: &DeviceBuf,
        x_off: usize,
        bias: &DeviceBuf,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let op = "add_bias";
        let len = check::mul(op, &self.name(), &[rows, dim])?;
        self.range(op, "x", x_off, len, x)?;
        self.range(op, "bias", 0, dim, bias)?;
        if len == 0 {
            return Ok(());
        }
        if bias.inner.same(&x.inner) {
            return Err(self.shape(
                op,
                format!("rows={rows} dim={dim}"),
                "the bias must be another buffer than x",
            ));
        }
        self.kernel()
            .add_bias(&x.inner, x_off, &bias.inner, rows, dim)
    }

    /// A RoPE frequency table on this backend's device: `inv_freq` (one per
    /// pair of a head, so `head_dim / 2` of them) and the factor cos and sin
    /// are scaled by. Every frequency must be finite and `>= 0`, the factor
    /// finite and `> 0`, and the table not empty. Synchronous; made once at
    /// load, read by every [`Backend::rope`] call.
    pub fn rope_freqs(&self, inv_freq: &[f32], attention_factor: f32) -> Result<RopeFreqs> {
        self.make_rope_freqs(inv_freq, attention_factor, None)
    }

    /// [`Backend::rope_freqs`] with dynamic NTK scaling: each row turns by
    /// the table rescaled for its position (see [`DynamicNtk`]). One table
    /// per generation, since `dynamic.min_len` is its prompt's length. The
    /// factor must be finite and `>= 1`, `max_pos >= 1`, and the table hold
    /// at least 2 frequencies (`head_dim > 2`).
    pub fn rope_freqs_dynamic(
        &self,
        inv_freq: &[f32],
        attention_factor: f32,
        dynamic: DynamicNtk,
    ) -> Result<RopeFreqs> {
        self.make_rope_freqs(inv_freq, attention_factor, Some(dynamic))
    }

    fn make_rope_freqs(
        &self,
        inv_freq: &[f32],
        attention_factor: f32,
        dynamic: Option<DynamicNtk>,
    ) -> Result<RopeFreqs> {
        let shape = || {
            format!(
                "{} inverse frequencies, attention factor {attention_factor}, dynamic {dynamic:?}",
                inv_freq.len()
            )
        };
        if let Some(d) = dynamic {
            if !(d.factor.is_finite() && d.factor >= 1.0) {
                return Err(self.shape(
                    "rope_freqs",
                    shape(),
                    "the dynamic NTK factor must be finite and >= 1",
                ));
            }
            if d.max_pos == 0 || inv_freq.len() < 2 {
                return Err(self.shape(
                    "rope_freqs",
                    shape(),
                    "dynamic NTK needs max_pos >= 1 and head_dim > 2",
                ));
            }
        }
        if inv_freq.is_empty() {
            return Err(self.shape("rope_freqs", shape(), "the table is empty"));
        }
        if let Some((i, f)) = inv_freq
            .iter()
            .enumerate()
            .find(|(_, f)| !(f.is_finite() && **f >= 0.0))
        {
            return Err(self.shape(
                "rope_freqs",
                shape(),
                &format!("inverse frequency {i} is {f}: each must be finite and >= 0"),
            ));
        }
        if !(attention_factor.is_finite() && attention_factor > 0.0) {
            return Err(self.shape(
                "rope_freqs",
                shape(),
                "the attention factor must be finite and > 0",
            ));
        }
        let inner = self.dev.rope_freqs(inv_freq, attention_factor, dynamic)?;
        Ok(RopeFreqs {
            len: inv_freq.len(),
            attention_factor,
            dynamic,
            owner: self.owner(),
            inner,
        })
    }

    /// Rotary embedding in place on `r.rows` rows of `x` from `x_off`; row `i`
    /// is at position `pos[pos_off + i]` and turns by `freqs` (which must be
    /// this backend's, with `r.head_dim / 2` frequencies). Positions past
    /// 2^22 are an error on the CPU backend.
    pub fn rope(
        &self,
        x: &DeviceBuf,
        x_off: usize,
        pos: &IdBuf,
        pos_off: usize,
        freqs: &RopeFreqs,
        r: RopeShape,
    ) -> Result<()> {
        let span = check::rope(&self.name(), &r, freqs.len)?;
        self.owns("rope", "frequency table", freqs.owner)?;
        self.range("rope", "x", x_off, span, x)?;
        self.range("rope", "positions", pos_off, r.rows, pos)?;
        if span == 0 {
            return Ok(());
        }
        self.kernel()
            .rope(&x.inner, x_off, &pos.inner, pos_off, freqs, r)
    }

    /// Causal grouped-query attention, with a sliding window if `a.window >
    /// 0`; see [`AttnShape`]. Softmax in f32. `out` may alias `q`, not `k`
    /// or `v`.
    pub fn attention(
        &self,
        q: &DeviceBuf,
        k: &DeviceBuf,
        v: &DeviceBuf,
        out: &DeviceBuf,
        a: AttnShape,
    ) -> Result<()> {
        let op = "attention";
        let (q_len, kv_len) = check::attention(&self.name(), &a)?;
        self.range(op, "q", 0, q_len, q)?;
        self.range(op, "k", 0, kv_len, k)?;
        self.range(op, "v", 0, kv_len, v)?;
        self.range(op, "out", 0, q_len, out)?;
        if q_len == 0 {
            return Ok(());
        }
        if out.inner.same(&k.inner) || out.inner.same(&v.inner) {
            return Err(self.shape(op, format!("{a:?}"), "out must not alias k or v"));
        }
        self.kernel()
            .attention(&q.inner, &k.inner, &v.inner, &out.inner, a, None)
    }

    /// `out = silu(gate) * up` over `len` elements. `out` may alias an input.
    pub fn silu_gate(
        &self,
        gate: &DeviceBuf,
        up: &DeviceBuf,
        out: &DeviceBuf,
        len: usize,
    ) -> Result<()> {
        self.range("silu_gate", "gate", 0, len, gate)?;
        self.range("silu_gate", "up", 0, len, up)?;
        self.range("silu_gate", "out", 0, len, out)?;
        if len == 0 {
            return Ok(());
        }
        self.kernel()
            .silu_gate(&gate.inner, &up.inner, &out.inner, len)
    }

    /// `out = a + b` over `len` elements. `out` may alias `a` (or `b`).
    pub fn add(&self, a: &DeviceBuf, b: &DeviceBuf, out: &DeviceBuf, len: usize) -> Result<()> {
        self.range("add", "a", 0, len, a)?;
        self.range("add", "b", 0, len, b)?;
        self.range("add", "out", 0, len, out)?;
        if len == 0 {
            return Ok(());
        }
        self.kernel().add(&a.inner, &b.inner, &out.inner, len)
    }

    /// A strided copy on the compute stream, as a kernel: `rows` runs of
    /// `width` elements (the K/V scatter into staging). `src` and `dst` must
    /// be different buffers.
    pub fn scatter(
        &self,
        src: &DeviceBuf,
        src_off: usize,
        dst: &DeviceBuf,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()> {
        self.rows("scatter", "source", src_off, rows, rows.src_pitch, src)?;
        self.rows("scatter", "destination", dst_off, rows, rows.dst_pitch, dst)?;
        if rows.elements() == 0 {
            return Ok(());
        }
        self.kernel()
            .scatter(&src.inner, src_off, &dst.inner, dst_off, rows)
    }

    /// Row `ids[ids_off + i]` of `table` (`[vocab, dim]`) into row `i` of
    /// `out`, for `rows` rows. An id outside the vocabulary gives zeros (ids
    /// from the host are checked by [`Backend::write_ids`]'s caller).
    pub fn embedding(
        &self,
        table: &DeviceBuf,
        ids: &IdBuf,
        ids_off: usize,
        out: &DeviceBuf,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        self.gather_rows(table, ids, ids_off, out, 0, rows, dim)
    }

    /// [`Backend::embedding`] into `out` from element `out_off`: rows of
    /// `dim` elements gathered by id (the paged cache's blocks by block table).
    /// An id of [`SKIP_ROW`](crate::SKIP_ROW) leaves its row of `out` as it was (the padding of
    /// a ragged batch's tables, so one call gathers the whole batch).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows(
        &self,
        table: &DeviceBuf,
        ids: &IdBuf,
        ids_off: usize,
        out: &DeviceBuf,
        out_off: usize,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let len = check::mul("embedding", &self.name(), &[rows, dim])?;
        self.owns("embedding", "table", table.owner)?;
        self.range("embedding", "ids", ids_off, rows, ids)?;
        self.range("embedding", "out", out_off, len, out)?;
        if len == 0 {
            return Ok(());
        }
        if table.len < dim {
            return Err(self.shape(
                "embedding",
                format!("table of {} elements, dim {dim}", table.len),
                "the table holds no row",
            ));
        }
        self.kernel().embedding(
            &table.inner,
            &ids.inner,
            ids_off,
            &out.inner,
            out_off,
            rows,
            dim,
        )
    }

    /// The index of the largest value of each of `rows` rows of `cols` (the
    /// first on ties; NaN never wins) into `out[out_off..]`.
    pub fn argmax(
        &self,
        x: &DeviceBuf,
        rows: usize,
        cols: usize,
        out: &IdBuf,
        out_off: usize,
    ) -> Result<()> {
        self.rows_of("argmax", x, rows, cols, out, out_off)?;
        self.kernel()
            .argmax(&x.inner, rows, cols, &out.inner, out_off)
    }

    /// One draw per row of `x` (`[rows, cols]` logits) into `out[out_off..]`;
    /// see [`SampleArgs`].
    pub fn sample(
        &self,
        x: &DeviceBuf,
        rows: usize,
        cols: usize,
        out: &IdBuf,
        out_off: usize,
        s: SampleArgs,
    ) -> Result<()> {
        self.rows_of("sample", x, rows, cols, out, out_off)?;
        let temperature_ok = s.inv_temperature.is_finite() && s.inv_temperature > 0.0;
        let top_p_ok = s.top_p > 0.0 && s.top_p <= 1.0;
        if !(temperature_ok && top_p_ok) {
            return Err(self.shape(
                "sample",
                format!("{s:?}"),
                "inv_temperature must be finite and > 0, top_p in (0, 1]",
            ));
        }
        self.kernel()
            .sample(&x.inner, rows, cols, &out.inner, out_off, s)
    }

    fn rows_of(
        &self,
        op: &'static str,
        x: &DeviceBuf,
        rows: usize,
        cols: usize,
        out: &IdBuf,
        out_off: usize,
    ) -> Result<()> {
        let len = check::mul(op, &self.name(), &[rows, cols])?;
        self.range(op, "x", 0, len, x)?;
        self.range(op, "out", out_off, rows, out)?;
        if cols == 0 || cols > u32::MAX as usize {
            return Err(self.shape(
                op,
                format!("[{rows}, {cols}]"),
                "rows must hold 1..2^32 values",
            ));
        }
        Ok(())
    }
}
