//! Issue 19, findings 9 and 10: the device bytes each engine allocates are
//! exactly what `plans` accounts for it, and the planner and the memory
//! flags use that account.
//! - The executor: `plans::ExecutorBytes`, which the planner's GPU budget
//!   (`scheduler::staging_bytes`) and the executor's memory checks use.
//!   Before, the recomputed K/V buffers and prefill's activations were
//!   outside the plan's budget.
//! - The paged serving engine: `plans::PagedBytes`, which its memory check,
//!   `overflow --kv-memory-fraction`/`--device-memory` and `run
//!   --gpu-memory-budget` use. Before, its gathered K/V and staged `X` were
//!   outside `--kv-memory-fraction`.

use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::{ExecutorBytes, PagedBytes, StoreLayout, Workload};
use runtime::{Executor, Model, ModelSource, PagedConfig, PagedEngine};

fn cpu() -> Backend {
    Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
}

fn preset(be: &Backend, name: &str) -> Model {
    let src = ModelSource::Preset {
        name: name.into(),
        seed: 1,
    };
    Model::load(&src, be).unwrap()
}

#[test]
fn the_executor_allocates_exactly_what_is_accounted() {
    let be = cpu();
    for name in ["tiny-mha", "tiny-variants"] {
        let model = preset(&be, name);
        let s = model.spec().clone();
        for (batch, capacity, resident) in [(1, 17, 0), (3, 40, 16), (2, 64, 64)] {
            let layout = StoreLayout {
                max_resident: resident,
                ..StoreLayout::all_resident(capacity)
            };
            let before = be.allocated_bytes();
            let mut ex = Executor::new(&be, &model, layout, batch, capacity).unwrap();
            let allocated = be.allocated_bytes() - before;
            let prompt = capacity - 1;
            let want = ExecutorBytes::new(&s, batch, capacity, resident, prompt, 4);
            let what = format!("{name}, batch {batch}, capacity {capacity}, resident {resident}");
            assert_eq!(allocated, want.run(), "{what}: {want:?}");
            // Prefill allocates its own activations and ids, and only those.
            let before = be.allocated_bytes();
            ex.prefill(&vec![1; batch * prompt], prompt).unwrap();
            assert_eq!(be.allocated_bytes() - before, want.prefill, "{what}");
            drop(ex);
            // The planner's budget is the same account, less the resident prefix.
            let w = Workload {
                batch,
                prompt_len: prompt,
                gen_len: 1,
                dtype: plans::Dtype::F32,
                gpu_memory_budget: 0,
                host_memory_budget: 0,
            };
            assert_eq!(
                scheduler::staging_bytes(&s, &w),
                want.total() - want.resident
            );
        }
    }
}

#[test]
fn the_paged_engine_allocates_exactly_what_is_accounted() {
    let be = cpu();
    for name in ["tiny-mha", "tiny-variants"] {
        let model = preset(&be, name);
        let s = model.spec().clone();
        let cases = [
            // block, capacity, batch, keep X, tokens of each request
            (4, 9, 2, false, vec![17, 5, 9]),
            (8, 3, 3, true, vec![20, 20, 3]),
            (1, 40, 1, true, vec![33]),
        ];
        for (block_size, capacity, max_batch, keep, tokens) in cases {
            let cfg = PagedConfig {
                block_size,
                capacity_blocks: capacity,
                max_batch,
                keep_activations: keep,
                max_request_tokens: *tokens.iter().max().unwrap(),
                host_tokens: PagedConfig::host_tokens_for(&tokens, block_size),
            };
            let shape = cfg.shape();
            let want = PagedBytes::new(&s, &shape, capacity, 4);
            let what = format!("{name}, {cfg:?}: {want:?}");
            let before = be.allocated_bytes();
            let mut eng = PagedEngine::new(&be, &model, cfg).unwrap();
            assert_eq!(be.allocated_bytes() - before, want.engine(), "{what}");
            // A prefill allocates its own buffers: those of its length, at
            // most what is accounted (the longest request's).
            let prefill_of = |n: usize| {
                let shape = plans::PagedShape {
                    longest: n,
                    ..shape
                };
                PagedBytes::new(&s, &shape, capacity, 4).prefill
            };
            assert_eq!(prefill_of(shape.longest), want.prefill);
            let p = tokens[0].min(capacity * block_size);
            eng.add_request(0, tokens[0]).unwrap();
            let before = be.allocated_bytes();
            eng.prefill(0, &vec![1; p]).unwrap();
            let prefill = be.allocated_bytes() - before;
            assert_eq!(prefill, prefill_of(p), "{what}");
            assert!(prefill <= want.prefill, "{what}");
            // A budget of what the engine takes holds exactly its pool.
            assert_eq!(
                PagedBytes::blocks_within(&s, &shape, 4, want.total()),
                capacity,
                "{what}"
            );
            assert_eq!(
                PagedBytes::blocks_within(&s, &shape, 4, want.total() - 1),
                capacity - 1,
                "{what}"
            );
        }
    }
}

/// Issue 19, finding 10: the launches the cost model prices are the
/// launches a decode step issues, counted on the backend. Before, a layer
/// was priced at 8 launches and issued 16 (and recomputing a chunk at 3,
/// issuing 5): on a GPU where launches matter the step was under-priced.
#[test]
fn launches_priced_are_launches_issued() {
    let be = cpu();
    let hw_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plans/hardware/cpu-reference.json");
    let hw = plans::HardwareProfile::load(&hw_path).unwrap();
    for name in ["tiny-mha", "tiny-variants"] {
        let model = preset(&be, name);
        let s = model.spec().clone();
        let (batch, prompt, capacity) = (2, 12, 16);
        let w = Workload {
            batch,
            prompt_len: prompt,
            gen_len: capacity - prompt,
            dtype: plans::Dtype::F32,
            gpu_memory_budget: u64::MAX / 4,
            host_memory_budget: u64::MAX / 4,
        };
        let cost = scheduler::CostModel::new(&s, &hw, &w).unwrap();
        // (resident, recomputed, chunks): transfer only, and recomputation
        // in one and in three chunks.
        for (g, l, chunks) in [(2, 0, 1), (2, 6, 1), (0, 9, 3)] {
            let layout = StoreLayout::from_steps([(g, l, capacity)]);
            let mut ex = Executor::new(&be, &model, layout, batch, capacity).unwrap();
            ex.prefill(&vec![3; batch * prompt], prompt).unwrap();
            ex.choose(None).unwrap();
            let split = plans::Split {
                g,
                l,
                s: prompt,
                chunks,
            };
            let before = be.launches();
            ex.step(split).unwrap();
            ex.choose(None).unwrap();
            let issued = be.launches() - before;
            let priced = cost.launches(if l > 0 { chunks } else { 0 });
            assert_eq!(issued as usize, priced, "{name}, {split:?}");
        }
    }
}

/// Issue 19, finding 10: `partial`'s recomputed share is rounded once, by
/// the scheduler; the engine copies out exactly the blocks the scheduler
/// counted. Before, the engine rounded the kept tokens down again, so a
/// context kept whole (20 tokens, blocks of 8) still had its partial last
/// block copied out, and bytes moved that the scheduler had not counted.
#[test]
fn the_engine_moves_the_blocks_the_scheduler_counted() {
    let be = cpu();
    let model = preset(&be, "tiny-mha");
    let s = model.spec().clone();
    let cfg = PagedConfig {
        block_size: 8,
        capacity_blocks: 8,
        max_batch: 1,
        keep_activations: true,
        max_request_tokens: 24,
        host_tokens: 24,
    };
    let mut eng = PagedEngine::new(&be, &model, cfg).unwrap();
    eng.add_request(0, 24).unwrap();
    let prompt: Vec<u32> = (1..=20).collect();
    for (keep, out_tokens) in [(20, 0), (16, 4), (8, 12), (0, 20)] {
        eng.prefill(0, &prompt).unwrap();
        let before = eng.counters.bytes_out;
        eng.swap_out(0, keep).unwrap();
        let moved = eng.counters.bytes_out - before;
        assert_eq!(moved, s.kv_bytes(out_tokens, 4), "keeping {keep}");
        eng.swap_in(0, keep).unwrap();
        eng.drop_kv(0).unwrap();
    }
    // A share that is not whole blocks is the scheduler's bug, refused.
    eng.prefill(0, &prompt).unwrap();
    let e = eng.swap_out(0, 12).unwrap_err().to_string();
    assert!(e.contains("12 leading tokens of 20"), "{e}");
}
