//! The checks [`crate::Backend`] makes before any backend sees a call: one
//! place, so the CPU and CUDA backends cannot disagree on what is valid.

use crate::{AttnShape, KernelError, Result, RopeShape, Rows};

/// Positions RoPE accepts (a model's context is far shorter).
pub(crate) const MAX_POSITION: u32 = 1 << 22;

/// Checks `off..off+len` lies within `buf_len`; the error names op and buffer.
pub(crate) fn range(
    op: &'static str,
    device: &str,
    what: &'static str,
    off: usize,
    len: usize,
    buf_len: usize,
) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= buf_len => Ok(()),
        end => Err(KernelError::OutOfRange {
            op,
            device: device.to_string(),
            what,
            off,
            end: end.unwrap_or(usize::MAX),
            buf_len,
        }),
    }
}

/// Checks a strided block (`r.rows` runs of `r.width`, `pitch` apart from `off`).
pub(crate) fn rows(
    op: &'static str,
    device: &str,
    what: &'static str,
    off: usize,
    r: Rows,
    pitch: usize,
    buf_len: usize,
) -> Result<()> {
    if r.rows == 0 || r.width == 0 {
        return Ok(());
    }
    if r.rows > 1 && pitch < r.width {
        return Err(KernelError::Shape {
            op,
            device: device.to_string(),
            shape: format!("{r:?}"),
            reason: format!("the {what}'s pitch is narrower than a row, so rows would overlap"),
        });
    }
    let span = mul(op, device, &[r.rows - 1, pitch])?
        .checked_add(r.width)
        .ok_or_else(|| overflow(op, device, &format!("{r:?}")))?;
    range(op, device, what, off, span, buf_len)
}

/// The product of `dims`, with overflow reported as a shape error.
pub(crate) fn mul(op: &'static str, device: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| overflow(op, device, &format!("{dims:?}")))
}

fn overflow(op: &'static str, device: &str, shape: &str) -> KernelError {
    KernelError::Shape {
        op,
        device: device.to_string(),
        shape: shape.to_string(),
        reason: "size overflows".into(),
    }
}

/// Checks a RoPE shape against a table of `n_freqs` frequencies; returns
/// the elements it spans from its first row.
pub(crate) fn rope(device: &str, r: &RopeShape, n_freqs: usize) -> Result<usize> {
    let bad = |reason: String| KernelError::Shape {
        op: "rope",
        device: device.to_string(),
        shape: format!(
            "rows={} row_stride={} n_heads={} head_dim={}",
            r.rows, r.row_stride, r.n_heads, r.head_dim
        ),
        reason,
    };
    if !r.head_dim.is_multiple_of(2) {
        return Err(bad("head_dim must be even".into()));
    }
    if n_freqs != r.head_dim / 2 {
        return Err(bad(format!(
            "the frequency table holds {n_freqs} frequencies, not head_dim / 2 = {}",
            r.head_dim / 2
        )));
    }
    let width = mul("rope", device, &[r.n_heads, r.head_dim])?;
    if r.rows == 0 || width == 0 {
        return Ok(0);
    }
    if width > r.row_stride {
        return Err(bad("n_heads * head_dim is wider than row_stride".into()));
    }
    mul("rope", device, &[r.rows - 1, r.row_stride])?
        .checked_add(width)
        .ok_or_else(|| bad("size overflows".into()))
}

/// Checks an attention shape; returns the elements of `q` (= of `out`) and of `k` (= of `v`).
pub(crate) fn attention(device: &str, a: &AttnShape) -> Result<(usize, usize)> {
    let sizes = attention_common("attention", device, a)?;
    let end = a.q_pos0.checked_add(a.q_len);
    if a.q_len > 0 && end.is_none_or(|e| e > a.kv_capacity) {
        let last = match end {
            Some(e) => (e - 1).to_string(),
            None => "past 2^64".into(),
        };
        return Err(attn_shape(
            "attention",
            device,
            a,
            format!(
                "queries reach position {last} but the cache holds {} positions",
                a.kv_capacity
            ),
        ));
    }
    Ok(sizes)
}

/// Checks a ragged attention shape (one query per row, `q_pos0` unused);
/// returns the elements of `q` (= of `out`) and of `k` (= of `v`).
pub(crate) fn attention_ragged(device: &str, a: &AttnShape) -> Result<(usize, usize)> {
    let op = "attention_ragged";
    if a.q_len != 1 {
        return Err(attn_shape(
            op,
            device,
            a,
            format!("q_len must be 1 (one query per row), not {}", a.q_len),
        ));
    }
    attention_common(op, device, a)
}

fn attn_shape(op: &'static str, device: &str, a: &AttnShape, reason: String) -> KernelError {
    KernelError::Shape {
        op,
        device: device.to_string(),
        shape: format!("{a:?}"),
        reason,
    }
}

/// The sliding window as the ops apply it: 0 (none) for no window and for
/// one at least as long as the cache, which hides no key a query can see
/// (a query's position is below `kv_capacity`). Any `window` is valid.
pub(crate) fn window(a: &AttnShape) -> usize {
    if a.window >= a.kv_capacity {
        0
    } else {
        a.window
    }
}

/// What both attention ops require of heads, head size, scale and sizes.
fn attention_common(op: &'static str, device: &str, a: &AttnShape) -> Result<(usize, usize)> {
    let bad = |reason: String| attn_shape(op, device, a, reason);
    if a.n_kv_heads == 0 || !a.n_heads.is_multiple_of(a.n_kv_heads) {
        return Err(bad("n_heads must be a multiple of n_kv_heads".into()));
    }
    if a.head_dim == 0 || a.head_dim > 256 || !a.head_dim.is_multiple_of(2) {
        return Err(bad("head_dim must be even and at most 256".into()));
    }
    if !a.scale.is_finite() {
        return Err(bad("scale is not finite".into()));
    }
    let q = mul(op, device, &[a.batch, a.q_len, a.n_heads, a.head_dim])?;
    let kv = mul(
        op,
        device,
        &[a.batch, a.kv_capacity, a.n_kv_heads, a.head_dim],
    )?;
    if q.max(kv) > i32::MAX as usize {
        return Err(bad("more than 2^31 elements".into()));
    }
    Ok((q, kv))
}
