//! The CPU compute ops on plain f32 slices. Shapes are checked by the caller
//! (`cpu/mod.rs`); these functions only compute.

use candle_core::cpu::kernels::VecOps;
use rayon::prelude::*;

use crate::AttnShape;

/// `out[m, n] = x[m, k] . w[n, k]^T`, on the slices in place (no copy of `w`).
pub(super) fn gemm(x: &[f32], w: &[f32], out: &mut [f32], m: usize, n: usize, k: usize) {
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    // Small products are not worth waking the pool for.
    let parallelism = if threads > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices hold exactly m*k, n*k and m*n elements (checked by
    // the caller), and the strides below address only those: x is row-major
    // [m, k] (row stride k, column stride 1), w^T is [k, n] read from the
    // row-major [n, k] weights (row stride 1, column stride k), out is
    // row-major [m, n]. `read_dst = false`: out is overwritten, not accumulated.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Dot product through candle-core's SIMD kernel.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let mut r = 0.0f32;
    // SAFETY: both pointers are valid for `len` reads; `r` is a valid f32 slot.
    unsafe { <f32 as VecOps>::vec_dot(a.as_ptr(), b.as_ptr(), &mut r, len) };
    r
}

pub(super) fn rmsnorm(x: &[f32], weight: &[f32], out: &mut [f32], dim: usize, eps: f32) {
    if dim == 0 {
        return;
    }
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / ((ss / dim as f64) as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * g;
        }
    }
}

/// `(cos, sin)` of `pos * inv_freq[i]` for positions `0..len` and the `head_dim / 2`
/// frequencies of one `(theta, head_dim)`. Angles are computed in f64 once per
/// position (as the per-call loop used to), so a RoPE call is a table read
/// instead of `rows * head_dim / 2` trigonometric evaluations.
#[derive(Default)]
pub(super) struct RopeTable {
    theta: f32,
    head_dim: usize,
    /// `[position][frequency]`.
    cos_sin: Vec<(f32, f32)>,
}

impl RopeTable {
    /// Makes the table cover `positions` for `(theta, head_dim)`; a different
    /// `(theta, head_dim)` starts it afresh.
    pub(super) fn ensure(&mut self, theta: f32, head_dim: usize, positions: &[u32]) {
        let half = head_dim / 2;
        if self.theta != theta || self.head_dim != head_dim {
            *self = RopeTable {
                theta,
                head_dim,
                cos_sin: Vec::new(),
            };
        }
        let need = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
        let have = self.cos_sin.len().checked_div(half).unwrap_or(0);
        if half == 0 || need <= have {
            return;
        }
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        self.cos_sin.reserve((need - have) * half);
        for pos in have..need {
            for f in &inv_freq {
                let a = pos as f64 * f;
                self.cos_sin.push((a.cos() as f32, a.sin() as f32));
            }
        }
    }

    fn row(&self, pos: u32) -> &[(f32, f32)] {
        let half = self.head_dim / 2;
        let at = pos as usize * half;
        &self.cos_sin[at..at + half]
    }
}

/// Rotary embedding in place; `table` must cover `positions` (see [`RopeTable::ensure`]).
pub(super) fn rope(
    x: &mut [f32],
    row_stride: usize,
    n_heads: usize,
    positions: &[u32],
    table: &RopeTable,
    interleaved: bool,
) {
    let head_dim = table.head_dim;
    let half = head_dim / 2;
    for (r, &pos) in positions.iter().enumerate() {
        let cs = table.row(pos);
        let row = &mut x[r * row_stride..r * row_stride + n_heads * head_dim];
        for head in row.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = if interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

/// GQA attention where query `j` of row `b` attends keys `0 .. keys(b, j)`
/// (no key: zeros); every (row, query, head) is one parallel task.
pub(super) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    a: &AttnShape,
    keys: impl Fn(usize, usize) -> usize + Sync,
) {
    let hd = a.head_dim;
    if hd == 0 || a.n_heads == 0 {
        return;
    }
    let kv_dim = a.n_kv_heads * hd;
    let group = a.n_heads / a.n_kv_heads;
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let h = idx % a.n_heads;
        let j = (idx / a.n_heads) % a.q_len;
        let b = idx / (a.n_heads * a.q_len);
        let kvh = h / group;
        let qv = &q[idx * hd..idx * hd + hd];
        let n_keys = keys(b, j);
        if n_keys == 0 {
            o.fill(0.0);
            return;
        }
        let base = b * a.kv_capacity * kv_dim + kvh * hd;
        let mut scores: Vec<f32> = (0..n_keys)
            .map(|t| dot(qv, &k[base + t * kv_dim..base + t * kv_dim + hd]) * a.scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let vr = &v[base + t * kv_dim..base + t * kv_dim + hd];
            let p = p * inv;
            for (ov, &vv) in o.iter_mut().zip(vr) {
                *ov += p * vv;
            }
        }
    });
}

pub(super) fn silu_gate(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

pub(super) fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    <f32 as VecOps>::vec_add(a, b, out);
}

/// Row `i` of `src` (rows of `width`) into row `idx[i]` of `dst`; an index
/// whose row is not all inside `dst` is skipped.
pub(super) fn scatter_rows(src: &[f32], dst: &mut [f32], idx: &[u32], width: usize) {
    for (row, &r) in src.chunks_exact(width).zip(idx) {
        let start = r as usize * width;
        if let Some(d) = dst.get_mut(start..start + width) {
            d.copy_from_slice(row);
        }
    }
}

pub(super) fn add_assign(out: &mut [f32], b: &[f32]) {
    for (o, &v) in out.iter_mut().zip(b) {
        *o += v;
    }
}
