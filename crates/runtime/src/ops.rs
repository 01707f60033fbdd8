//! Plain f32 host implementations of the forward's element-wise ops, with the
//! shapes of the `kernels` backend ops. The reference forward runs on them;
//! GEMMs go through candle-core (`Linear`).

use candle_core::{Device, Tensor};

use crate::{Result, RuntimeError};

/// A weight matrix `[out, in]` held as a candle tensor for fast GEMMs.
pub(crate) struct Linear {
    w: Tensor,
    out: usize,
    inp: usize,
}

impl Linear {
    pub fn new(w: &[f32], out: usize, inp: usize, name: &str) -> Result<Self> {
        let w = Tensor::from_slice(w, (out, inp), &Device::Cpu)
            .map_err(|e| RuntimeError::compute(name, None, e))?;
        Ok(Linear { w, out, inp })
    }

    /// `y[m, out] = x[m, in] · W^T`.
    pub fn forward(&self, x: &[f32], m: usize, layer: Option<usize>) -> Result<Vec<f32>> {
        let err = |e: candle_core::Error| RuntimeError::compute("gemm", layer, e);
        if x.len() != m * self.inp {
            return Err(RuntimeError::compute(
                "gemm",
                layer,
                format!("input has {} values, expected {m}x{}", x.len(), self.inp),
            ));
        }
        let xt = Tensor::from_slice(x, (m, self.inp), &Device::Cpu).map_err(err)?;
        let y = xt.matmul(&self.w.t().map_err(err)?).map_err(err)?;
        let y = y
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)?;
        debug_assert_eq!(y.len(), m * self.out);
        Ok(y)
    }
}

/// `out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w` for each row of width `dim`.
pub(crate) fn rmsnorm(x: &[f32], w: &[f32], out: &mut [f32], dim: usize, eps: f32) {
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// The RoPE angle table entry: `pos / theta^(2i/d)`, in f32 like candle.
fn rope_angle(pos: u32, i: usize, head_dim: usize, theta: f32) -> (f32, f32) {
    let freq = 1f32 / theta.powf((2 * i) as f32 / head_dim as f32);
    let a = pos as f32 * freq;
    (a.cos(), a.sin())
}

/// RoPE in place on `rows` rows of `n_heads` heads, row `r` at `positions[r]`.
pub(crate) fn rope(
    x: &mut [f32],
    row_stride: usize,
    n_heads: usize,
    head_dim: usize,
    positions: &[u32],
    theta: f32,
    interleaved: bool,
) {
    let half = head_dim / 2;
    for (r, &pos) in positions.iter().enumerate() {
        let row = &mut x[r * row_stride..r * row_stride + n_heads * head_dim];
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (c, s) = rope_angle(pos, i, head_dim, theta);
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

/// Shape of a causal attention call (see [`attention`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnShape {
    pub batch: usize,
    pub q_len: usize,
    /// Position of the first query; query `t` sees keys `0 ..= q_pos0 + t`.
    pub q_pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Rows per sequence in `k` and `v`.
    pub kv_capacity: usize,
    pub scale: f32,
}

/// Causal attention. `q`, `out`: `[batch, q_len, n_heads*head_dim]`;
/// `k`, `v`: `[batch, kv_capacity, n_kv_heads*head_dim]`.
pub(crate) fn attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], s: AttnShape) {
    let (qd, kvd, hd) = (
        s.n_heads * s.head_dim,
        s.n_kv_heads * s.head_dim,
        s.head_dim,
    );
    let rep = s.n_heads / s.n_kv_heads;
    let mut scores = vec![0f32; s.q_pos0 + s.q_len];
    for b in 0..s.batch {
        let kb = &k[b * s.kv_capacity * kvd..(b + 1) * s.kv_capacity * kvd];
        let vb = &v[b * s.kv_capacity * kvd..(b + 1) * s.kv_capacity * kvd];
        for t in 0..s.q_len {
            let n = s.q_pos0 + t + 1;
            let row = (b * s.q_len + t) * qd;
            for h in 0..s.n_heads {
                let kh = (h / rep) * hd;
                let qh = &q[row + h * hd..row + (h + 1) * hd];
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores[..n].iter_mut().enumerate() {
                    let kr = &kb[j * kvd + kh..j * kvd + kh + hd];
                    *sc = qh.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * s.scale;
                    max = max.max(*sc);
                }
                let mut sum = 0f32;
                for sc in scores[..n].iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let o = &mut out[row + h * hd..row + (h + 1) * hd];
                o.fill(0.0);
                for (j, sc) in scores[..n].iter().enumerate() {
                    let p = sc / sum;
                    let vr = &vb[j * kvd + kh..j * kvd + kh + hd];
                    for (oo, vv) in o.iter_mut().zip(vr) {
                        *oo += p * vv;
                    }
                }
            }
        }
    }
}

/// `out = silu(gate) * up`.
pub(crate) fn silu_gate(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// `a += b`.
pub(crate) fn add_assign(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Row index of the largest value of each row (first on ties).
pub(crate) fn argmax(x: &[f32], cols: usize) -> Vec<u32> {
    x.chunks_exact(cols)
        .map(|r| {
            let mut best = 0;
            for (i, v) in r.iter().enumerate() {
                if *v > r[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_styles_agree_up_to_permutation() {
        // Interleaved on a permuted head equals halves on the original.
        let d = 8;
        let x: Vec<f32> = (0..d).map(|i| i as f32 * 0.3 - 1.0).collect();
        let perm: Vec<f32> = (0..d / 2).flat_map(|i| [x[i], x[i + d / 2]]).collect();
        let (mut a, mut b) = (x.clone(), perm.clone());
        rope(&mut a, d, 1, d, &[5], 1e4, false);
        rope(&mut b, d, 1, d, &[5], 1e4, true);
        for i in 0..d / 2 {
            assert!((a[i] - b[2 * i]).abs() < 1e-6);
            assert!((a[i + d / 2] - b[2 * i + 1]).abs() < 1e-6);
        }
    }

    #[test]
    fn attention_single_key_returns_value() {
        let s = AttnShape {
            batch: 1,
            q_len: 1,
            q_pos0: 0,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
            kv_capacity: 4,
            scale: 1.0,
        };
        let q = [1.0, 2.0, 3.0, 4.0];
        let k = [0.5; 8];
        let v = [7.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        attention(&q, &k, &v, &mut out, s);
        assert_eq!(out, [7.0, 8.0, 7.0, 8.0]);
    }
}
