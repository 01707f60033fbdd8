//! Issue 19, findings 9 and 10: the device bytes the executor allocates are
//! exactly what `plans::ExecutorBytes` accounts, which the planner's GPU
//! budget (`scheduler::staging_bytes`) and the executor's memory check both
//! use. Before, the recomputed K/V buffers were outside the plan's budget.

use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::{ExecutorBytes, StoreLayout, Workload};
use runtime::{Executor, Model, ModelSource};

#[test]
fn the_executor_allocates_exactly_what_is_accounted() {
    let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap();
    for name in ["tiny-mha", "tiny-variants"] {
        let src = ModelSource::Preset {
            name: name.into(),
            seed: 1,
        };
        let model = Model::load(&src, &be).unwrap();
        let s = model.spec().clone();
        for (batch, capacity, resident) in [(1, 17, 0), (3, 40, 16), (2, 64, 64)] {
            let layout = StoreLayout {
                max_resident: resident,
                ..StoreLayout::all_resident(capacity)
            };
            let before = be.allocated_bytes();
            let ex = Executor::new(&be, &model, layout, batch, capacity).unwrap();
            let allocated = be.allocated_bytes() - before;
            drop(ex);
            let want = ExecutorBytes::new(&s, batch, capacity, resident, 4);
            assert_eq!(
                allocated,
                want.total(),
                "{name}, batch {batch}, capacity {capacity}, resident {resident}: {want:?}"
            );
            // The planner's budget is the same account, less the resident prefix.
            let w = Workload {
                batch,
                prompt_len: capacity - 1,
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
