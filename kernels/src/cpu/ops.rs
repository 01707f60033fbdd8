//! The CPU compute ops on plain f32 slices. Shapes are checked by the caller
//! (`cpu/mod.rs`); these functions only compute.

use std::ops::Range;

use candle_core::cpu::kernels::VecOps;
use rayon::prelude::*;

use crate::{twin, AttnShape, DynamicNtk};

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

/// `1 / sqrt(mean(row^2) + eps)` (the sum of squares in f64).
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
    1.0 / ((ss / row.len() as f64) as f32 + eps).sqrt()
}

pub(super) fn rmsnorm(x: &[f32], weight: &[f32], out: &mut [f32], dim: usize, eps: f32) {
    if dim == 0 {
        return;
    }
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let inv = inv_rms(xr, eps);
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * g;
        }
    }
}

/// [`rmsnorm`] with `out` = `x`: each row is read whole before it is written.
pub(super) fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], dim: usize, eps: f32) {
    if dim == 0 {
        return;
    }
    for row in x.chunks_exact_mut(dim) {
        let inv = inv_rms(row, eps);
        for (v, &g) in row.iter_mut().zip(weight) {
            *v = *v * inv * g;
        }
    }
}

/// `x[r*dim + j] += bias[j]` over the whole rows of `x`.
pub(super) fn add_bias(x: &mut [f32], bias: &[f32], dim: usize) {
    for row in x.chunks_exact_mut(dim) {
        add_assign(row, bias);
    }
}

/// The CPU side of a [`crate::RopeFreqs`]: the inverse frequencies and
/// attention factor, and `(cos, sin)` of [`twin::rope_angle`] times the
/// factor for positions `0..len`, grown on demand. Angles are computed in
/// f64 once per position, so a RoPE call is a table read instead of
/// `rows * head_dim / 2` trigonometric evaluations; the values are exactly
/// the kernel's and the twin's (`(f32)cos(a) * factor` in f32).
pub(super) struct RopeTable {
    inv_freq: Vec<f32>,
    factor: f32,
    dynamic: Option<DynamicNtk>,
    /// `[position][frequency]`.
    cos_sin: Vec<(f32, f32)>,
}

impl RopeTable {
    pub(super) fn new(inv_freq: &[f32], factor: f32, dynamic: Option<DynamicNtk>) -> RopeTable {
        RopeTable {
            inv_freq: inv_freq.to_vec(),
            factor,
            dynamic,
            cos_sin: Vec::new(),
        }
    }

    /// Makes the table cover `positions`.
    pub(super) fn ensure(&mut self, positions: &[u32]) {
        let half = self.inv_freq.len();
        let need = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
        let have = self.cos_sin.len().checked_div(half).unwrap_or(0);
        if half == 0 || need <= have {
            return;
        }
        self.cos_sin.reserve((need - have) * half);
        for pos in have..need {
            for f in 0..half {
                let a = twin::rope_angle(pos as u32, f, &self.inv_freq, self.dynamic.as_ref());
                let (c, s) = (a.cos() as f32, a.sin() as f32);
                self.cos_sin.push((c * self.factor, s * self.factor));
            }
        }
    }

    fn row(&self, pos: u32) -> &[(f32, f32)] {
        let half = self.inv_freq.len();
        let at = pos as usize * half;
        &self.cos_sin[at..at + half]
    }
}

/// Rotary embedding in place on rows of `n_heads` heads of `2 * table's
/// frequencies`; `table` must cover `positions` (see [`RopeTable::ensure`]).
pub(super) fn rope(
    x: &mut [f32],
    row_stride: usize,
    n_heads: usize,
    positions: &[u32],
    table: &RopeTable,
    interleaved: bool,
) {
    let half = table.inv_freq.len();
    let head_dim = 2 * half;
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

/// GQA attention where query `j` of row `b` attends the keys `keys(b, j)`
/// (none: zeros); every (row, query, head) is one parallel task.
pub(super) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    a: &AttnShape,
    keys: impl Fn(usize, usize) -> Range<usize> + Sync,
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
        let keys = keys(b, j);
        o.fill(0.0);
        if keys.is_empty() {
            return;
        }
        let base = b * a.kv_capacity * kv_dim + kvh * hd;
        let at = |t: usize| base + t * kv_dim..base + t * kv_dim + hd;
        let mut scores: Vec<f32> = keys.clone().map(|t| dot(qv, &k[at(t)]) * a.scale).collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        for (t, &p) in keys.zip(&scores) {
            let p = p * inv;
            for (ov, &vv) in o.iter_mut().zip(&v[at(t)]) {
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
