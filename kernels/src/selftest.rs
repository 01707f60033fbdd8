//! Every backend op against its scalar twin ([`crate::twin`]) on fresh random
//! inputs at several shapes, like llama.cpp's `test-backend-ops`: outputs are
//! poisoned (NaN, or `u32::MAX` for ids) before each op, so an element a
//! kernel forgets to write fails; inputs are rounded to the backend's dtype
//! before the twin sees them, so the comparison measures the op, not the
//! dtype's rounding of its inputs.

use crate::{
    twin, AttnShape, Backend, DeviceBuf, Dtype, DynamicNtk, IdBuf, Result, RopeShape, Rows,
    SampleArgs, Stream,
};

/// A Llama-3.1-like inverse-frequency table (`rope_type: llama3`, factor 8,
/// low/high frequency factors 1 and 4, 8192 original positions): the
/// low frequencies divided by 8, the middle band interpolated, the high
/// frequencies kept. A non-trivial table for the RoPE checks; the
/// runtime resolves the real one from the model's config.
pub(crate) fn llama3_like_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    let (factor, low, high, old) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    twin::default_inv_freq(theta, head_dim)
        .into_iter()
        .map(|f| {
            let f = f as f64;
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let scaled = if wavelen < old / high {
                f
            } else if wavelen > old / low {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            };
            scaled as f32
        })
        .collect()
}

/// One op at one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct OpCheck {
    pub op: &'static str,
    pub shape: String,
    /// Largest `|got - want|` over the largest `|want|` (ids: mismatches).
    pub error: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// The largest `|got - want|` over the largest `|want|`: infinite for a NaN
/// (an element left poisoned) or a length mismatch.
pub fn rel_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-6);
    got.iter().zip(want).fold(0f64, |m, (g, w)| {
        let e = (*g as f64 - *w as f64).abs() / scale;
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    })
}

/// The relative tolerance of a dtype.
pub fn tolerance(d: Dtype) -> f64 {
    match d {
        Dtype::F32 => 1e-4,
        Dtype::F16 | Dtype::Bf16 => 1e-2,
    }
}

/// A small seeded generator (xorshift64*), values in [-1, 1): the one the
/// self-checks and the crate's tests draw their inputs from.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn f(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub(crate) fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }

    fn scaled(&mut self, n: usize, scale: f32) -> Vec<f32> {
        self.vec(n).into_iter().map(|x| x * scale).collect()
    }
}

struct Ctx<'a> {
    be: &'a Backend,
    rng: Rng,
    tol: f64,
    out: Vec<OpCheck>,
}

impl Ctx<'_> {
    /// `data` on the device, and the values the device holds (dtype-rounded).
    fn put(&mut self, data: &[f32]) -> Result<(DeviceBuf, Vec<f32>)> {
        let b = self.be.upload(data)?;
        let seen = self.be.download(&b, 0, data.len())?;
        Ok((b, seen))
    }

    fn random(&mut self, n: usize, scale: f32) -> Result<(DeviceBuf, Vec<f32>)> {
        let v = self.rng.scaled(n, scale);
        self.put(&v)
    }

    fn poisoned(&mut self, n: usize) -> Result<DeviceBuf> {
        self.be.upload(&vec![f32::NAN; n])
    }

    fn ids(&self, v: &[u32]) -> Result<IdBuf> {
        let b = self.be.alloc_ids(v.len())?;
        self.be.write_ids(&b, 0, v)?;
        Ok(b)
    }

    fn compare(&mut self, op: &'static str, shape: String, got: &[f32], want: &[f32]) {
        let err = rel_error(got, want);
        let tol = self.tol;
        self.out.push(OpCheck {
            op,
            shape,
            error: err,
            tolerance: tol,
            pass: err <= tol,
        });
    }

    fn compare_ids(&mut self, op: &'static str, shape: String, got: &[u32], want: &[u32]) {
        let bad =
            got.iter().zip(want).filter(|(g, w)| g != w).count() + got.len().abs_diff(want.len());
        self.out.push(OpCheck {
            op,
            shape,
            error: bad as f64,
            tolerance: 0.0,
            pass: bad == 0,
        });
    }
}

/// Runs every op at several shapes on `be`, seeded by `seed`.
pub fn check_ops(be: &Backend, seed: u64) -> Result<Vec<OpCheck>> {
    let mut c = Ctx {
        be,
        rng: Rng::new(seed),
        tol: tolerance(be.dtype()),
        out: Vec::new(),
    };
    gemm(&mut c)?;
    norm_and_elementwise(&mut c)?;
    norm_at_and_bias(&mut c)?;
    rope(&mut c)?;
    attention(&mut c)?;
    ragged(&mut c)?;
    gather_and_choose(&mut c)?;
    copies(&mut c)?;
    Ok(c.out)
}

fn gemm(c: &mut Ctx) -> Result<()> {
    for (m, n, k) in [(1, 64, 128), (8, 576, 576), (33, 1000, 256)] {
        let (xb, x) = c.random(m * k, 1.0)?;
        let (wb, w) = c.random(n * k, 0.1)?;
        let out = c.poisoned(m * n + 3)?;
        c.be.gemm(&xb, 0, &wb, 0, &out, 3, m, n, k)?;
        let got = c.be.download(&out, 3, m * n)?;
        c.compare(
            "gemm",
            format!("m={m} n={n} k={k}"),
            &got,
            &twin::gemm(&x, &w, m, n, k),
        );
    }
    Ok(())
}

fn norm_and_elementwise(c: &mut Ctx) -> Result<()> {
    for (rows, dim) in [(1, 64), (8, 4096), (3, 576)] {
        let (xb, x) = c.random(rows * dim, 2.0)?;
        let (wb, w) = c.random(dim, 1.0)?;
        let out = c.poisoned(rows * dim)?;
        c.be.rmsnorm(&xb, &wb, &out, rows, dim, 1e-5)?;
        let got = c.be.download(&out, 0, rows * dim)?;
        let want = twin::rmsnorm(&x, &w, dim, 1e-5);
        c.compare("rmsnorm", format!("rows={rows} dim={dim}"), &got, &want);
        // In place, as the executor calls it.
        c.be.rmsnorm(&xb, &wb, &xb, rows, dim, 1e-5)?;
        let got = c.be.download(&xb, 0, rows * dim)?;
        c.compare(
            "rmsnorm",
            format!("rows={rows} dim={dim} in place"),
            &got,
            &want,
        );
    }
    for len in [1usize, 1000, 70_000] {
        let (gb, g) = c.random(len, 4.0)?;
        let (ub, u) = c.random(len, 1.0)?;
        let out = c.poisoned(len)?;
        c.be.silu_gate(&gb, &ub, &out, len)?;
        let got = c.be.download(&out, 0, len)?;
        c.compare(
            "silu_gate",
            format!("n={len}"),
            &got,
            &twin::silu_gate(&g, &u),
        );
        let out = c.poisoned(len)?;
        c.be.add(&gb, &ub, &out, len)?;
        let got = c.be.download(&out, 0, len)?;
        c.compare("add", format!("n={len}"), &got, &twin::add(&g, &u));
        c.be.add(&gb, &ub, &gb, len)?;
        let got = c.be.download(&gb, 0, len)?;
        c.compare("add", format!("n={len} in place"), &got, &twin::add(&g, &u));
    }
    for (rows, width, sp, dp) in [(1, 64, 64, 64), (3, 100, 100, 250), (70, 48, 48, 96)] {
        let (sb, s) = c.random((rows - 1) * sp + width, 1.0)?;
        let n = (rows - 1) * dp + width;
        let (db, mut want) = c.put(&vec![0.5; n + 5])?;
        let r = Rows {
            rows,
            width,
            src_pitch: sp,
            dst_pitch: dp,
        };
        c.be.scatter(&sb, 0, &db, 5, r)?;
        twin::scatter(&s, &mut want[5..], &r);
        let got = c.be.download(&db, 0, n + 5)?;
        c.compare(
            "scatter",
            format!("{rows}x{width} pitch {sp}->{dp}"),
            &got,
            &want,
        );
    }
    Ok(())
}

/// Strided copies both ways between a host buffer and the device: the
/// executor's K/V and activation transfers (one copy per block of rows).
fn copies(c: &mut Ctx) -> Result<()> {
    for (rows, width, hp, dp) in [(1, 64, 64, 64), (3, 100, 250, 100), (70, 48, 96, 48)] {
        let r = Rows {
            rows,
            width,
            src_pitch: hp,
            dst_pitch: dp,
        };
        let hn = (rows - 1) * hp + width + 7;
        let dn = (rows - 1) * dp + width + 3;
        let host_data = c.rng.scaled(hn, 1.0);
        let host = c.be.alloc_host(hn)?;
        c.be.host_write(&host, 0, &host_data)?;
        let seen = c.be.host_read(&host, 0, hn)?;
        let (dev, mut want) = c.put(&vec![0.5; dn])?;
        c.be.copy_h2d_rows(Stream::Copy, &host, 7, &dev, 3, r)?;
        c.be.synchronize()?;
        twin::scatter(&seen[7..], &mut want[3..], &r);
        let got = c.be.download(&dev, 0, dn)?;
        c.compare(
            "copy_h2d",
            format!("{rows}x{width} pitch {hp}->{dp}"),
            &got,
            &want,
        );

        // Back again into a host buffer of a known value, at the host pitch:
        // rows outside the copy must keep it.
        let back = c.be.alloc_host(hn)?;
        c.be.host_write(&back, 0, &vec![0.5; hn])?;
        let up = Rows {
            src_pitch: dp,
            dst_pitch: hp,
            ..r
        };
        c.be.copy_d2h_rows(Stream::Copy, &dev, 3, &back, 7, up)?;
        c.be.synchronize()?;
        let mut want = vec![0.5; hn];
        twin::scatter(&got[3..], &mut want[7..], &up);
        let got = c.be.host_read(&back, 0, hn)?;
        let shape = format!("{rows}x{width} pitch {dp}->{hp}");
        c.compare("copy_d2h", shape, &got, &want);
    }
    Ok(())
}

/// RMSNorm inside a larger buffer (Qwen3's per-head q/k norm: in place at
/// an offset, and into another buffer) and the bias add (Qwen2's q/k/v
/// biases): elements outside the range must keep their values.
fn norm_at_and_bias(c: &mut Ctx) -> Result<()> {
    // rows (tokens * heads), dim (head_dim), offset
    for (rows, dim, off) in [(1, 64, 0), (3 * 16, 128, 5 * 128), (7 * 3, 64, 17)] {
        let n = off + rows * dim + 9;
        let (xb, x) = c.random(n, 2.0)?;
        let (wb, w) = c.random(dim, 1.0)?;
        let mut want = x.clone();
        let normed = twin::rmsnorm(&x[off..off + rows * dim], &w, dim, 1e-6);
        want[off..off + rows * dim].copy_from_slice(&normed);
        // Into another buffer, at another offset: the rest stays poisoned.
        let out = c.poisoned(rows * dim + 3)?;
        c.be.rmsnorm_at(&xb, off, &wb, &out, 3, rows, dim, 1e-6)?;
        let got = c.be.download(&out, 3, rows * dim)?;
        let shape = format!("rows={rows} dim={dim} x_off={off} out_off=3");
        c.compare("rmsnorm_at", shape, &got, &normed);
        let head = c.be.download(&out, 0, 3)?;
        c.compare_ids(
            "rmsnorm_at",
            format!("rows={rows} dim={dim} nothing before out_off"),
            &[head.iter().all(|v| v.is_nan()) as u32],
            &[1],
        );
        c.be.rmsnorm_at(&xb, off, &wb, &xb, off, rows, dim, 1e-6)?;
        let got = c.be.download(&xb, 0, n)?;
        let shape = format!("rows={rows} dim={dim} in place at {off}, the rest untouched");
        c.compare("rmsnorm_at", shape, &got, &want);
    }
    for (rows, dim, off) in [(1, 64, 0), (5, 576, 3), (3, 1000, 1001)] {
        let n = off + rows * dim + 4;
        let (xb, mut want) = c.random(n, 1.0)?;
        let (bb, bias) = c.random(dim + 2, 0.5)?;
        c.be.add_bias(&xb, off, &bb, rows, dim)?;
        twin::add_bias(&mut want[off..off + rows * dim], &bias[..dim], dim);
        let got = c.be.download(&xb, 0, n)?;
        let shape = format!("rows={rows} dim={dim} at {off}, the rest untouched");
        c.compare("add_bias", shape, &got, &want);
    }
    Ok(())
}

fn rope(c: &mut Ctx) -> Result<()> {
    let cases = [
        (4, 4, 64, 0, 4000u32),
        (3, 2, 128, 6, 77),
        (5, 9, 64, 0, 16_000),
    ];
    // Unscaled RoPE in both conventions, then a llama3-like table with an
    // attention factor (as YaRN has) in the Hugging Face convention.
    let mut runs = Vec::new();
    for interleaved in [false, true] {
        for case in cases {
            runs.push((case, interleaved, false));
        }
    }
    runs.extend(cases.map(|case| (case, false, true)));
    // Dynamic NTK (factor 4 over a 2048-token original context, a prompt
    // of 3000): rows before and after the prompt's end.
    let ntk = DynamicNtk {
        factor: 4.0,
        max_pos: 2048,
        min_len: 3000,
    };
    let dynamic_runs = [
        ((4, 4, 64, 0, 2990u32), false),
        ((3, 2, 128, 6, 9000), true),
    ];
    let runs = runs
        .into_iter()
        .map(|(case, il, scaled)| (case, il, scaled, None))
        .chain(dynamic_runs.map(|(case, il)| (case, il, false, Some(ntk))));
    for ((rows, heads, hd, extra, p0), interleaved, scaled, dynamic) in runs {
        let (inv_freq, factor) = match scaled {
            false => (twin::default_inv_freq(10_000.0, hd), 1.0),
            true => (llama3_like_inv_freq(500_000.0, hd), 1.2),
        };
        let freqs = match dynamic {
            None => c.be.rope_freqs(&inv_freq, factor)?,
            Some(d) => c.be.rope_freqs_dynamic(&inv_freq, factor, d)?,
        };
        let r = RopeShape {
            rows,
            row_stride: heads * hd + extra,
            n_heads: heads,
            head_dim: hd,
            interleaved,
        };
        let pos: Vec<u32> = (0..rows as u32).map(|i| p0 + 37 * i).collect();
        let n = rows * r.row_stride + 2;
        let (xb, mut want) = c.random(n, 1.0)?;
        let pb = c.ids(&pos)?;
        c.be.rope(&xb, 2, &pb, 0, &freqs, r)?;
        twin::rope_with(
            &mut want[2..],
            &pos,
            &r,
            &inv_freq,
            factor,
            dynamic.as_ref(),
        );
        let got = c.be.download(&xb, 0, n)?;
        let table = match (scaled, dynamic) {
            (true, _) => " llama3-like x1.2",
            (false, Some(_)) => " dynamic NTK x4",
            (false, None) => "",
        };
        let shape =
            format!("rows={rows} heads={heads} hd={hd} pos~{p0} interleaved={interleaved}{table}");
        c.compare("rope", shape, &got, &want);
    }
    Ok(())
}

fn attention(c: &mut Ctx) -> Result<()> {
    // batch, q_len, q_pos0, n_heads, n_kv_heads, head_dim, kv_capacity, window
    let cases = [
        (2, 1, 700, 4, 4, 128, 800, 0), // MHA decode over three splits
        (1, 1, 300, 8, 2, 64, 301, 0),  // GQA decode
        (3, 1, 0, 9, 3, 64, 8, 0),      // the first decode position
        (2, 20, 0, 4, 2, 32, 24, 0),    // prefill, causal
        (1, 6, 250, 4, 4, 16, 300, 0),  // queries after a cached prefix
        // Sliding windows: decode whose window starts in the middle split
        // (the first split is skipped); prefill with a window shorter than
        // the prompt; window 1 (a query sees itself); a window past the
        // cache (no window).
        (2, 1, 700, 8, 2, 64, 800, 300),
        (2, 20, 0, 4, 2, 32, 24, 5),
        (1, 6, 250, 4, 4, 16, 300, 1),
        (1, 6, 250, 4, 2, 16, 300, 4096),
    ];
    for (batch, q_len, q_pos0, n_heads, n_kv_heads, head_dim, kv_capacity, window) in cases {
        let a = AttnShape {
            batch,
            q_len,
            q_pos0,
            n_heads,
            n_kv_heads,
            head_dim,
            kv_capacity,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window,
        };
        let (qb, q) = c.random(batch * q_len * n_heads * head_dim, 1.0)?;
        let kv = batch * kv_capacity * n_kv_heads * head_dim;
        let (kb, k) = c.random(kv, 2.0)?;
        let (vb, v) = c.random(kv, 1.0)?;
        let out = c.poisoned(q.len())?;
        c.be.attention(&qb, &kb, &vb, &out, a)?;
        let got = c.be.download(&out, 0, q.len())?;
        let shape = format!(
            "b={batch} q={q_len}@{q_pos0} heads={n_heads}/{n_kv_heads} hd={head_dim} cap={kv_capacity} window={window}"
        );
        c.compare("attention", shape, &got, &twin::attention(&q, &k, &v, &a));
    }
    Ok(())
}

/// The ragged decode step's ops: attention over a length per row (1, the
/// whole cache, none, past the cache) and the scatter of rows to indices.
fn ragged(c: &mut Ctx) -> Result<()> {
    // n_heads, n_kv_heads, head_dim, kv_capacity, lengths, window
    type Case = (usize, usize, usize, usize, &'static [u32], usize);
    let cases: [Case; 5] = [
        (4, 4, 64, 600, &[1, 600, 0, 257, 9000], 0), // MHA over three splits
        (8, 2, 128, 300, &[300, 1, 45], 0),          // GQA
        (9, 3, 64, 8, &[0, 8, 3, 1], 0),             // one split
        // Sliding windows over rows of different lengths: splits before a
        // row's window are empty; window 1.
        (4, 2, 64, 600, &[1, 600, 0, 257, 9000, 300], 280),
        (8, 2, 128, 300, &[300, 1, 45], 1),
    ];
    for (n_heads, n_kv_heads, head_dim, kv_capacity, lens, window) in cases {
        let batch = lens.len();
        let a = AttnShape {
            batch,
            q_len: 1,
            q_pos0: 0,
            n_heads,
            n_kv_heads,
            head_dim,
            kv_capacity,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window,
        };
        let (qb, q) = c.random(batch * n_heads * head_dim, 1.0)?;
        let kv = batch * kv_capacity * n_kv_heads * head_dim;
        let (kb, k) = c.random(kv, 2.0)?;
        let (vb, v) = c.random(kv, 1.0)?;
        let out = c.poisoned(q.len())?;
        let lb = c.ids(&[[5].as_slice(), lens].concat())?;
        c.be.attention_ragged(&qb, &kb, &vb, &out, a, &lb, 1)?;
        let got = c.be.download(&out, 0, q.len())?;
        let shape = format!(
            "lens={lens:?} heads={n_heads}/{n_kv_heads} hd={head_dim} cap={kv_capacity} window={window}"
        );
        let want = twin::attention_ragged(&q, &k, &v, &a, lens);
        c.compare("attention_ragged", shape, &got, &want);
    }
    // rows, width, destination rows, indices: a permutation, and one with
    // indices past the destination (skipped).
    let cases: [(usize, usize, &[u32]); 3] = [
        (6, 64, &[3, 5, 0, 1, 4, 2]),
        (16, 576, &[7, 16, 2, u32::MAX, 9]),
        (70, 48, &[69, 0, 35, 70]),
    ];
    for (dst_rows, width, idx) in cases {
        let rows = idx.len();
        let (sb, s) = c.random(rows * width + 2, 1.0)?;
        let n = dst_rows * width;
        let (db, mut want) = c.random(n, 1.0)?;
        let ib = c.ids(idx)?;
        c.be.scatter_rows(&sb, 2, &db, &ib, 0, rows, width)?;
        twin::scatter_rows(&s[2..], &mut want, idx, width);
        let got = c.be.download(&db, 0, n)?;
        let shape = format!("{rows}x{width} into {dst_rows} rows at {idx:?}");
        c.compare("scatter_rows", shape, &got, &want);
    }
    Ok(())
}

fn gather_and_choose(c: &mut Ctx) -> Result<()> {
    let (vocab, dim) = (100, 64);
    let (tb, t) = c.random(vocab * dim, 1.0)?;
    let id = [3u32, 99, 0, 100, 42, 3];
    let ib = c.ids(&id)?;
    let out = c.poisoned(id.len() * dim)?;
    c.be.embedding(&tb, &ib, 0, &out, id.len(), dim)?;
    let got = c.be.download(&out, 0, id.len() * dim)?;
    c.compare(
        "embedding",
        format!("vocab={vocab} dim={dim} rows={}", id.len()),
        &got,
        &twin::embedding(&t, &id, dim),
    );
    // The paged cache's gather: by block table, into an offset of a batch buffer.
    let (bd, off) = (48, 5 * 48 + 7);
    let (pool, p) = c.random(20 * bd, 1.0)?;
    // A padded slot (SKIP_ROW) keeps what was there.
    let table = [19u32, 2, 2, crate::SKIP_ROW, 0, 7];
    let tab = c.ids(&table)?;
    let out = c.poisoned(off + table.len() * bd + 9)?;
    c.be.gather_rows(&pool, &tab, 1, &out, off, table.len() - 1, bd)?;
    let got = c.be.download(&out, off, (table.len() - 1) * bd)?;
    let mut want = vec![f32::NAN; got.len()];
    twin::gather_rows(&p, &table[1..], bd, &mut want);
    let kept = got[2 * bd..3 * bd].iter().all(|x| x.is_nan());
    let copied = |v: &[f32]| [&v[..2 * bd], &v[3 * bd..]].concat();
    c.compare(
        "gather_rows",
        format!("4 blocks of {bd} at {off}"),
        &copied(&got),
        &copied(&want),
    );
    c.compare_ids(
        "gather_rows",
        "a skipped slot untouched".into(),
        &[kept as u32],
        &[1],
    );
    let untouched = c.be.download(&out, 0, off)?.iter().all(|x| x.is_nan());
    c.compare_ids(
        "gather_rows",
        "rows before the offset untouched".into(),
        &[untouched as u32],
        &[1],
    );

    for (rows, cols) in [(1, 10), (4, 32_000), (3, 49_152)] {
        let mut x = c.rng.scaled(rows * cols, 5.0);
        // Ties: the first wins.
        x[cols / 2] = 9.0;
        x[cols / 2 + 1] = 9.0;
        let (xb, x) = c.put(&x)?;
        let out = c.ids(&vec![u32::MAX; rows])?;
        c.be.argmax(&xb, rows, cols, &out, 0)?;
        let got = c.be.read_ids(&out, 0, rows)?;
        let want: Vec<u32> = x.chunks_exact(cols).map(twin::argmax_row).collect();
        c.compare_ids("argmax", format!("rows={rows} cols={cols}"), &got, &want);

        for (t, top_k, top_p) in [(1.0, 0, 1.0), (0.8, 40, 0.9), (1.5, 0, 0.5), (0.7, 1, 1.0)] {
            let s = SampleArgs {
                inv_temperature: 1.0 / t,
                top_k,
                top_p,
                seed: 1234,
                step: 5,
            };
            let out = c.ids(&vec![u32::MAX; rows])?;
            c.be.sample(&xb, rows, cols, &out, 0, s)?;
            let got = c.be.read_ids(&out, 0, rows)?;
            let want: Vec<u32> = x
                .chunks_exact(cols)
                .enumerate()
                .map(|(r, row)| twin::sample_row(row, r, &s))
                .collect();
            let shape = format!("rows={rows} cols={cols} T={t} top_k={top_k} top_p={top_p}");
            c.compare_ids("sample", shape, &got, &want);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendOptions, DeviceSpec};

    /// The comparison can fail: a wrong value, an element left unwritten
    /// (still poisoned) and a wrong id each fail their check.
    #[test]
    fn a_wrong_or_unwritten_output_fails_its_check() {
        let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap();
        let mut c = Ctx {
            be: &be,
            rng: Rng::new(1),
            tol: 1e-4,
            out: Vec::new(),
        };
        c.compare("ok", String::new(), &[1.0, 2.0], &[1.0, 2.00001]);
        c.compare("wrong", String::new(), &[1.0, 2.1], &[1.0, 2.0]);
        c.compare("unwritten", String::new(), &[1.0, f32::NAN], &[1.0, 2.0]);
        c.compare_ids("ids", String::new(), &[3, 4], &[3, 5]);
        let pass: Vec<bool> = c.out.iter().map(|r| r.pass).collect();
        assert_eq!(pass, vec![true, false, false, false]);
    }
}
