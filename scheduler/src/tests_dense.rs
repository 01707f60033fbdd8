//! The dense part of a step is priced from the profile's GEMM points at the
//! model's own shapes when it has them, and from the curve nearest `(h, h)`
//! otherwise (profiles written before `calibrate --model` measured them).

use plans::{Dtype, GemmPoint, ModelSpec};

use crate::cost::CostModel;
use crate::testutil::{model, profile, workload};

const LINK: [(u64, f64); 1] = [(1 << 20, 10.0)];
const LAUNCH_US: f64 = 2.0;
const MEM_GBPS: f64 = 1e6; // the weights' read time never binds here
/// A plain Llama layer issues 16 launches besides attention (the executor
/// counts them: `runtime/tests/accounting.rs`); the step 4 outside the
/// layers (embedding, final norm, head, argmax).
const LAYER_LAUNCHES: f64 = 16.0;
const STEP_LAUNCHES: f64 = 4.0;

#[test]
fn a_profile_with_points_at_the_models_shapes_prices_each_projection_from_them() {
    let m = model(2, 4, 4, 64);
    let mut hw = profile(
        &LINK,
        &[(1, 1.0), (64, 4.0)],
        Dtype::F32,
        MEM_GBPS,
        LAUNCH_US,
    );
    // Each shape at its own throughput: 0.01 TFLOP/s at m = 1, 0.04 at m = 16.
    let mut shapes = m.layer_gemms();
    shapes.push(m.head_gemm());
    shapes.sort_unstable();
    shapes.dedup();
    for &(n, k) in &shapes {
        for (mm, tflops) in [(1, 0.01), (16, 0.04)] {
            hw.gemm.points.push(GemmPoint {
                m: mm,
                n: n as u64,
                k: k as u64,
                dtype: Dtype::F32,
                tflops,
            });
        }
    }
    let w = workload(&m, 1, 64, 8, Dtype::F32, 0);
    let cm = CostModel::new(&m, &hw, &w).unwrap();
    let at_m1 = |(n, k): (usize, usize)| 2.0 * (n * k) as f64 / 0.01e12;
    let want_dense: f64 =
        m.layer_gemms().into_iter().map(at_m1).sum::<f64>() + LAYER_LAUNCHES * LAUNCH_US * 1e-6;
    let want_head = at_m1(m.head_gemm()) + STEP_LAUNCHES * LAUNCH_US * 1e-6;
    let c = cm.step(64, 0, 0, 1, plans::Schedule::Transfer);
    assert!(
        (c.t_dense / want_dense - 1.0).abs() < 1e-12,
        "{} vs {want_dense}",
        c.t_dense
    );
    assert!(
        (c.t_head / want_head - 1.0).abs() < 1e-12,
        "{} vs {want_head}",
        c.t_head
    );
    // Between measured rows the time is interpolated (batch 4: between m = 1 and m = 16).
    let w4 = workload(&m, 4, 64, 8, Dtype::F32, 0);
    let c4 = CostModel::new(&m, &hw, &w4)
        .unwrap()
        .step(64, 0, 0, 1, plans::Schedule::Transfer);
    assert!(c4.t_dense > c.t_dense && c4.t_dense < 4.0 * c.t_dense);
}

#[test]
fn without_points_at_the_models_shapes_the_dense_part_falls_back_to_the_nearest_curve() {
    let m = model(2, 4, 4, 64);
    let hw = profile(
        &LINK,
        &[(1, 1.0), (64, 4.0)],
        Dtype::F32,
        MEM_GBPS,
        LAUNCH_US,
    );
    let w = workload(&m, 1, 64, 8, Dtype::F32, 0);
    let c = CostModel::new(&m, &hw, &w)
        .unwrap()
        .step(64, 0, 0, 1, plans::Schedule::Transfer);
    // The 4096 x 4096 curve at m = 1 (1 TFLOP/s), scaled by each shape's FLOPs.
    let per_param = 2.0 / 1e12;
    let want_dense = m.layer_params() as f64 * per_param + LAYER_LAUNCHES * LAUNCH_US * 1e-6;
    let (v, h) = m.head_gemm();
    let want_head = (v * h) as f64 * per_param + STEP_LAUNCHES * LAUNCH_US * 1e-6;
    assert!(
        (c.t_dense / want_dense - 1.0).abs() < 1e-12,
        "{} vs {want_dense}",
        c.t_dense
    );
    assert!(
        (c.t_head / want_head - 1.0).abs() < 1e-12,
        "{} vs {want_head}",
        c.t_head
    );
}

#[test]
fn the_output_head_is_part_of_the_step() {
    let m = model(2, 4, 4, 64);
    let hw = profile(
        &LINK,
        &[(1, 1.0), (64, 4.0)],
        Dtype::F32,
        MEM_GBPS,
        LAUNCH_US,
    );
    // Two models that differ only in the vocabulary: their steps differ by
    // exactly the difference of their heads, which is not zero (issue 19:
    // the test restated the step's formula).
    let step = |m: &ModelSpec| {
        let w = workload(m, 1, 64, 8, Dtype::F32, 0);
        CostModel::new(m, &hw, &w)
            .unwrap()
            .step(64, 0, 0, 1, plans::Schedule::Transfer)
    };
    let mut big = m.clone();
    big.vocab_size *= 8;
    let (a, b) = (step(&m), step(&big));
    assert!(b.t_head > a.t_head, "{} vs {}", b.t_head, a.t_head);
    let d = (b.step - a.step) - (b.t_head - a.t_head);
    assert!(
        d.abs() < 1e-12 * b.step,
        "steps differ by more than their heads: {d}"
    );
}
