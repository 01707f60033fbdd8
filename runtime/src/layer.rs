//! A layer's projections, written once: every path that makes Q, K or V —
//! prefill, the decode step, recomputation of K/V from stored activations
//! (the executor's chunks, the paged engine's resumes and offloaded prefixes)
//! — calls [`project`], so recomputed K/V are the same function as the
//! forward's: the projection, its bias, the per-head norm and the scaled
//! RoPE at absolute positions. The output projection and the MLP, with their
//! biases, are [`output`] and [`mlp`].

use kernels::{Backend, DeviceBuf, IdBuf, RopeFreqs, RopeShape};

use crate::model::Model;
use crate::{AtLayer, Result, RuntimeError};

/// Which projection of the attention input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proj {
    Q,
    K,
    V,
}

/// A place in a device buffer: the buffer and an element offset.
pub(crate) type At<'b> = (&'b DeviceBuf, usize);

/// Where the rows' positions are (ids buffer and offset) and the RoPE table
/// they turn by: [`Model::rope`], or a generation's
/// [`Model::prompt_rope`].
pub(crate) type Rot<'b> = (&'b IdBuf, usize, &'b RopeFreqs);

/// Layer `li`'s projection `which` of `rows` rows of the attention input
/// `x` (`[rows, h]` from its offset) into `out` (`[rows, width]` from its
/// offset, `width` = `q_dim` or `kv_dim`): `x . W^T`, `+ bias`, per-head
/// RMSNorm (Qwen3's q/k norm), then RoPE with row `i` at position
/// `pos[pos_off + i]` by `pos`'s table (Q and K; V takes no positions).
#[allow(clippy::too_many_arguments)]
pub(crate) fn project(
    be: &Backend,
    m: &Model,
    li: usize,
    which: Proj,
    x: At<'_>,
    out: At<'_>,
    rows: usize,
    pos: Option<Rot<'_>>,
) -> Result<()> {
    let s = m.spec();
    let a = &m.layers[li].self_attn;
    let (w, bias, norm, heads) = match which {
        Proj::Q => (&a.q_proj, &a.q_bias, &a.q_norm, s.n_heads),
        Proj::K => (&a.k_proj, &a.k_bias, &a.k_norm, s.n_kv_heads),
        Proj::V => (&a.v_proj, &a.v_bias, &None, s.n_kv_heads),
    };
    let (h, d) = (s.hidden_size, s.head_dim);
    let width = heads * d;
    let (buf, off) = out;
    be.gemm(x.0, x.1, w, 0, buf, off, rows, width, h).at(li)?;
    if let Some(b) = bias {
        be.add_bias(buf, off, b, rows, width).at(li)?;
    }
    if let Some(n) = norm {
        let eps = s.norm_eps as f32;
        be.rmsnorm_at(buf, off, n, buf, off, rows * heads, d, eps)
            .at(li)?;
    }
    if which == Proj::V {
        return Ok(());
    }
    let (pos, pos_off, rope) = pos.ok_or_else(|| RuntimeError::Request {
        what: "project".into(),
        reason: "Q and K need positions for RoPE".into(),
    })?;
    let shape = RopeShape {
        rows,
        row_stride: width,
        n_heads: heads,
        head_dim: d,
        interleaved: m.config.rope.interleaved(),
    };
    be.rope(buf, off, pos, pos_off, rope, shape).at(li)
}

/// `hidden += o(att) + o_bias` over `rows` rows of layer `li`, with `tmp`
/// (`[rows, h]`) as scratch.
pub(crate) fn output(
    be: &Backend,
    m: &Model,
    li: usize,
    att: &DeviceBuf,
    hidden: &DeviceBuf,
    tmp: &DeviceBuf,
    rows: usize,
) -> Result<()> {
    let s = m.spec();
    let (h, qd) = (s.hidden_size, s.q_dim());
    let a = &m.layers[li].self_attn;
    be.gemm(att, 0, &a.o_proj, 0, tmp, 0, rows, h, qd).at(li)?;
    if let Some(b) = &a.o_bias {
        be.add_bias(tmp, 0, b, rows, h).at(li)?;
    }
    be.add(hidden, tmp, hidden, rows * h).at(li)
}

/// `hidden += down(silu(gate(norm(hidden))) * up(norm(hidden)))` over
/// `rows` rows of layer `li`, each projection with its bias where the
/// checkpoint has one; `bufs` are `[hidden, xn, gate, up, tmp]`.
pub(crate) fn mlp(
    be: &Backend,
    m: &Model,
    li: usize,
    bufs: [&DeviceBuf; 5],
    rows: usize,
) -> Result<()> {
    let [hidden, xn, gate, up, tmp] = bufs;
    let s = m.spec();
    let (h, f) = (s.hidden_size, s.intermediate_size);
    let l = &m.layers[li];
    let eps = s.norm_eps as f32;
    be.rmsnorm(hidden, &l.post_attention_layernorm, xn, rows, h, eps)
        .at(li)?;
    let linear = |x: &DeviceBuf, w: &DeviceBuf, b: &Option<DeviceBuf>, out: &DeviceBuf, n, k| {
        be.gemm(x, 0, w, 0, out, 0, rows, n, k).at(li)?;
        match b {
            Some(b) => be.add_bias(out, 0, b, rows, n).at(li),
            None => Ok(()),
        }
    };
    let mp = &l.mlp;
    linear(xn, &mp.gate_proj, &mp.gate_bias, gate, f, h)?;
    linear(xn, &mp.up_proj, &mp.up_bias, up, f, h)?;
    be.silu_gate(gate, up, gate, rows * f).at(li)?;
    linear(gate, &mp.down_proj, &mp.down_bias, tmp, h, f)?;
    be.add(hidden, tmp, hidden, rows * h).at(li)
}
