//! The cost model of one decode step: per-layer transfer, recompute, attention
//! and dense times from the hardware profile, and the step they add up to.
//!
//! Times are seconds here (µs only in the plan). Per layer, with `b` batch, `s`
//! tokens cached, `h` hidden size, `h_kv` K/V width, `p` bytes per element, and
//! the context split into resident `[0, g)`, recomputed `[g, g+l)` and
//! transferred `[g+l, s)`, the activations sent in `c` chunks:
//!
//! - `t_x = c * tl(b * (l/c) * h * p)`: the activation chunks over the link;
//! - `t_kv = tl(b * (s-g-l) * 2 * h_kv * p)`: the transferred K/V;
//! - `r`: recomputing one chunk (two GEMMs of `b*l/c` rows, RoPE on K and the
//!   scatters of K and V into place, 5 launches; plus, where the model has
//!   them, the K and V bias adds and the k-norm, each one more pass over the
//!   rows and one more launch);
//! - `kv_ready = max(t_x + t_kv, t_x/c + c*r, t_x + r)`: the layer's K/V are all
//!   on the GPU (chunk `i` of `X` lands at `(i+1) * t_x/c`, recomputation of
//!   chunk `i` starts when it has landed and the previous chunk is done; the
//!   chain's finish is linear in `i`, so one of its ends is the latest);
//! - `compute_busy = c*r + t_attn + t_dense`: the compute stream's work per layer;
//! - `period P = max(kv_ready, compute_busy)`.
//!
//! **Why a step is about the sum over layers of `max(I/O, compute)`**: the
//! runtime issues layer `i+1`'s copies right after layer `i`'s, as soon as the
//! staging buffer they land in is free, i.e. once the attention of layer
//! `i-1` (the last reader of that buffer: there are two) is done. So the copy
//! stream does not wait for layer `i`'s recomputation: its tail `r` overlaps
//! the next layer's copies. In steady state a layer every `P` seconds, with
//! `P` the longest of the pipeline's three loops:
//!
//! - the copy stream's work per layer, `t_x + t_kv`;
//! - the compute stream's, `compute_busy = c*r + t_attn + t_dense`;
//! - the staging loop: layer `i+2`'s copies start after layer `i`'s K/V are
//!   ready (`kv_ready` after its copies started) and its attention ran, two
//!   periods after layer `i`'s copies started: `2P >= kv_ready + t_attn`.
//!
//! The first layer's copies start at time 0, its K/V are ready at `kv_ready`,
//! each later layer's `P` after, and the last layer's attention, MLP and the
//! head follow its K/V:
//!
//! `step = kv_ready + (L-1) * P + t_attn + t_dense + t_head`,
//!
//! with `t_head` the final norm and output projection after the last layer.
//! (An earlier model let each layer's copies wait for the previous layer's
//! recomputation, adding its tail `r` to every period: on an H200 it
//! over-predicted `recompute-all` by 19%.)

use plans::{BandwidthCurve, Dtype, HardwareProfile, ModelSpec, Schedule, Workload};

use crate::curves::{link_breakpoints, RowsCurve};
use crate::SchedError;
use plans::human_bytes;

/// The cost of one decode step at one split; times in seconds, bytes per layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCost {
    /// Activation chunks over the link, one layer, s: `c * tl(b*(l/c)*h*p)`.
    pub t_x: f64,
    /// Transferred K/V over the link, one layer, s: `tl(b*(s-g-l)*2*h_kv*p)`.
    pub t_kv: f64,
    /// Recomputing one chunk, s: `2 * max(gemm(b*l/c rows, h_kv, h), h_kv*h*p / mem_bw) + e * b*(l/c)*h_kv*p*2 / mem_bw + (4 + e) * launch`
    /// (each GEMM reads its weights, W_k or W_v, whatever its rows)
    /// (0 if `l = 0`), where `e` is the number of elementwise passes over the recomputed K/V
    /// rows (RoPE on K, plus the K and V biases and the k-norm where the model has them:
    /// `ModelSpec::recompute_passes`) and the 2 more launches scatter K and V into place.
    pub r: f64,
    /// Decode attention of one layer, s: `b*(s+1)*2*h_kv*p / mem_bw + launch`.
    pub t_attn: f64,
    /// The layer's dense part (projections and MLP), s: `sum_i gemm_i(b) + n * launch`
    /// over the layer's GEMMs `(n_i, k_i)` (see [`CostModel::gemm_at`]), with `n` the
    /// launches the layer issues besides attention (`ModelSpec::layer_launches`, 16 for
    /// plain Llama).
    pub t_dense: f64,
    /// The output head and the rest of the step outside the layers, s: `gemm(b rows,
    /// vocab, h) + 4 * launch` (the embedding, the final norm, the head's GEMM, the argmax).
    pub t_head: f64,
    /// One layer, from the start of its copies until all its K/V are on the GPU, s.
    pub kv_ready: f64,
    /// The compute stream's work for one layer, s: `c*r + t_attn + t_dense`.
    pub compute_busy: f64,
    /// Per-layer period in the pipeline, s: `max(t_x + t_kv, compute_busy,
    /// (kv_ready + t_attn) / 2)`: the copy stream's work, the compute
    /// stream's, and the loop through the two staging buffers (a layer's
    /// copies wait for the attention of the layer two before).
    pub period: f64,
    /// A whole decode step, s: `kv_ready + (L-1)*period + t_attn + t_dense + t_head`.
    pub step: f64,
    /// Activation bytes over the link, one layer: `b*l*h*p`.
    pub io_bytes_x: f64,
    /// K/V bytes over the link, one layer: `b*(s-g-l)*2*h_kv*p`.
    pub io_bytes_kv: f64,
}

/// Seconds for one dense GEMM of `m` rows at shape `(n, k)`: from the profile's
/// points at exactly `(n, k)` for `dtype` when it has them (`kvpr calibrate
/// --model` measures the model's own shapes, so the projections' and the
/// head's throughput at small `m` is read, not guessed); otherwise from
/// `fallback` (the curve nearest `(h, h)`) scaled by FLOPs,
/// `n*k/(h*h) * fallback(m)`, at least the weights' read time
/// `n*k*p / mem_bw`: a GEMM reads its whole weight matrix whatever `m`, and
/// a profile measured only at large `m` (a datasheet's one point) would
/// otherwise price a decode step's projections at a hundredth of that.
/// Measured points at the shape itself already include that read, and are
/// taken as they are: `mem_bw` is the attention kernel's measured K/V read
/// rate, which on a CPU is a quarter of the rate a GEMM streams its weights
/// at (SmolLM2 on this project's 2-core machine: a 32 ms step was
/// predicted at 80 ms when the read floor applied to its measured shapes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_at(
    hw: &HardwareProfile,
    dtype: Dtype,
    n: usize,
    k: usize,
    m: f64,
    fallback: &RowsCurve,
    h: usize,
    p: f64,
    mem_bw: f64,
) -> f64 {
    let exact: Vec<(u64, f64)> = {
        let mut v: Vec<(u64, f64)> = hw
            .gemm
            .points
            .iter()
            .filter(|pt| pt.dtype == dtype && pt.n == n as u64 && pt.k == k as u64)
            .map(|pt| (pt.m, pt.tflops))
            .collect();
        v.sort_by_key(|pt| pt.0);
        v.dedup_by_key(|pt| pt.0);
        v
    };
    let (nk, hh) = (n as f64 * k as f64, h as f64 * h as f64);
    let floor = nk * p / mem_bw;
    if let Some(curve) = RowsCurve::new(&exact, n, k) {
        return curve.seconds(m);
    }
    (nk / hh * fallback.seconds(m)).max(floor)
}

/// The cost model of one model on one profile for one workload, built once.
#[derive(Clone, Debug)]
pub struct CostModel {
    /// `L`: decoder layers.
    n_layers: usize,
    /// `b`: sequences decoded together.
    batch: f64,
    /// `h`: hidden size (activation width).
    h: f64,
    /// `h_kv`: K (and V) width per token.
    h_kv: f64,
    /// Width of Q and of the attention output.
    q_dim: f64,
    /// `p`: bytes per element.
    p: f64,
    /// Parameters of one layer's matrices.
    layer_params: f64,
    /// Host-to-device pinned link.
    link: BandwidthCurve,
    /// GEMM time of the K/V projections, `(n, k) = (h_kv, h)`.
    rec_gemm: RowsCurve,
    /// Device memory bandwidth, bytes/s.
    mem_bw: f64,
    /// One kernel launch, s.
    launch: f64,
    /// The launches each part issues.
    launches: Launches,
    /// Elementwise passes over recomputed K/V rows, each reading and writing
    /// `h_kv` values a row: RoPE on K (1), the K and V biases (2), the
    /// k-norm (1); see [`elementwise_passes`].
    rec_passes: f64,
    /// A sliding attention window `W` (Mistral): a step at context `s` reads
    /// only positions `[s + 1 - W, s)` of the cache; see [`CostModel::window_start`].
    window: Option<usize>,
    /// Highest GEMM throughput on the profile for the dtype, FLOP/s.
    peak_flops: f64,
    /// `t_dense` (independent of the context), s.
    t_dense: f64,
    /// `t_head` (independent of the context), s.
    t_head: f64,
    staging_bytes: u64,
    resident_bytes_per_token: u64,
    max_resident: usize,
    saves_bytes: bool,
    /// The hardware profile's name, for messages.
    pub(crate) profile: String,
}

/// Device memory the executor needs besides the resident prefix (and the
/// weights), bytes: the staging buffers of 2 layers in flight, each with room
/// for a whole context of K/V and activations, `2 * (b*S*2*h_kv*p + b*S*h*p)`,
/// the recomputed K/V before they are scattered, `b*S*2*h_kv*p`, and the
/// step's own buffers (new token, activations, logits, ids), with `S =
/// workload.max_context_len() + 1`, and the prefill's own activations over
/// `b * prompt_len` rows, held while the resident prefix fills:
/// `plans::ExecutorBytes`, the one account the executor's allocations are
/// held to.
pub fn staging_bytes(model: &ModelSpec, workload: &Workload) -> u64 {
    // The executor runs up to `max_context_len() + 1` positions.
    let capacity = workload.max_context_len().saturating_add(1);
    let b = plans::ExecutorBytes::new(
        model,
        workload.batch,
        capacity,
        0,
        workload.prompt_len,
        workload.dtype.bytes(),
    );
    b.total().saturating_sub(b.resident)
}

/// The kernel launches the cost model prices, per part, as the executor
/// issues them (a test counts them on the CPU backend).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Launches {
    /// A layer's dense part: [`ModelSpec::layer_launches`].
    layer: f64,
    /// A layer's attention.
    attention: f64,
    /// One recomputed chunk: [`ModelSpec::recompute_launches`].
    recompute: f64,
    /// The step outside the layers: [`ModelSpec::step_launches`].
    step: f64,
}

impl Launches {
    fn of(model: &ModelSpec) -> Self {
        Launches {
            layer: model.layer_launches() as f64,
            attention: 1.0,
            recompute: model.recompute_launches() as f64,
            step: model.step_launches() as f64,
        }
    }
}

/// Elementwise passes over recomputed K/V rows after their two GEMMs
/// ([`ModelSpec::recompute_passes`]): each reads and writes `h_kv` values a
/// row at the profile's attention bandwidth and costs a launch. Plain Llama:
/// 1 (RoPE on K). The scatters of K and V into place are priced as launches
/// only: on the H200 pricing their bytes at the attention bandwidth put
/// `recompute-all` 23% slow against the bench (a device copy runs nearer the
/// memory's copy bandwidth).
pub fn elementwise_passes(model: &ModelSpec) -> f64 {
    model.recompute_passes() as f64
}

impl CostModel {
    /// Reads the curves the model needs for this workload's dtype and checks the
    /// GPU budget holds the staging buffers. The model's own maximum context is
    /// not checked here (`make_plan` does, through `Workload::validate`), so
    /// studies may evaluate longer contexts.
    pub fn new(
        model: &ModelSpec,
        hw: &HardwareProfile,
        workload: &Workload,
    ) -> Result<Self, SchedError> {
        if workload.batch == 0 {
            return Err(SchedError::Invalid {
                field: plans::Field::Batch,
                reason: "must be at least 1".into(),
            });
        }
        let dtype = workload.dtype;
        let (h, h_kv) = (model.hidden_size, model.kv_dim());
        let no_points = || SchedError::NoGemmPoints {
            dtype,
            profile: hw.name.clone(),
            available: {
                let d: Vec<&str> = hw.gemm.dtypes().iter().map(|d| d.name()).collect();
                if d.is_empty() {
                    "no dtype".into()
                } else {
                    d.join(", ")
                }
            },
        };
        let p_bytes = workload.dtype.bytes() as f64;
        let mem_bw_rec = hw.attention_gbps.value * 1e9;
        // Each recomputed chunk's GEMMs read W_k and W_v whatever its rows.
        let rec_gemm = RowsCurve::new(&hw.gemm.rows_curve(dtype, h_kv as u64, h as u64), h_kv, h)
            .ok_or_else(no_points)?
            .with_floor(if mem_bw_rec > 0.0 {
                h_kv as f64 * h as f64 * p_bytes / mem_bw_rec
            } else {
                0.0
            });
        let dense_gemm = RowsCurve::new(&hw.gemm.rows_curve(dtype, h as u64, h as u64), h, h)
            .ok_or_else(no_points)?;
        let peak_tflops = hw
            .gemm
            .points
            .iter()
            .filter(|pt| pt.dtype == dtype && pt.tflops.is_finite())
            .map(|pt| pt.tflops)
            .fold(0.0, f64::max);
        let mem_bw = hw.attention_gbps.value * 1e9;
        if !(mem_bw.is_finite() && mem_bw > 0.0) || hw.link.h2d_pinned.points.is_empty() {
            return Err(SchedError::Profile {
                profile: hw.name.clone(),
                reason: "attention_gbps must be positive and link.h2d_pinned must have points; \
                         re-run `kvpr calibrate`"
                    .into(),
            });
        }
        let launch = (hw.launch_overhead_us.value * 1e-6).max(0.0);
        let b = workload.batch as f64;
        let p = workload.dtype.bytes() as f64;
        let layer_params = model.layer_params() as f64;
        let hf = h as f64;
        let gemm = |(n, k): (usize, usize)| gemm_at(hw, dtype, n, k, b, &dense_gemm, h, p, mem_bw);
        let launches = Launches::of(model);
        let t_dense =
            model.layer_gemms().into_iter().map(gemm).sum::<f64>() + launches.layer * launch;
        let t_head = gemm(model.head_gemm()) + launches.step * launch;

        let staging = staging_bytes(model, workload);
        let resident_bytes_per_token = model.kv_bytes(workload.batch, workload.dtype.bytes());
        let budget = workload.gpu_memory_budget;
        if budget < staging {
            return Err(SchedError::GpuBudget {
                budget: human_bytes(budget),
                batch: workload.batch,
                context: workload.max_context_len(),
                staging: human_bytes(staging),
            });
        }
        let max_resident =
            ((budget - staging) / resident_bytes_per_token.max(1)).min(usize::MAX as u64) as usize;
        Ok(CostModel {
            n_layers: model.n_layers,
            batch: b,
            h: hf,
            h_kv: h_kv as f64,
            q_dim: model.q_dim() as f64,
            p,
            layer_params,
            link: hw.link.h2d_pinned.clone(),
            rec_gemm,
            mem_bw,
            launch,
            launches,
            rec_passes: elementwise_passes(model),
            window: model.arch.sliding_window,
            peak_flops: peak_tflops * 1e12,
            t_dense,
            t_head,
            staging_bytes: staging,
            resident_bytes_per_token,
            max_resident,
            saves_bytes: model.recompute_saves_bytes(),
            profile: hw.name.clone(),
        })
    }

    /// `L`: decoder layers.
    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    /// Whether recomputation can save link bytes (`h < 2*h_kv`).
    pub fn recompute_saves_bytes(&self) -> bool {
        self.saves_bytes
    }

    /// `G`: resident tokens that fit the GPU budget after the staging buffers:
    /// `(budget - staging) / (L*b*2*h_kv*p)`.
    pub fn max_resident_tokens(&self) -> usize {
        self.max_resident
    }

    /// `g = min(s, G)`: resident tokens at context `s`.
    pub fn resident_tokens(&self, s: usize) -> usize {
        s.min(self.max_resident)
    }

    /// Staging buffers, bytes (see [`staging_bytes`]).
    /// The kernel launches one decode step issues with `chunks` recomputed
    /// chunks per layer (0: nothing recomputed), as priced: per layer the
    /// dense part's, attention's and each chunk's, then the step's own.
    pub fn launches(&self, chunks: usize) -> usize {
        let l = &self.launches;
        let layer = l.layer + l.attention + chunks as f64 * l.recompute;
        (self.n_layers as f64 * layer + l.step) as usize
    }

    pub fn staging_bytes(&self) -> u64 {
        self.staging_bytes
    }

    /// Device bytes per resident token, all layers: `L*b*2*h_kv*p`.
    pub fn resident_bytes_per_token(&self) -> u64 {
        self.resident_bytes_per_token
    }

    /// Link time of `bytes`, s (the profile's pinned host-to-device curve).
    pub(crate) fn tl(&self, bytes: f64) -> f64 {
        self.link.seconds(bytes)
    }

    /// I/O floor of a step, s: the bytes that must cross the link at the least,
    /// `L * tl(b*(s-g)*min(h, 2*h_kv)*p)`.
    pub fn io_floor(&self, s: usize, g: usize) -> f64 {
        let n = s.saturating_sub(g.max(self.window_start(s))) as f64;
        let width = self.h.min(2.0 * self.h_kv);
        self.n_layers as f64 * self.tl(self.batch * n * width * self.p)
    }

    /// Compute floor of a step, s: `L * (2*b*params + 4*b*(s+1)*q_dim) / F_peak`
    /// (weights' FLOPs plus attention FLOPs over the best measured throughput).
    pub fn compute_floor(&self, s: usize) -> f64 {
        let keys = (s - self.window_start(s)) as f64 + 1.0;
        let flops = 2.0 * self.batch * self.layer_params + 4.0 * self.batch * keys * self.q_dim;
        self.n_layers as f64 * flops / self.peak_flops
    }

    /// Decode attention of one layer at context `s`, s: `b*(s+1)*2*h_kv*p / mem_bw + launch`.
    pub(crate) fn t_attn(&self, s: f64) -> f64 {
        self.batch * (s + 1.0) * 2.0 * self.h_kv * self.p / self.mem_bw
            + self.launches.attention * self.launch
    }

    /// The layer's dense part, s (see [`StepCost::t_dense`]).
    pub(crate) fn t_dense(&self) -> f64 {
        self.t_dense
    }

    /// `t_x`, `t_kv` and `r` at real-valued `l` (with `n = s - g` non-resident
    /// tokens), without the `l = 0` special case: `r` keeps its launches at
    /// `l = 0`, which is the linear extension the LP needs. Seconds.
    pub(crate) fn raw_terms(&self, n: f64, l: f64, c: f64) -> (f64, f64, f64) {
        let (b, h, h_kv, p) = (self.batch, self.h, self.h_kv, self.p);
        let per_chunk = l / c;
        let t_x = c * self.tl(b * per_chunk * h * p);
        let t_kv = self.tl(b * (n - l).max(0.0) * 2.0 * h_kv * p);
        let rows = b * per_chunk;
        let e = self.rec_passes;
        let passes = e * rows * h_kv * p * 2.0 / self.mem_bw;
        let r = 2.0 * self.rec_gemm.seconds_from_zero(rows)
            + passes
            + self.launches.recompute * self.launch;
        (t_x, t_kv, r)
    }

    /// The values of `l` in `(0, n)` where one of `t_x`, `t_kv`, `r` changes
    /// slope (the curves' points mapped to `l` for `c` chunks), unsorted.
    pub(crate) fn breakpoints(&self, n: f64, c: f64) -> Vec<f64> {
        let (b, h, h_kv, p) = (self.batch, self.h, self.h_kv, self.p);
        let mut v: Vec<f64> = Vec::new();
        for bytes in link_breakpoints(&self.link) {
            v.push(bytes * c / (b * h * p)); // X chunk bytes b*(l/c)*h*p
            v.push(n - bytes / (b * 2.0 * h_kv * p)); // K/V bytes b*(n-l)*2*h_kv*p
        }
        v.extend(self.rec_gemm.breakpoints().map(|m| m * c / b)); // rows b*l/c
        v.retain(|&x| x > 0.0 && x < n);
        v
    }

    /// The first cached position a decode step at context `s` reads: `s + 1 - W`
    /// with a sliding window of `W` positions (the new token's query sees its
    /// last `W` positions, itself included), else 0. Positions before it are
    /// neither moved nor recomputed: a windowed model's link cost is bounded by
    /// `W` whatever the context.
    pub fn window_start(&self, s: usize) -> usize {
        self.window.map_or(0, |w| (s + 1).saturating_sub(w))
    }

    /// The cost of a decode step at context `s` with `g` resident and `l`
    /// recomputed tokens in `c` chunks under `schedule`. Out-of-range inputs
    /// are clamped: `g <= s`, `l <= s - g`, `c >= 1`; `transfer` forces `l = 0`,
    /// `paper` forces `c = 1`. With a sliding window the ranges are clipped
    /// to the positions the step reads ([`CostModel::window_start`]).
    pub fn step(&self, s: usize, g: usize, l: usize, c: usize, schedule: Schedule) -> StepCost {
        let g = g.min(s);
        let (l, c) = match schedule {
            Schedule::Transfer => (0, 1),
            Schedule::Paper => (l.min(s - g), 1),
            Schedule::Chunked => (l.min(s - g), c.max(1)),
        };
        self.step_clipped(s, g, l, c)
    }

    /// [`CostModel::step_real`] on the ranges a step reads: resident, recomputed
    /// and transferred tokens clipped to `[window_start(s), s)`, attention over
    /// the keys the window leaves.
    pub(crate) fn step_clipped(&self, s: usize, g: usize, l: usize, c: usize) -> StepCost {
        let lo = self.window_start(s);
        let start = g.max(lo);
        let l = (g + l).saturating_sub(start);
        self.step_real((s - lo) as f64, (s - start) as f64, l as f64, c as f64)
    }

    /// [`CostModel::step`] on real numbers: context `s` (the keys attention
    /// reads, less one), `n = s - g` non-resident tokens, `l` recomputed, `c`
    /// chunks (already valid).
    pub(crate) fn step_real(&self, s: f64, n: f64, l: f64, c: f64) -> StepCost {
        let (mut t_x, t_kv, mut r) = self.raw_terms(n, l, c);
        if l <= 0.0 {
            t_x = 0.0;
            r = 0.0;
        }
        let kv_ready = (t_x + t_kv).max(t_x / c + c * r).max(t_x + r);
        let t_attn = self.t_attn(s);
        let compute_busy = c * r + t_attn + self.t_dense;
        let period = (t_x + t_kv)
            .max(compute_busy)
            .max((kv_ready + t_attn) / 2.0);
        let step =
            kv_ready + (self.n_layers as f64 - 1.0) * period + t_attn + self.t_dense + self.t_head;
        StepCost {
            t_x,
            t_kv,
            r,
            t_attn,
            t_dense: self.t_dense,
            t_head: self.t_head,
            kv_ready,
            compute_busy,
            period,
            step,
            io_bytes_x: self.batch * l * self.h * self.p,
            io_bytes_kv: self.batch * (n - l).max(0.0) * 2.0 * self.h_kv * self.p,
        }
    }
}

impl CostModel {
    /// The profile figures the LP's coefficients come from, for messages.
    pub(crate) fn lp_figures(&self) -> String {
        let link: Vec<String> = self
            .link
            .points
            .iter()
            .map(|p| format!("{:e} GB/s at {} B", p.gbps, p.bytes))
            .collect();
        format!(
            "link.h2d_pinned [{}], peak gemm {:e} TFLOP/s, attention_gbps {:e}, launch_overhead_us {:e}",
            link.join(", "),
            self.peak_flops / 1e12,
            self.mem_bw / 1e9,
            self.launch * 1e6
        )
    }
}
