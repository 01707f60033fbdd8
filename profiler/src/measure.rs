//! The measurements: link sweep, GEMM sweep, launch overhead and decode
//! attention, each timed with backend events around batches of the same calls
//! the runtime makes, after a warm-up, as the median of several samples.

use kernels::{AttnShape, Backend, BackendOptions, DeviceBuf, Dtype, HostBuf, KernelError, Stream};
use plans::{human_bytes, BandwidthPoint, GemmPoint};

use crate::{CalibrateOptions, CalibrationEvent, ProfilerError, Stage};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The shapes and sizes a calibration run measures, fixed before it starts.
pub(crate) struct Plan {
    /// Transfer sizes (bytes) of the per-direction sweeps.
    link_sizes: Vec<u64>,
    /// Transfer sizes (bytes) of the bidirectional sweep (capped: it needs a
    /// second pair of buffers).
    bidir_sizes: Vec<u64>,
    /// Whether to measure pageable host memory (CUDA only: the CPU backend has
    /// one kind of host memory).
    pageable: bool,
    /// Timed samples per figure (after one warm-up).
    samples: usize,
    /// A batch of calls between two events should last about this long.
    target_us: f64,
    /// `(n, k, ms)` GEMM shapes.
    gemm_shapes: Vec<(usize, usize, Vec<usize>)>,
    /// GEMM dtypes: the backend's, plus the other half type on CUDA.
    gemm_dtypes: Vec<Dtype>,
    launch_reps: usize,
    attn: AttnShape,
}

/// Bytes of weight copies a GEMM measurement cycles through, more than any
/// last-level cache, so that each call reads its matrix from memory as a
/// decode step does.
const COLD_WEIGHT_BYTES: usize = 128 << 20;

/// Rows `m` the model's dense shapes are measured at: the batch sizes of decode.
const DENSE_MS_QUICK: [usize; 4] = [1, 4, 16, 64];
const DENSE_MS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

fn geometric(from: u64, to: u64, factor: u64) -> Vec<u64> {
    let mut v = vec![from];
    while *v.last().unwrap_or(&to) * factor <= to {
        v.push(v[v.len() - 1] * factor);
    }
    v
}

impl Plan {
    pub(crate) fn new(backend: &Backend, opts: &CalibrateOptions) -> Plan {
        let cuda = backend.is_cuda();
        let quick = opts.quick;
        let link_sizes = if quick {
            geometric(64 * KIB, 64 * MIB, 4)
        } else {
            geometric(64 * KIB, GIB, 4)
        };
        let bidir_sizes = link_sizes
            .iter()
            .copied()
            .filter(|&s| s <= 256 * MIB)
            .collect();
        let m_max = match (quick, cuda) {
            (true, false) => 1024,
            _ => 16384,
        };
        let m_factor = if quick { 4 } else { 2 };
        let ms: Vec<usize> = geometric(1, m_max, m_factor)
            .into_iter()
            .map(|m| m as usize)
            .collect();
        let (mut gemm_shapes, attn) = match &opts.model {
            Some(spec) => {
                let (h, kv) = (spec.hidden_size, spec.kv_dim());
                let mut shapes = vec![(kv, h, ms.clone())];
                // The model's dense shapes (projections, MLP, head) at decode's
                // row counts: the cost model prices each from its own points.
                let dense_ms: &[usize] = if quick { &DENSE_MS_QUICK } else { &DENSE_MS };
                let dense = spec.layer_gemms().into_iter().chain([spec.head_gemm()]);
                for (n, k) in dense {
                    match shapes.iter_mut().find(|s| (s.0, s.1) == (n, k)) {
                        Some(s) => {
                            s.2.extend(dense_ms);
                            s.2.sort_unstable();
                            s.2.dedup();
                        }
                        None => shapes.push((n, k, dense_ms.to_vec())),
                    }
                }
                let ctx = (if quick { 1024 } else { 4096 }).min(spec.max_context.max(1));
                (
                    shapes,
                    attn_shape(spec.n_heads, spec.n_kv_heads, spec.head_dim, ctx),
                )
            }
            None => (
                vec![(4096, 4096, ms)],
                attn_shape(32, 32, 128, if quick { 1024 } else { 4096 }),
            ),
        };
        gemm_shapes.retain(|(n, k, _)| *n > 0 && *k > 0);
        let mut gemm_dtypes = vec![backend.dtype()];
        if cuda {
            gemm_dtypes = vec![Dtype::F16, Dtype::Bf16];
            if !gemm_dtypes.contains(&backend.dtype()) {
                gemm_dtypes.insert(0, backend.dtype());
            }
        }
        Plan {
            link_sizes,
            bidir_sizes,
            pageable: cuda,
            samples: if quick { 11 } else { 15 },
            target_us: if quick { 2_500.0 } else { 10_000.0 },
            gemm_shapes,
            gemm_dtypes,
            launch_reps: if quick { 200 } else { 2000 },
            attn,
        }
    }

    /// How many progress steps the run reports.
    pub(crate) fn steps(&self) -> usize {
        let link =
            self.link_sizes.len() * if self.pageable { 4 } else { 2 } + self.bidir_sizes.len();
        let gemm: usize =
            self.gemm_shapes.iter().map(|s| s.2.len()).sum::<usize>() * self.gemm_dtypes.len();
        1 + link + gemm + 2
    }
}

fn attn_shape(n_heads: usize, n_kv_heads: usize, head_dim: usize, ctx: usize) -> AttnShape {
    AttnShape {
        batch: 1,
        q_len: 1,
        q_pos0: ctx - 1,
        n_heads,
        n_kv_heads,
        head_dim,
        kv_capacity: ctx,
        scale: 1.0 / (head_dim.max(1) as f32).sqrt(),
        window: 0,
    }
}

/// `x` to 4 significant digits: honest about the precision of a timing, and
/// exact through a JSON round trip.
pub(crate) fn sig4(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return x;
    }
    let scale = 10f64.powi(3 - x.log10().floor() as i32);
    let r = (x * scale).round() / scale;
    // Re-parse the printed form so the stored value is the parsed one.
    format!("{r}").parse().unwrap_or(r)
}

/// The median of the samples: a sample slowed by a noisy neighbour (a
/// preempted batch) moves it only when half the samples are slowed, where the
/// mean would follow every outlier and the minimum a lucky one.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Microseconds per call of `op`, timed with events on `stream`: a warm-up
/// call sizes the batch (about `plan.target_us` per sample), then the median
/// over `plan.samples` batches (one sample when a single call is over a second).
fn time_per_call(
    be: &Backend,
    stream: Stream,
    plan: &Plan,
    stage: &'static str,
    max_batch: usize,
    op: &mut dyn FnMut(usize) -> Result<(), KernelError>,
) -> Result<f64, ProfilerError> {
    let mut call = 0usize;
    let mut batch = |n: usize, call: &mut usize| -> Result<f64, ProfilerError> {
        be.synchronize().stage(stage)?;
        let a = be.record(stream).stage(stage)?;
        for _ in 0..n {
            op(*call).stage(stage)?;
            *call += 1;
        }
        let b = be.record(stream).stage(stage)?;
        let us = be.elapsed_us(&a, &b).stage(stage)?;
        Ok(us / n as f64)
    };
    let first = batch(1, &mut call)?;
    let per_batch = ((plan.target_us / first.max(0.01)) as usize).clamp(1, max_batch.max(1));
    let samples = if first > 1e6 { 1 } else { plan.samples };
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples {
        v.push(batch(per_batch, &mut call)?);
    }
    let us = median(v);
    if !(us.is_finite() && us > 0.0) {
        return Err(ProfilerError::Measurement {
            stage,
            reason: format!("{us} us per call"),
        });
    }
    Ok(us)
}

/// The measured link curves (points sorted by size).
pub(crate) struct Link {
    pub h2d_pinned: Vec<BandwidthPoint>,
    pub d2h_pinned: Vec<BandwidthPoint>,
    pub h2d_pageable: Option<Vec<BandwidthPoint>>,
    pub d2h_pageable: Option<Vec<BandwidthPoint>>,
    pub bidirectional: Vec<BandwidthPoint>,
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    H2d,
    D2h,
}

/// One direction over every size. Copies rotate through the whole buffer so
/// that small transfers do not stay cache-hot on the CPU backend.
fn sweep(
    be: &Backend,
    plan: &Plan,
    stage: &'static str,
    dir: Dir,
    host: &HostBuf,
    dev: &DeviceBuf,
    progress: &mut dyn FnMut(CalibrationEvent),
) -> Result<Vec<BandwidthPoint>, ProfilerError> {
    let esz = be.dtype().bytes() as u64;
    let mut points = Vec::new();
    for &bytes in &plan.link_sizes {
        let len = (bytes / esz) as usize;
        let slots = (host.len().min(dev.len()) / len.max(1)).max(1);
        let mut op = |i: usize| {
            let off = (i % slots) * len;
            match dir {
                Dir::H2d => be.copy_h2d(Stream::Copy, host, off, dev, off, len),
                Dir::D2h => be.copy_d2h(Stream::Writeback, dev, off, host, off, len),
            }
        };
        let stream = if dir == Dir::H2d {
            Stream::Copy
        } else {
            Stream::Writeback
        };
        let us = time_per_call(be, stream, plan, stage, 256, &mut op)?;
        let gbps = sig4(bytes as f64 / (us * 1e3));
        points.push(BandwidthPoint { bytes, gbps });
        progress(CalibrationEvent::Step {
            stage,
            what: format!("{}: {gbps:.2} GB/s", human_bytes(bytes)),
        });
    }
    Ok(points)
}

/// Copies the whole of both buffers once each way, so that no page is first
/// touched (and faulted in) while being timed.
fn touch(be: &Backend, host: &HostBuf, dev: &DeviceBuf, len: usize) -> Result<(), KernelError> {
    be.copy_h2d(Stream::Copy, host, 0, dev, 0, len)?;
    be.synchronize()?;
    be.copy_d2h(Stream::Writeback, dev, 0, host, 0, len)?;
    be.synchronize()
}

pub(crate) fn link(
    be: &Backend,
    plan: &Plan,
    progress: &mut dyn FnMut(CalibrationEvent),
) -> Result<Link, ProfilerError> {
    let esz = be.dtype().bytes() as u64;
    let max = plan.link_sizes.iter().copied().max().unwrap_or(MIB);
    // At least 64 MiB of buffer so that small copies rotate through memory.
    let arena = (max.max(64 * MIB) / esz) as usize;
    let stage = "link";
    let host = be.alloc_host(arena).stage(stage)?;
    let dev = be.alloc(arena).stage(stage)?;
    touch(be, &host, &dev, arena).stage(stage)?;
    let h2d_pinned = sweep(be, plan, "link h2d pinned", Dir::H2d, &host, &dev, progress)?;
    let d2h_pinned = sweep(be, plan, "link d2h pinned", Dir::D2h, &host, &dev, progress)?;
    let (mut h2d_pageable, mut d2h_pageable) = (None, None);
    if plan.pageable {
        let page = be.alloc_host_pageable(arena).stage(stage)?;
        touch(be, &page, &dev, arena).stage(stage)?;
        h2d_pageable = Some(sweep(
            be,
            plan,
            "link h2d pageable",
            Dir::H2d,
            &page,
            &dev,
            progress,
        )?);
        d2h_pageable = Some(sweep(
            be,
            plan,
            "link d2h pageable",
            Dir::D2h,
            &page,
            &dev,
            progress,
        )?);
    }
    // Both directions at once: d2h from a second pair of buffers keeps the
    // writeback stream busy while the copy stream's h2d is timed.
    let bmax = plan.bidir_sizes.iter().copied().max().unwrap_or(MIB);
    let barena = (bmax.max(64 * MIB).min(max.max(64 * MIB)) / esz) as usize;
    let host_b = be.alloc_host(barena).stage(stage)?;
    let dev_b = be.alloc(barena).stage(stage)?;
    touch(be, &host_b, &dev_b, barena).stage(stage)?;
    let stage = "link bidirectional";
    let mut bidirectional = Vec::new();
    for &bytes in &plan.bidir_sizes {
        let len = (bytes / esz) as usize;
        let slots = (arena / len).max(1);
        let bslots = (barena / len).max(1);
        let n = ((16 * MIB / bytes) as usize).clamp(1, 64);
        let mut samples = Vec::new();
        for s in 0..=plan.samples {
            be.synchronize().stage(stage)?;
            for i in 0..n + 1 {
                let off = ((s * n + i) % bslots) * len;
                be.copy_d2h(Stream::Writeback, &dev_b, off, &host_b, off, len)
                    .stage(stage)?;
            }
            let a = be.record(Stream::Copy).stage(stage)?;
            for i in 0..n {
                let off = ((s * n + i) % slots) * len;
                be.copy_h2d(Stream::Copy, &host, off, &dev, off, len)
                    .stage(stage)?;
            }
            let b = be.record(Stream::Copy).stage(stage)?;
            let us = be.elapsed_us(&a, &b).stage(stage)? / n as f64;
            if s > 0 {
                samples.push(us);
            }
        }
        be.synchronize().stage(stage)?;
        let us = median(samples);
        if !(us.is_finite() && us > 0.0) {
            return Err(ProfilerError::Measurement {
                stage,
                reason: format!("{us} us per copy"),
            });
        }
        let gbps = sig4(bytes as f64 / (us * 1e3));
        bidirectional.push(BandwidthPoint { bytes, gbps });
        progress(CalibrationEvent::Step {
            stage,
            what: format!("{}: {gbps:.2} GB/s", human_bytes(bytes)),
        });
    }
    Ok(Link {
        h2d_pinned,
        d2h_pinned,
        h2d_pageable,
        d2h_pageable,
        bidirectional,
    })
}

/// Cheap, non-constant fill values.
fn pattern(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i.wrapping_mul(2654435761).wrapping_add(seed)) % 2001) as f32 - 1000.0) * 1e-3)
        .collect()
}

pub(crate) fn gemm(
    be: &Backend,
    plan: &Plan,
    progress: &mut dyn FnMut(CalibrationEvent),
    notes: &mut Vec<String>,
) -> Result<Vec<GemmPoint>, ProfilerError> {
    let mut points = Vec::new();
    for &dtype in &plan.gemm_dtypes {
        let other;
        let b = if dtype == be.dtype() {
            be
        } else {
            match Backend::new(
                be.spec(),
                BackendOptions {
                    link_gbps: None,
                    dtype: Some(dtype),
                },
            ) {
                Ok(x) => {
                    other = x;
                    &other
                }
                Err(e) => {
                    notes.push(format!("GEMM in {} not measured: {e}", dtype.name()));
                    continue;
                }
            }
        };
        let stage = "gemm";
        for (n, k, ms) in &plan.gemm_shapes {
            let (n, k) = (*n, *k);
            let m_max = ms.iter().copied().max().unwrap_or(1);
            // A decode step reads each weight matrix from memory once; a loop
            // over one matrix would run it hot in cache and price decode far
            // too fast. So the calls cycle through enough copies of the
            // matrix to exceed any cache.
            let copies = (COLD_WEIGHT_BYTES / (n * k * b.dtype().bytes()).max(1)).max(1);
            let w = b.upload(&pattern(n * k * copies, 1)).stage(stage)?;
            let x = b.upload(&pattern(m_max * k, 2)).stage(stage)?;
            let out = b.alloc(m_max * n).stage(stage)?;
            for &m in ms {
                let us = time_per_call(b, Stream::Compute, plan, stage, 1000, &mut |i| {
                    b.gemm(&x, 0, &w, (i % copies) * n * k, &out, 0, m, n, k)
                })?;
                let tflops = sig4(2.0 * (m * n * k) as f64 / (us * 1e-6) / 1e12);
                points.push(GemmPoint {
                    m: m as u64,
                    n: n as u64,
                    k: k as u64,
                    dtype,
                    tflops,
                });
                progress(CalibrationEvent::Step {
                    stage,
                    what: format!(
                        "{} m={m} n={n} k={k}: {:.1} GFLOP/s",
                        dtype.name(),
                        tflops * 1e3
                    ),
                });
            }
        }
    }
    Ok(points)
}

pub(crate) fn launch_overhead(
    be: &Backend,
    plan: &Plan,
    progress: &mut dyn FnMut(CalibrationEvent),
) -> Result<f64, ProfilerError> {
    let stage = "launch overhead";
    let a = be.upload(&[1.0]).stage(stage)?;
    let out = be.alloc(1).stage(stage)?;
    // The smallest op the backend has: a one-element add, else a 1x1x1 GEMM.
    let use_add = !matches!(
        be.add(&a, &a, &out, 1),
        Err(KernelError::Unsupported { .. })
    );
    let mut op = |_: usize| {
        if use_add {
            be.add(&a, &a, &out, 1)
        } else {
            be.gemm(&a, 0, &a, 0, &out, 0, 1, 1, 1)
        }
    };
    let us = time_per_call(be, Stream::Compute, plan, stage, plan.launch_reps, &mut op)?;
    progress(CalibrationEvent::Step {
        stage,
        what: format!("{us:.3} us per op"),
    });
    Ok(sig4(us))
}

pub(crate) fn attention(
    be: &Backend,
    plan: &Plan,
    progress: &mut dyn FnMut(CalibrationEvent),
    notes: &mut Vec<String>,
) -> Result<f64, ProfilerError> {
    let stage = "decode attention";
    let a = plan.attn;
    let q_len = a.batch * a.n_heads * a.head_dim;
    let kv_len = a.batch * a.kv_capacity * a.n_kv_heads * a.head_dim;
    let kv_bytes = 2.0 * kv_len as f64 * be.dtype().bytes() as f64;
    let q = be.upload(&pattern(q_len, 3)).stage(stage)?;
    let k = be.upload(&pattern(kv_len, 4)).stage(stage)?;
    let v = be.upload(&pattern(kv_len, 5)).stage(stage)?;
    let out = be.alloc(q_len).stage(stage)?;
    let gbps = match be.attention(&q, &k, &v, &out, a) {
        Err(KernelError::Unsupported { .. }) => {
            // No attention kernel yet: the device-to-device copy rate (bytes
            // read plus written) stands in for the K/V read rate.
            let us = time_per_call(be, Stream::Compute, plan, stage, 64, &mut |_| {
                be.copy_d2d(Stream::Compute, &k, 0, &v, 0, kv_len)
            })?;
            notes.push(format!(
                "attention_gbps: no attention kernel on {} yet; this is the device-to-device copy rate (read + write) of {}",
                be.name(),
                human_bytes(kv_bytes as u64 / 2)
            ));
            kv_bytes / (us * 1e3)
        }
        r => {
            r.stage(stage)?;
            let us = time_per_call(be, Stream::Compute, plan, stage, 64, &mut |_| {
                be.attention(&q, &k, &v, &out, a)
            })?;
            notes.push(format!(
                "attention_gbps: decode attention, batch {}, context {}, {} heads / {} KV heads x {}",
                a.batch, a.kv_capacity, a.n_heads, a.n_kv_heads, a.head_dim
            ));
            kv_bytes / (us * 1e3)
        }
    };
    progress(CalibrationEvent::Step {
        stage,
        what: format!("{gbps:.2} GB/s of K/V"),
    });
    Ok(sig4(gbps))
}
