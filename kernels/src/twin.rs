//! Every op as plain scalar code: the twins that the CPU backend's tests and
//! `kvpr selftest` hold both backends to. They are written for clarity, with
//! f64 accumulation where it matters, and follow the same contract as the
//! CUDA kernels in `kernels/cuda/` (layouts, tie rules, the sampling rule),
//! so a mismatch points at one op on one device.

use crate::{AttnShape, DynamicNtk, RopeShape, Rows, SampleArgs};

/// `out[m, n] = x[m, k] . w[n, k]^T`.
pub fn gemm(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|l| x[i * k + l] as f64 * w[j * k + l] as f64)
                .sum();
            out[i * n + j] = s as f32;
        }
    }
    out
}

/// RMSNorm of each row of `dim`.
pub fn rmsnorm(x: &[f32], weight: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (o, row) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for c in 0..dim {
            o[c] = (row[c] as f64 * inv * weight[c] as f64) as f32;
        }
    }
    out
}

/// The inverse frequencies of unscaled RoPE: `1 / theta^(2i / head_dim)`
/// for `i < head_dim / 2`, computed in f64 and rounded to f32 (what
/// [`crate::Backend::rope_freqs`] takes for a model without `rope_scaling`).
pub fn default_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
        .collect()
}

/// RoPE in place on `x` (its first row at index 0); row `i` at `pos[i]`.
/// Pair `f` turns by `a = pos * inv_freq[f]` in f64; `c = (f32)cos(a) *
/// attention_factor`, `s = (f32)sin(a) * attention_factor` (in f32), then
/// `x0' = x0*c - x1*s`, `x1' = x0*s + x1*c` in f32.
pub fn rope(x: &mut [f32], pos: &[u32], r: &RopeShape, inv_freq: &[f32], attention_factor: f32) {
    rope_with(x, pos, r, inv_freq, attention_factor, None)
}

/// The ratio `x` of [`DynamicNtk`] for a row at position `p`: 1 while
/// `max(p + 1, min_len) <= max_pos`, else `factor * L / max_pos - (factor - 1)`,
/// in f64.
pub fn dynamic_ratio(p: u32, d: &DynamicNtk) -> f64 {
    let len = (p as f64 + 1.0).max(d.min_len as f64);
    let max_pos = d.max_pos as f64;
    if len <= max_pos {
        return 1.0;
    }
    let f = d.factor as f64;
    f * len / max_pos - (f - 1.0)
}

/// The angle pair `f` of a row at position `p` turns by, in f64: `p *
/// inv_freq[f]`, times `x^(-2f/(d-2))` under dynamic NTK (`x` from
/// [`dynamic_ratio`], `d = 2 * inv_freq.len()`; skipped when `x == 1`).
pub fn rope_angle(p: u32, f: usize, inv_freq: &[f32], dynamic: Option<&DynamicNtk>) -> f64 {
    let mut inv = inv_freq[f] as f64;
    if let Some(d) = dynamic {
        let x = dynamic_ratio(p, d);
        if x != 1.0 {
            let dim = 2.0 * inv_freq.len() as f64;
            inv *= x.powf(-2.0 * f as f64 / (dim - 2.0));
        }
    }
    p as f64 * inv
}

/// [`rope`] with dynamic NTK scaling (see [`DynamicNtk`]): each row's
/// angles from [`rope_angle`].
pub fn rope_with(
    x: &mut [f32],
    pos: &[u32],
    r: &RopeShape,
    inv_freq: &[f32],
    attention_factor: f32,
    dynamic: Option<&DynamicNtk>,
) {
    let hd = r.head_dim;
    let inv_freq = &inv_freq[..inv_freq.len().min(hd / 2)];
    for (i, &p) in pos.iter().enumerate().take(r.rows) {
        for h in 0..r.n_heads {
            let base = i * r.row_stride + h * hd;
            for f in 0..inv_freq.len() {
                let ang = rope_angle(p, f, inv_freq, dynamic);
                let c = ang.cos() as f32 * attention_factor;
                let s = ang.sin() as f32 * attention_factor;
                let (a, b) = if r.interleaved {
                    (2 * f, 2 * f + 1)
                } else {
                    (f, f + hd / 2)
                };
                let (x0, x1) = (x[base + a], x[base + b]);
                x[base + a] = x0 * c - x1 * s;
                x[base + b] = x0 * s + x1 * c;
            }
        }
    }
}

/// `x[r*dim + j] += bias[j]` for every whole row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32], dim: usize) {
    for row in x.chunks_exact_mut(dim.max(1)) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// The keys a query at position `p` sees: `0 ..= p`, or the last
/// `window` of them (`window > 0`).
pub fn visible_keys(p: usize, window: usize) -> std::ops::Range<usize> {
    let lo = match window {
        0 => 0,
        w => (p + 1).saturating_sub(w),
    };
    lo..p + 1
}

/// Causal grouped-query attention, windowed if `a.window > 0` (see [`AttnShape`]).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], a: &AttnShape) -> Vec<f32> {
    attend(q, k, v, a, |_, j| visible_keys(a.q_pos0 + j, a.window))
}

/// Ragged attention ([`crate::Backend::attention_ragged`]): one query per
/// row; row `b` has `n = min(lens[b], kv_capacity)` keys and attends all of
/// them, or the last `a.window` (`> 0`); a row with no key gives zeros.
/// `a.q_pos0` is unused, `a.q_len` is taken as 1.
pub fn attention_ragged(q: &[f32], k: &[f32], v: &[f32], a: &AttnShape, lens: &[u32]) -> Vec<f32> {
    let a = AttnShape { q_len: 1, ..*a };
    attend(q, k, v, &a, |b, _| {
        match (lens[b] as usize).min(a.kv_capacity) {
            0 => 0..0,
            n => visible_keys(n - 1, a.window),
        }
    })
}

/// Grouped-query attention where query `j` of row `b` attends the keys
/// `keys(b, j)`; no key gives zeros.
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    a: &AttnShape,
    keys: impl Fn(usize, usize) -> std::ops::Range<usize>,
) -> Vec<f32> {
    let hd = a.head_dim;
    let kv_dim = a.n_kv_heads * hd;
    let qd = a.n_heads * hd;
    let mut out = vec![0.0; a.batch * a.q_len * qd];
    for b in 0..a.batch {
        for j in 0..a.q_len {
            let keys = keys(b, j);
            if keys.is_empty() {
                continue;
            }
            for h in 0..a.n_heads {
                let kvh = h / (a.n_heads / a.n_kv_heads);
                let qv = &q[(b * a.q_len + j) * qd + h * hd..][..hd];
                let mut s: Vec<(usize, f64)> = keys
                    .clone()
                    .map(|t| {
                        let kr = &k[(b * a.kv_capacity + t) * kv_dim + kvh * hd..][..hd];
                        let dot: f64 = qv.iter().zip(kr).map(|(x, y)| *x as f64 * *y as f64).sum();
                        (t, dot * a.scale as f64)
                    })
                    .collect();
                let mx = s.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                s.iter_mut().for_each(|x| x.1 = (x.1 - mx).exp());
                let sum: f64 = s.iter().map(|x| x.1).sum();
                for d in 0..hd {
                    let acc: f64 = s
                        .iter()
                        .map(|&(t, p)| {
                            p * v[(b * a.kv_capacity + t) * kv_dim + kvh * hd + d] as f64
                        })
                        .sum();
                    out[(b * a.q_len + j) * qd + h * hd + d] = (acc / sum) as f32;
                }
            }
        }
    }
    out
}

/// `silu(gate) * up`.
pub fn silu_gate(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
        .collect()
}

/// `a + b`.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// The strided copy of [`crate::Backend::scatter`] into `dst`.
pub fn scatter(src: &[f32], dst: &mut [f32], r: &Rows) {
    for i in 0..r.rows {
        dst[i * r.dst_pitch..][..r.width].copy_from_slice(&src[i * r.src_pitch..][..r.width]);
    }
}

/// [`crate::Backend::scatter_rows`] into `dst`: row `i` of `src` (rows of
/// `width`) to row `idx[i]` of `dst`; an index whose row is not all inside
/// `dst` is skipped.
pub fn scatter_rows(src: &[f32], dst: &mut [f32], idx: &[u32], width: usize) {
    for (i, &r) in idx.iter().enumerate() {
        let start = r as usize * width;
        if start + width <= dst.len() {
            dst[start..start + width].copy_from_slice(&src[i * width..][..width]);
        }
    }
}

/// Rows `ids` of `table` (`[vocab, dim]`); an id outside the vocabulary gives zeros.
pub fn embedding(table: &[f32], ids: &[u32], dim: usize) -> Vec<f32> {
    let mut out = vec![0.0; ids.len() * dim];
    gather_rows(table, ids, dim, &mut out);
    out
}

/// [`embedding`] into `out`: a [`crate::SKIP_ROW`] id leaves its row as it was.
pub fn gather_rows(table: &[f32], ids: &[u32], dim: usize, out: &mut [f32]) {
    let vocab = table.len() / dim.max(1);
    for (row, &id) in out.chunks_exact_mut(dim.max(1)).zip(ids) {
        match (id as usize) < vocab {
            _ if id == crate::SKIP_ROW => {}
            true => row.copy_from_slice(&table[id as usize * dim..][..dim]),
            false => row.fill(0.0),
        }
    }
}

/// Index of the first largest value (NaN never wins).
pub fn argmax_row(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The splitmix64 finaliser.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The uniform in (0, 1) behind the Gumbel noise of `(row, col)`.
pub fn uniform(seed: u64, step: u64, row: usize, col: usize) -> f32 {
    let h = mix(seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (row as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (col as u64).wrapping_mul(0x1656_67B1_9E37_79F9));
    ((h >> 40) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// The largest `t` in `[0, 1]` (searched on the bit patterns of f32) for
/// which `pred(t)` holds; `pred(0)` is taken to hold.
fn bisect(pred: impl Fn(f32) -> bool) -> f32 {
    let (mut lo, mut hi) = (0u32, 0x3f80_0001u32);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pred(f32::from_bits(mid)) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    f32::from_bits(lo)
}

/// One draw from row `r` of the logits, exactly as the `sample` kernel does:
/// `z = logits * inv_temperature`, `p = exp(z - max z)`; the threshold `t`
/// is the larger of the top-k cut (the largest `t` with at least `top_k`
/// values `p >= t`) and the nucleus cut (the largest `t` whose values
/// `p >= t` hold `top_p` of the mass); among the values `p >= t`, the
/// largest `z + Gumbel noise` wins (ties: the first).
pub fn sample_row(row: &[f32], r: usize, s: &SampleArgs) -> u32 {
    let cols = row.len();
    let z: Vec<f32> = row.iter().map(|v| v * s.inv_temperature).collect();
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let p: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let tk = if s.top_k > 0 && s.top_k < cols {
        bisect(|t| p.iter().filter(|&&x| x >= t).count() >= s.top_k)
    } else {
        0.0
    };
    let tp = if s.top_p < 1.0 {
        let total: f32 = p.iter().sum();
        bisect(|t| p.iter().filter(|&&x| x >= t).sum::<f32>() >= s.top_p * total)
    } else {
        0.0
    };
    let t = tk.max(tp);
    let mut best: Option<(usize, f32)> = None;
    for (j, (&pj, &zj)) in p.iter().zip(&z).enumerate() {
        // `p >= t` (a NaN p is never a candidate).
        if pj.partial_cmp(&t).is_none_or(|o| o.is_lt()) {
            continue;
        }
        let g = -(-uniform(s.seed, s.step, r, j).ln()).ln();
        let key = zj + g;
        if best.is_none_or(|(_, b)| key > b) {
            best = Some((j, key));
        }
    }
    best.map_or(0, |(j, _)| j as u32)
}
