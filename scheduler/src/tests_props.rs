//! Property tests: the LP against the exhaustive search, monotonicity in the
//! hardware's rates, the schedules' ordering, and the simulator against the plan.

use plans::{Dtype, HardwareProfile, ModelSpec, Schedule};
use proptest::prelude::*;

use crate::testutil::{forced, hw_id, model, profile, request, workload};
use crate::{make_plan, simulate, CostModel, ScheduleChoice, Solver};

/// `n` cases, or `PROPTEST_CASES` when set (for longer runs by hand).
fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

/// One random planning problem.
#[derive(Clone, Debug)]
struct Case {
    model: ModelSpec,
    hw: HardwareProfile,
    dtype: Dtype,
    batch: usize,
    s: usize,
    resident: usize,
    block: usize,
}

fn shape(mha_only: bool) -> impl Strategy<Value = ModelSpec> {
    (
        1usize..=40,
        prop::sample::select(vec![32usize, 64, 128]),
        any::<u32>(),
        0usize..4,
    )
        .prop_map(move |(layers, hd, pick, kv_log)| {
            let heads_lo = (64 / hd).max(1);
            let heads_hi = 8192 / hd;
            let heads = heads_lo + pick as usize % (heads_hi - heads_lo + 1);
            let div = if mha_only { 1 } else { 1 << kv_log };
            let kv = if (heads / div) * div == heads {
                heads / div
            } else {
                heads
            };
            model(layers, heads, kv, hd)
        })
}

/// Random curves; with `realistic`, rates never fall with size and times never
/// fall either (a bigger transfer or GEMM runs at least as fast per byte or row,
/// and never finishes sooner), as on real hardware.
fn hardware(dtype: Dtype, realistic: bool) -> impl Strategy<Value = HardwareProfile> {
    (
        prop::collection::vec((10u32..31, 1.0f64..100.0), 1..=6),
        prop::collection::vec((1u64..100_000, 0.05f64..500.0), 1..=6),
        100.0f64..5000.0,
        0.0f64..20.0,
    )
        .prop_map(move |(mut link, mut gemm, mem, launch)| {
            link.sort_by_key(|p| p.0);
            link.dedup_by_key(|p| p.0);
            let mut link: Vec<(u64, f64)> = link.iter().map(|&(e, g)| (1u64 << e, g)).collect();
            gemm.sort_by_key(|p| p.0);
            gemm.dedup_by_key(|p| p.0);
            if realistic {
                for v in [&mut link, &mut gemm] {
                    let mut rates: Vec<f64> = v.iter().map(|p| p.1).collect();
                    rates.sort_by(f64::total_cmp);
                    v.iter_mut().zip(rates).for_each(|(p, r)| p.1 = r);
                    for i in 1..v.len() {
                        let cap = v[i - 1].1 * v[i].0 as f64 / v[i - 1].0 as f64;
                        v[i].1 = v[i].1.min(cap);
                    }
                }
            }
            profile(&link, &gemm, dtype, mem, launch)
        })
}

fn case(mha_only: bool, max_s: usize) -> impl Strategy<Value = Case> {
    case_with(mha_only, max_s, false)
}

fn case_with(mha_only: bool, max_s: usize, realistic: bool) -> impl Strategy<Value = Case> {
    let dtype = prop::sample::select(vec![Dtype::F16, Dtype::Bf16, Dtype::F32]);
    (
        shape(mha_only),
        dtype,
        1usize..=64,
        16..=max_s,
        0.0f64..1.0,
        any::<bool>(),
    )
        .prop_flat_map(move |(m, dtype, batch, s, res_frac, no_resident)| {
            let resident = if no_resident {
                0
            } else {
                (res_frac * s as f64) as usize
            };
            (
                Just(m),
                hardware(dtype, realistic),
                Just(dtype),
                Just(batch),
                Just(s),
                Just(resident),
                prop::sample::select(vec![1usize, 8, 16, 64]),
            )
        })
        .prop_map(|(model, hw, dtype, batch, s, resident, block)| Case {
            model,
            hw,
            dtype,
            batch,
            s,
            resident,
            block,
        })
}

impl Case {
    fn cost_model(&self, hw: &HardwareProfile) -> CostModel {
        let w = workload(
            &self.model,
            self.batch,
            self.s,
            1,
            self.dtype,
            self.resident,
        );
        CostModel::new(&self.model, hw, &w).unwrap()
    }
    /// Recomputed tokens of the best split with exactly `c` chunks (or none).
    fn share(&self, hw: &HardwareProfile, c: usize) -> usize {
        let cm = self.cost_model(hw);
        let g = cm.resident_tokens(self.s);
        let per = cm
            .best_per_chunks(self.s, g, &[c], self.block, Solver::Lp, Schedule::Chunked)
            .unwrap();
        crate::solve::pick(&per).unwrap().recompute
    }
}

fn scaled(hw: &HardwareProfile, link: f64, gemm: f64) -> HardwareProfile {
    let mut hw = hw.clone();
    hw.link
        .h2d_pinned
        .points
        .iter_mut()
        .for_each(|p| p.gbps *= link);
    hw.gemm.points.iter_mut().for_each(|p| p.tflops *= gemm);
    hw
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn lp_matches_exhaustive(c in case(false, 16384)) {
        let cm = c.cost_model(&c.hw);
        let g = cm.resident_tokens(c.s);
        for sch in [Schedule::Paper, Schedule::Chunked] {
            let lp = cm.best_split(c.s, g, sch, c.block, Solver::Lp).unwrap();
            let ex = cm.best_split(c.s, g, sch, c.block, Solver::Exhaustive).unwrap();
            let rel = (lp.cost.step / ex.cost.step - 1.0).abs();
            prop_assert!(rel <= 1e-9, "{sch:?}: lp {lp:?} vs exhaustive {ex:?}");
            prop_assert!(lp.recompute % c.block == 0 || lp.recompute == c.s - g);
            if !c.model.recompute_saves_bytes() {
                prop_assert_eq!(lp.recompute, 0);
            }
        }
    }

    /// At every fixed chunk count too, where the LP's terms hold only from
    /// `c` recomputed tokens up (below, a split has fewer chunks). Found by
    /// `faster_link_recomputes_less_faster_gemm_more`: with 466 tokens off
    /// the device and 12 chunks asked for, the LP picked 7 tokens (7 chunks)
    /// where 11 tokens (11 chunks) make a faster step.
    #[test]
    fn lp_matches_exhaustive_at_each_chunk_count(c in case(false, 2048)) {
        let cm = c.cost_model(&c.hw);
        let g = cm.resident_tokens(c.s);
        for chunks in crate::CHUNK_CANDIDATES {
            let best = |solver| {
                let per = cm
                    .best_per_chunks(c.s, g, &[chunks], c.block, solver, Schedule::Chunked)
                    .unwrap();
                crate::solve::pick(&per).unwrap()
            };
            let (lp, ex) = (best(Solver::Lp), best(Solver::Exhaustive));
            let rel = (lp.cost.step / ex.cost.step - 1.0).abs();
            prop_assert!(rel <= 1e-9, "c = {chunks}: lp {lp:?} vs exhaustive {ex:?}");
        }
    }

    /// For the paper schedule (one chunk) and for every fixed chunk count, on
    /// realistic curves (see `hardware`).
    ///
    /// Not claimed: (1) on arbitrary curves: where a bigger GEMM finishes
    /// sooner, or small transfers run faster per byte than big ones, the best
    /// split can move the other way; (2) for `chunked` with the chunk count
    /// free: a faster GEMM can make fewer chunks (less per-transfer overhead)
    /// the best choice, and fewer chunks recompute a little less (seen: c 6 ->
    /// 4 and l 2048 -> 1984 for a 1.14x faster GEMM, a one-block step back).
    #[test]
    fn faster_link_recomputes_less_faster_gemm_more(
        c in case_with(true, 8192, true),
        k in 1.05f64..4.0,
    ) {
        for chunks in crate::CHUNK_CANDIDATES {
            let base = c.share(&c.hw, chunks);
            let link = c.share(&scaled(&c.hw, k, 1.0), chunks);
            let gemm = c.share(&scaled(&c.hw, 1.0, k), chunks);
            prop_assert!(link <= base, "c = {chunks}: link x{k}: {base} -> {link}");
            prop_assert!(gemm >= base, "c = {chunks}: gemm x{k}: {base} -> {gemm}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), ..ProptestConfig::default() })]

    #[test]
    fn chunked_beats_paper_beats_transfer(c in case(false, 4096), gen in 1usize..64) {
        let w = workload(&c.model, c.batch, c.s, gen, c.dtype, c.resident);
        let plan = |sch| {
            make_plan(&c.model, &c.hw, hw_id(&c.hw), &w, &request(ScheduleChoice::Fixed(sch), c.block, Solver::Lp))
                .unwrap()
        };
        let (t, p, ch) = (plan(Schedule::Transfer), plan(Schedule::Paper), plan(Schedule::Chunked));
        let tol = 1.0 + 1e-12;
        // Each plan's split is solved at the end of every block; compare there
        // (a merged step's prediction is at its own last context).
        let cm = CostModel::new(&c.model, &c.hw, &w).unwrap();
        for (_, e) in crate::context_ranges(&w, c.block) {
            let at = |pl: &plans::Plan| {
                let st = pl.step_for(e).unwrap();
                let g = st.resident_tokens.min(e);
                let l = st.recompute_tokens.min(e - g);
                cm.step(e, g, l, st.chunks, pl.schedule).step
            };
            let (a, b, d) = (at(&t), at(&p), at(&ch));
            prop_assert!(b <= a * tol && d <= b * tol, "context {e}: {a} {b} {d}");
        }
        let (a, b, d) = (&t.summary, &p.summary, &ch.summary);
        prop_assert!(b.predicted_decode_step_us <= a.predicted_decode_step_us * tol);
        prop_assert!(d.predicted_decode_step_us <= b.predicted_decode_step_us * tol);
        prop_assert!((a.transfer_only_step_us / d.transfer_only_step_us - 1.0).abs() < 1e-12);
        let auto = make_plan(&c.model, &c.hw, hw_id(&c.hw), &w, &request(ScheduleChoice::Auto, c.block, Solver::Lp)).unwrap();
        prop_assert!(auto.summary.predicted_decode_step_us <= d.predicted_decode_step_us * tol);
    }

    /// The simulator replays the plan op by op. The brief allows 10% between the
    /// closed form and the replay (the closed form assumes every layer after the
    /// first settles to the same period); the derivation in `cost` shows the
    /// period is reached from the second layer on for every chunk count, so
    /// the two agree to rounding and we hold them to 1e-6.
    #[test]
    fn simulator_agrees_with_plan(
        c in case(false, 2048),
        gen in 1usize..40,
        frac in prop::option::of(0.0f64..=1.0),
        chunks in 1usize..8,
        at in 0.0f64..1.0,
    ) {
        let w = workload(&c.model, c.batch, c.s, gen, c.dtype, c.resident);
        let req = match frac {
            Some(f) => forced(f, None, Some(chunks)),
            None => request(ScheduleChoice::Auto, c.block, Solver::Lp),
        };
        let plan = make_plan(&c.model, &c.hw, hw_id(&c.hw), &w, &req).unwrap();
        let ctx = c.s + ((gen - 1) as f64 * at) as usize;
        let tl = simulate(&plan, &c.hw, ctx).unwrap();
        let rel = (tl.simulated_step_us / tl.predicted_step_us - 1.0).abs();
        prop_assert!(rel < 1e-6, "{rel}");
        crate::testutil::check_streams(&tl, c.model.n_layers);
    }
}
