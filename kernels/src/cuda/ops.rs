//! Kernel launches: the contract with `kernels/cuda/*.cu` (names, argument
//! order, launch shapes, `kernels/cuda/README.md`) in one place. The
//! functions here take raw device addresses (`Backend` has checked every
//! range), convert sizes to the kernels' integer types (checked), keep grids
//! within CUDA's limits and lay out the kernels' scratch, then hand each
//! launch to a [`Launcher`]: the CUDA backend's streams, or, in the tests,
//! the CPU emulator that runs the same CUDA C (`emulated.rs`). So the tests
//! exercise this code, not a copy of it.

use crate::{
    check, AttnShape, Dtype, DynamicNtk, KernelError, Result, RopeShape, Rows, SampleArgs,
};

/// Keys per flash-decoding split.
pub(crate) const SPLIT_LEN: usize = 256;
/// The most f32 values of attention partials one launch may use (256 MiB).
const ATTN_SCRATCH: usize = 64 << 20;
/// CUDA's limit on a grid's y and z.
const GRID_YZ: usize = 65_535;

/// One kernel argument, as the kernel declares it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device address.
    Ptr(u64),
    I32(i32),
    F32(f32),
    U64(u64),
}

/// The kernels' scratch buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScratchKind {
    /// Flash-decoding partials.
    Attention,
    /// The sampler's probabilities.
    Sampler,
}

/// Where launches go.
pub(crate) trait Launcher {
    fn dtype(&self) -> Dtype;
    /// Short device name, for errors.
    fn device(&self) -> String;
    /// Launches `kernel` (without its dtype suffix) in the compute order.
    fn launch(
        &self,
        kernel: &'static str,
        grid: (usize, usize, usize),
        block: u32,
        args: &[Arg],
    ) -> Result<()>;
    /// The address of at least `floats` f32 of scratch of `kind`, kept (and
    /// reused) until a larger one is asked for.
    fn scratch(&self, kind: ScratchKind, floats: usize) -> Result<u64>;
    /// The most f32 values of attention partials one launch may use.
    fn attention_scratch_limit(&self) -> usize {
        ATTN_SCRATCH
    }
}

fn int(l: &impl Launcher, op: &'static str, v: usize) -> Result<Arg> {
    i32::try_from(v)
        .map(Arg::I32)
        .map_err(|_| KernelError::Shape {
            op,
            device: l.device(),
            shape: v.to_string(),
            reason: "a size above 2^31 for a kernel argument".into(),
        })
}

fn at(l: &impl Launcher, base: u64, elements: usize) -> u64 {
    base + (elements * l.dtype().bytes()) as u64
}

pub(crate) fn rmsnorm(
    l: &impl Launcher,
    x: u64,
    w: u64,
    o: u64,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    let op = "rmsnorm";
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(w),
        Arg::Ptr(o),
        int(l, op, rows)?,
        int(l, op, dim)?,
        Arg::F32(eps),
    ];
    l.launch(op, (rows, 1, 1), 256, &args)
}

/// `x[r*dim + j] += bias[j]` for `r < rows`, `j < dim`.
pub(crate) fn add_bias(
    l: &impl Launcher,
    x: u64,
    bias: u64,
    rows: usize,
    dim: usize,
) -> Result<()> {
    let op = "add_bias";
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(bias),
        int(l, op, rows)?,
        int(l, op, dim)?,
    ];
    let grid = (
        dim.div_ceil(256).clamp(1, GRID_YZ),
        rows.clamp(1, GRID_YZ),
        1,
    );
    l.launch(op, grid, 256, &args)
}

/// RoPE by the `r.head_dim / 2` f32 inverse frequencies at `inv_freq`,
/// cos and sin scaled by `attention_factor`, rescaled per row by `dynamic`.
pub(crate) fn rope(
    l: &impl Launcher,
    x: u64,
    pos: u64,
    inv_freq: u64,
    attention_factor: f32,
    dynamic: Option<DynamicNtk>,
    r: RopeShape,
) -> Result<()> {
    let d = dynamic.unwrap_or(DynamicNtk {
        factor: 0.0,
        max_pos: 0,
        min_len: 0,
    });
    let op = "rope";
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(pos),
        Arg::Ptr(inv_freq),
        Arg::F32(attention_factor),
        int(l, op, r.rows)?,
        int(l, op, r.row_stride)?,
        int(l, op, r.n_heads)?,
        int(l, op, r.head_dim)?,
        Arg::I32(r.interleaved as i32),
        Arg::F32(d.factor),
        int(l, op, d.max_pos as usize)?,
        int(l, op, d.min_len as usize)?,
    ];
    l.launch(op, (r.rows, 1, 1), 128, &args)
}

/// `silu_gate` or `add`: `out = f(a, b)` over `len` elements.
pub(crate) fn binary(
    l: &impl Launcher,
    kernel: &'static str,
    a: u64,
    b: u64,
    o: u64,
    len: usize,
) -> Result<()> {
    let args = [Arg::Ptr(a), Arg::Ptr(b), Arg::Ptr(o), Arg::U64(len as u64)];
    l.launch(kernel, (len.div_ceil(256).clamp(1, 4096), 1, 1), 256, &args)
}

pub(crate) fn scatter(l: &impl Launcher, src: u64, dst: u64, r: Rows) -> Result<()> {
    let mut g0 = 0;
    while g0 < r.rows {
        let groups = (r.rows - g0).min(GRID_YZ);
        let args = [
            Arg::Ptr(at(l, src, g0 * r.src_pitch)),
            Arg::Ptr(at(l, dst, g0 * r.dst_pitch)),
            Arg::I32(groups as i32),
            Arg::U64(r.width as u64),
            Arg::U64(r.src_pitch as u64),
            Arg::U64(r.dst_pitch as u64),
        ];
        l.launch(
            "scatter",
            (r.width.div_ceil(256).clamp(1, GRID_YZ), groups, 1),
            256,
            &args,
        )?;
        g0 += groups;
    }
    Ok(())
}

/// Row `i` of `src` into row `idx[i]` of `dst` (`dst_len` elements, so
/// `dst_len / width` rows; the kernel skips indices past them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_rows(
    l: &impl Launcher,
    src: u64,
    dst: u64,
    dst_len: usize,
    idx: u64,
    rows: usize,
    width: usize,
) -> Result<()> {
    let op = "scatter_rows";
    let args = [
        Arg::Ptr(src),
        Arg::Ptr(dst),
        Arg::Ptr(idx),
        int(l, op, rows)?,
        Arg::U64(width as u64),
        Arg::U64((dst_len / width) as u64),
    ];
    let grid = (
        width.div_ceil(256).clamp(1, GRID_YZ),
        rows.clamp(1, GRID_YZ),
        1,
    );
    l.launch(op, grid, 256, &args)
}

/// `table` holds `table_len` elements (`vocab = table_len / dim` rows).
pub(crate) fn embedding(
    l: &impl Launcher,
    table: u64,
    table_len: usize,
    ids: u64,
    o: u64,
    rows: usize,
    dim: usize,
) -> Result<()> {
    let op = "embedding";
    let args = [
        Arg::Ptr(table),
        Arg::Ptr(ids),
        Arg::Ptr(o),
        int(l, op, rows)?,
        Arg::U64(dim as u64),
        int(l, op, table_len / dim)?,
    ];
    let grid = (
        dim.div_ceil(256).clamp(1, GRID_YZ),
        rows.clamp(1, GRID_YZ),
        1,
    );
    l.launch(op, grid, 256, &args)
}

pub(crate) fn argmax(l: &impl Launcher, x: u64, out: u64, rows: usize, cols: usize) -> Result<()> {
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(out),
        int(l, "argmax", rows)?,
        int(l, "argmax", cols)?,
    ];
    l.launch("argmax", (rows, 1, 1), 256, &args)
}

pub(crate) fn sample(
    l: &impl Launcher,
    x: u64,
    out: u64,
    rows: usize,
    cols: usize,
    s: SampleArgs,
) -> Result<()> {
    let op = "sample";
    let work = l.scratch(ScratchKind::Sampler, rows * cols)?;
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(work),
        Arg::Ptr(out),
        int(l, op, rows)?,
        int(l, op, cols)?,
        Arg::F32(s.inv_temperature),
        int(l, op, s.top_k)?,
        Arg::F32(s.top_p),
        Arg::U64(s.seed),
        Arg::U64(s.step),
    ];
    l.launch(op, (rows, 1, 1), 256, &args)
}

/// Flash-decoding: partials per split of [`SPLIT_LEN`] keys, then one
/// combine. Scratch is sized by the cache's capacity (so it is allocated
/// once per shape, not as the context grows); a call whose partials would
/// pass the launcher's limit (256 MiB on CUDA) or CUDA's grid limits runs in slices of query rows,
/// one sequence at a time.
///
/// `lens`: the address of a ragged batch's key counts (`u32` per row, the
/// kernel clamps them to `kv_capacity`; `a.q_len` is 1), or `None` for
/// causal attention. A ragged launch has the splits of `kv_capacity` keys,
/// since the host does not know the lengths: a shorter row's extra splits
/// are empty and weigh nothing in the combine.
///
/// A sliding window ([`check::window`]) costs nothing for the keys it
/// hides: a causal launch starts at the split holding the first key its
/// first query sees (`split0`; the splits before it are not launched), a
/// ragged one at split 0 with the splits before a row's window empty (the
/// kernel returns at once), and the first split a query sees is masked in
/// the kernel.
pub(crate) fn attention(
    l: &impl Launcher,
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    a: AttnShape,
    lens: Option<u64>,
) -> Result<()> {
    let op = if lens.is_some() {
        "attention_ragged"
    } else {
        "attention"
    };
    if a.n_heads > GRID_YZ {
        return Err(KernelError::Shape {
            op,
            device: l.device(),
            shape: format!("{a:?}"),
            reason: "more than 65535 heads".into(),
        });
    }
    let hd = a.head_dim;
    let (qd, kvd) = (a.n_heads * hd, a.n_kv_heads * hd);
    let max_splits = a.kv_capacity.div_ceil(SPLIT_LEN).max(1);
    let per_row = a.n_heads * max_splits * (hd + 2);
    let rows = a.batch * a.q_len;
    let per_launch = (l.attention_scratch_limit() / per_row).clamp(1, GRID_YZ);
    let ws = l.scratch(ScratchKind::Attention, per_row * rows.min(per_launch))?;
    let slices: Vec<(usize, usize, usize, usize)> = if rows <= per_launch {
        vec![(0, a.batch, 0, a.q_len)]
    } else {
        (0..a.batch)
            .flat_map(|b| {
                (0..a.q_len)
                    .step_by(per_launch)
                    .map(move |j| (b, 1, j, (a.q_len - j).min(per_launch)))
            })
            .collect()
    };
    let window = check::window(&a);
    for (b0, nb, j0, nq) in slices {
        let (split0, n_splits) = match lens {
            Some(_) => (0, max_splits),
            None => {
                // The slice's queries see keys from its first query's
                // window start to its last query's position.
                let first = crate::twin::visible_keys(a.q_pos0 + j0, window).start / SPLIT_LEN;
                let end = (a.q_pos0 + j0 + nq).div_ceil(SPLIT_LEN);
                (first, end - first)
            }
        };
        let row0 = b0 * a.q_len + j0;
        let kv0 = b0 * a.kv_capacity * kvd;
        let part_o = ws;
        let part_ml = ws + (nb * nq * a.n_heads * n_splits * hd * 4) as u64;
        let split = [
            Arg::Ptr(at(l, q, row0 * qd)),
            Arg::Ptr(at(l, k, kv0)),
            Arg::Ptr(at(l, v, kv0)),
            Arg::Ptr(lens.map_or(0, |p| p + 4 * b0 as u64)),
            Arg::Ptr(part_o),
            Arg::Ptr(part_ml),
            int(l, op, nb)?,
            int(l, op, nq)?,
            int(l, op, a.q_pos0 + j0)?,
            int(l, op, a.n_heads)?,
            int(l, op, a.n_kv_heads)?,
            int(l, op, hd)?,
            int(l, op, a.kv_capacity)?,
            int(l, op, window)?,
            Arg::F32(a.scale),
            Arg::I32(SPLIT_LEN as i32),
            int(l, op, split0)?,
            int(l, op, n_splits)?,
        ];
        l.launch("attn_split", (n_splits, a.n_heads, nb * nq), 128, &split)?;
        let combine = [
            Arg::Ptr(part_o),
            Arg::Ptr(part_ml),
            Arg::Ptr(at(l, o, row0 * qd)),
            int(l, op, nb * nq)?,
            int(l, op, a.n_heads)?,
            int(l, op, hd)?,
            int(l, op, n_splits)?,
        ];
        l.launch("attn_combine", (a.n_heads, nb * nq, 1), 128, &combine)?;
    }
    Ok(())
}
