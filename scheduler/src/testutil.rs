//! Fixtures shared by the tests: the shipped profiles, synthetic profiles and
//! models, and workload builders.

use std::path::Path;

use plans::{
    BandwidthCurve, BandwidthPoint, DeviceInfo, DeviceKind, Dtype, Family, GemmCurve, GemmPoint,
    HardwareProfile, LinkCurves, ModelSpec, PlanHardware, Scalar, Source, Workload,
    HARDWARE_SCHEMA,
};

use crate::{
    staging_bytes, ForcedSplit, OpKind, PlanRequest, ScheduleChoice, Solver, StreamKind, Timeline,
};

/// A shipped profile from `plans/hardware/`.
pub fn shipped(name: &str) -> HardwareProfile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plans/hardware")
        .join(format!("{name}.json"));
    HardwareProfile::load(&path).expect("shipped profile loads")
}

pub fn hw_id(hw: &HardwareProfile) -> PlanHardware {
    PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    }
}

/// A profile from `(bytes, gbps)` link points and `(m, tflops)` GEMM points,
/// the GEMM points measured at `(n, k) = (4096, 4096)` for `dtype`.
pub fn profile(
    link: &[(u64, f64)],
    gemm: &[(u64, f64)],
    dtype: Dtype,
    mem_gbps: f64,
    launch_us: f64,
) -> HardwareProfile {
    let curve = BandwidthCurve {
        source: Source::Measured,
        points: link
            .iter()
            .map(|&(bytes, gbps)| BandwidthPoint { bytes, gbps })
            .collect(),
    };
    HardwareProfile {
        schema: HARDWARE_SCHEMA.into(),
        name: "synthetic".into(),
        device: DeviceInfo {
            kind: DeviceKind::Cuda,
            name: "synthetic".into(),
            memory_bytes: 1 << 34,
            pcie_generation: None,
            pcie_width: None,
            driver: None,
            compute_capability: None,
            extra: Default::default(),
        },
        link: LinkCurves {
            h2d_pinned: curve.clone(),
            d2h_pinned: curve,
            h2d_pageable: None,
            d2h_pageable: None,
            bidirectional: None,
        },
        gemm: GemmCurve {
            source: Source::Measured,
            points: gemm
                .iter()
                .map(|&(m, tflops)| GemmPoint {
                    m,
                    n: 4096,
                    k: 4096,
                    dtype,
                    tflops,
                })
                .collect(),
        },
        attention_gbps: Scalar {
            source: Source::Measured,
            value: mem_gbps,
        },
        launch_overhead_us: Scalar {
            source: Source::Measured,
            value: launch_us,
        },
        measured_at: None,
        kvpr_version: None,
        notes: vec![],
    }
}

/// A synthetic Llama-family shape.
pub fn model(n_layers: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> ModelSpec {
    let h = n_heads * head_dim;
    ModelSpec {
        name: format!("synthetic-{n_layers}x{h}-kv{n_kv_heads}"),
        family: Family::Llama,
        n_layers,
        hidden_size: h,
        n_heads,
        n_kv_heads,
        head_dim,
        intermediate_size: h * 8 / 3,
        vocab_size: 32000,
        max_context: 1 << 20,
        rope_theta: 1e4,
        norm_eps: 1e-5,
        tie_embeddings: false,
        arch: Default::default(),
        fingerprint: format!("synthetic-{n_layers}-{n_heads}-{n_kv_heads}-{head_dim}"),
    }
}

/// A workload whose GPU budget is the staging plus `resident` tokens and
/// whose host budget is unlimited.
pub fn workload(
    model: &ModelSpec,
    batch: usize,
    prompt_len: usize,
    gen_len: usize,
    dtype: Dtype,
    resident: usize,
) -> Workload {
    let mut w = Workload {
        batch,
        prompt_len,
        gen_len,
        dtype,
        gpu_memory_budget: 0,
        host_memory_budget: u64::MAX,
    };
    let per_token = model.kv_bytes(batch, dtype.bytes());
    w.gpu_memory_budget = staging_bytes(model, &w) + resident as u64 * per_token;
    w
}

pub fn request(schedule: ScheduleChoice, block: usize, solver: Solver) -> PlanRequest {
    PlanRequest {
        schedule,
        block_tokens: block,
        solver,
        forced: None,
    }
}

pub fn forced(fraction: f64, resident: Option<usize>, chunks: Option<usize>) -> PlanRequest {
    PlanRequest {
        schedule: ScheduleChoice::Auto,
        block_tokens: 16,
        solver: Solver::Lp,
        forced: Some(ForcedSplit {
            recompute_fraction: fraction,
            resident_tokens: resident,
            chunks,
        }),
    }
}

/// Asserts a timeline's ops never overlap within a stream and honour their
/// dependencies: recompute after its chunk landed, attention after all K/V,
/// dense after attention, a layer's copies after the attention of the layer
/// two before (the last reader of the staging buffer they land in).
pub fn check_streams(tl: &Timeline, n_layers: usize) {
    const EPS: f64 = 1e-9;
    for stream in [StreamKind::Copy, StreamKind::Compute] {
        let ops: Vec<_> = tl.ops.iter().filter(|o| o.stream == stream).collect();
        for w in ops.windows(2) {
            assert!(
                w[1].start_us >= w[0].end_us - EPS,
                "overlap on {stream:?}: {w:?}"
            );
        }
    }
    let mut attn_ends: Vec<f64> = Vec::with_capacity(n_layers);
    for layer in 0..n_layers {
        let ops: Vec<_> = tl.ops.iter().filter(|o| o.layer == layer).collect();
        let find = |k: OpKind| ops.iter().find(|o| o.kind == k).expect("op present");
        let (attn, dense, kv) = (
            find(OpKind::Attention),
            find(OpKind::Dense),
            find(OpKind::KvCopy),
        );
        assert!(dense.start_us >= attn.end_us - EPS && attn.start_us >= kv.end_us - EPS);
        for rec in ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Recompute { .. }))
        {
            let OpKind::Recompute { chunk } = rec.kind else {
                continue;
            };
            let x = find(OpKind::ActivationCopy { chunk });
            assert!(rec.start_us >= x.end_us - EPS && attn.start_us >= rec.end_us - EPS);
        }
        if let Some(free) = layer.checked_sub(2).map(|i| attn_ends[i]) {
            for o in ops.iter().filter(|o| o.stream == StreamKind::Copy) {
                assert!(o.start_us >= free - EPS, "layer {layer} copies start early");
            }
        }
        attn_ends.push(attn.end_us);
    }
}
