//! The per-layer probe of the decode benchmark: one layer's copies and K/V
//! recomputation, issued as the executor issues them, timed alone and
//! together and set against the cost model's terms for the same split.

use std::time::Instant;

use kernels::{Backend, DeviceBuf, HostBuf, Stream};
use plans::{HardwareProfile, ModelSpec, Plan, Schedule, Workload};
use scheduler::CostModel;

use crate::report::{mean, pm, Table};
use crate::Res;

/// Buffers of one layer's copies and recomputation, laid out like the
/// executor's staging (`apart = false`: one X buffer, each chunk a `[b, n, h]`
/// region; recomputed K/V in one temporary, scattered into the buffers the
/// copies fill) or with every chunk and the temporaries in buffers apart.
struct ProbeBufs {
    hx: HostBuf,
    hkv: [HostBuf; 2],
    xs: Vec<DeviceBuf>,
    kv: [DeviceBuf; 2],
    tmp: [DeviceBuf; 2],
    tmp_apart: Option<[DeviceBuf; 2]>,
    w: [DeviceBuf; 2],
}

/// One layer's split: batch, context, recomputed tokens, chunks.
#[derive(Clone, Copy)]
struct Shape {
    b: usize,
    s: usize,
    l: usize,
    c: usize,
}

/// What a probe run issues.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Copies,
    Gemms,
    Rope,
    Together,
}

impl ProbeBufs {
    fn new(be: &Backend, spec: &ModelSpec, sh: Shape, apart: bool) -> Res<ProbeBufs> {
        let (n, h, kvd) = (sh.b * sh.s, spec.hidden_size, spec.kv_dim());
        let fill = |n: usize, k: usize| -> Vec<f32> {
            (0..n).map(|i| ((i * 31 + k) % 97) as f32 * 1e-3).collect()
        };
        let hx = be.alloc_host(n * h)?;
        be.host_write(&hx, 0, &fill(n * h, 1))?;
        let nx = if apart { sh.c.max(1) } else { 1 };
        Ok(ProbeBufs {
            hx,
            hkv: [be.alloc_host(n * kvd)?, be.alloc_host(n * kvd)?],
            xs: (0..nx).map(|_| be.alloc(n * h)).collect::<Result<_, _>>()?,
            kv: [be.alloc(n * kvd)?, be.alloc(n * kvd)?],
            tmp: [be.alloc(n * kvd)?, be.alloc(n * kvd)?],
            tmp_apart: if apart {
                Some([be.alloc(n * kvd)?, be.alloc(n * kvd)?])
            } else {
                None
            },
            w: [be.upload(&fill(kvd * h, 2))?, be.upload(&fill(kvd * h, 3))?],
        })
    }

    /// Issues one layer's copies and/or recomputation as the executor does
    /// (X chunks as `[b, n, h]` regions with an event each, then K/V; per
    /// chunk two GEMMs of `b*n` rows, one RoPE call and the scatter into the
    /// per-sequence K/V); wall time until everything is done, ms.
    fn run(&self, be: &Backend, spec: &ModelSpec, sh: Shape, part: Part) -> Res<f64> {
        let Shape { b, s, l, c } = sh;
        let (h, kvd) = (spec.hidden_size, spec.kv_dim());
        let c = c.clamp(1, l.max(1));
        let bounds: Vec<(usize, usize)> = (0..c).map(|i| (l * i / c, l * (i + 1) / c)).collect();
        let copy = matches!(part, Part::Copies | Part::Together);
        be.synchronize()?;
        let t0 = Instant::now();
        let mut evs = Vec::new();
        if copy {
            for (i, &(x0, x1)) in bounds.iter().enumerate() {
                let xs = &self.xs[i.min(self.xs.len() - 1)];
                let (n, row0) = (x1 - x0, b * x0);
                for bi in 0..b {
                    let (src, dst) = ((bi * s + x0) * h, (row0 + bi * n) * h);
                    be.copy_h2d(Stream::Copy, &self.hx, src, xs, dst, n * h)?;
                }
                evs.push(be.record(Stream::Copy)?);
            }
            for bi in 0..b {
                let off = (bi * s + l) * kvd;
                for j in 0..2 {
                    be.copy_h2d(
                        Stream::Copy,
                        &self.hkv[j],
                        off,
                        &self.kv[j],
                        off,
                        (s - l) * kvd,
                    )?;
                }
            }
        }
        let kv_ready = if copy {
            Some(be.record(Stream::Copy)?)
        } else {
            None
        };
        if part != Part::Copies {
            let tmp = self.tmp_apart.as_ref().unwrap_or(&self.tmp);
            let (nh, hd) = (spec.n_kv_heads, spec.head_dim);
            for (i, &(x0, x1)) in bounds.iter().enumerate() {
                if let Some(ev) = evs.get(i) {
                    be.wait(Stream::Compute, ev)?;
                }
                let xs = &self.xs[i.min(self.xs.len() - 1)];
                let (n, row0) = (x1 - x0, b * x0);
                let (m, xo, ko) = (b * n, row0 * h, row0 * kvd);
                if part != Part::Rope {
                    be.gemm(xs, xo, &self.w[0], 0, &tmp[0], ko, m, kvd, h)?;
                    be.gemm(xs, xo, &self.w[1], 0, &tmp[1], ko, m, kvd, h)?;
                }
                if part != Part::Gemms {
                    let pos: Vec<u32> = (0..b).flat_map(|_| x0 as u32..x1 as u32).collect();
                    let ids = be.alloc_ids(pos.len())?;
                    be.write_ids(&ids, 0, &pos)?;
                    let r = kernels::RopeShape {
                        rows: m,
                        row_stride: kvd,
                        n_heads: nh,
                        head_dim: hd,
                        interleaved: false,
                    };
                    let freqs = be.rope_freqs(&kernels::twin::default_inv_freq(1e4, hd), 1.0)?;
                    be.rope(&tmp[0], ko, &ids, 0, &freqs, r)?;
                }
                if part == Part::Together {
                    for bi in 0..b {
                        let (src, dst) = (ko + bi * n * kvd, (bi * s + x0) * kvd);
                        for (t, kv) in tmp.iter().zip(&self.kv) {
                            be.copy_d2d(Stream::Compute, t, src, kv, dst, n * kvd)?;
                        }
                    }
                }
            }
        }
        if let Some(ev) = kv_ready {
            be.wait(Stream::Compute, &ev)?;
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }
}

/// Where the time goes: one layer of each plan's first split, its parts
/// alone and together, against the cost model's terms for the same split.
pub(crate) fn probe(
    be: &Backend,
    spec: &ModelSpec,
    hw: &HardwareProfile,
    w: &Workload,
    plans: &[(Schedule, Plan)],
    measured_ms: &[f64],
) -> Res<()> {
    let cm = CostModel::new(spec, hw, w)?;
    let reps = 5;
    let mut t = Table::new(&[
        ("schedule", false),
        ("GEMM rows model / run", true),
        ("recompute model (ms)", true),
        ("GEMMs (ms)", true),
        ("RoPE (ms)", true),
        ("kv_ready model (ms)", true),
        ("copies alone (ms)", true),
        ("together (ms)", true),
        ("together, buffers apart (ms)", true),
        (
            "step: model / model w/ measured recompute / measured (ms)",
            true,
        ),
        (
            "speedup: model / model w/ measured recompute / measured",
            true,
        ),
    ]);
    let mut base: Option<(f64, f64, f64)> = None;
    for (i, (sch, pl)) in plans.iter().enumerate() {
        // The step at the prompt (a plan's steps start at context 1).
        let st = pl
            .step_for(w.prompt_len)
            .ok_or("the plan does not cover the prompt")?;
        let sh = Shape {
            b: w.batch,
            s: w.prompt_len,
            l: st.recompute_tokens.min(w.prompt_len),
            c: st.chunks,
        };
        let cost = cm.step(sh.s, 0, sh.l, sh.c, *sch);
        let (shared, apart) = (
            ProbeBufs::new(be, spec, sh, false)?,
            ProbeBufs::new(be, spec, sh, true)?,
        );
        shared.run(be, spec, sh, Part::Together)?; // warm-up
        apart.run(be, spec, sh, Part::Together)?;
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 5];
        for _ in 0..reps {
            for (j, part) in [Part::Gemms, Part::Rope, Part::Copies, Part::Together]
                .into_iter()
                .enumerate()
            {
                let skip = sh.l == 0 && matches!(part, Part::Gemms | Part::Rope);
                cols[j].push(if skip {
                    0.0
                } else {
                    shared.run(be, spec, sh, part)?
                });
            }
            cols[4].push(apart.run(be, spec, sh, Part::Together)?);
        }
        // The model's step with its recompute term replaced by the measured one.
        let c = sh.c as f64;
        let r_meas = (mean(&cols[0]) + mean(&cols[1])) / 1e3 / c;
        let r_meas = if sh.l == 0 { 0.0 } else { r_meas };
        let kv_ready = (cost.t_x + cost.t_kv)
            .max(cost.t_x / c + c * r_meas)
            .max(cost.t_x + r_meas);
        let busy = c * r_meas + cost.t_attn + cost.t_dense;
        let tail = cost.t_attn + cost.t_dense;
        let what_if = kv_ready + (cm.n_layers() as f64 - 1.0) * kv_ready.max(busy) + tail;
        let ms = (cost.step * 1e3, what_if * 1e3, measured_ms[i]);
        let b0 = *base.get_or_insert(ms);
        let rows = |r: usize| {
            if sh.l == 0 {
                "-".into()
            } else {
                format!("{} / {}", r * sh.l / sh.c, r * sh.l / sh.c)
            }
        };
        t.row(vec![
            sch.name().into(),
            rows(sh.b),
            format!("{:.2}", sh.c as f64 * cost.r * 1e3),
            pm(&cols[0], 2),
            pm(&cols[1], 2),
            format!("{:.2}", cost.kv_ready * 1e3),
            pm(&cols[2], 2),
            pm(&cols[3], 2),
            pm(&cols[4], 2),
            format!("{:.1} / {:.1} / {:.1}", ms.0, ms.1, ms.2),
            format!(
                "{:.2} / {:.2} / {:.2}",
                b0.0 / ms.0,
                b0.1 / ms.1,
                b0.2 / ms.2
            ),
        ]);
    }
    println!(
        "\nWhere the time goes: one layer at context {} (the split at the prompt), {reps} repeats. \
         The model costs each chunk as one GEMM of b*l/c rows, and the executor runs one GEMM of \
         b*l/c rows per chunk (X chunks laid out [b, n, h]); \"together\" includes the scatter of \
         the recomputed rows into each sequence's K/V staging. \"buffers apart\": every X chunk and \
         the recompute temporaries in buffers of their own (the CPU backend locks whole buffers). Last columns: the plan's cost model at this context, the same \
         model with its recompute term replaced by the GEMMs + RoPE measured here, and the measured \
         mean step of the table above.\n",
        w.prompt_len
    );
    t.print();
    Ok(())
}
