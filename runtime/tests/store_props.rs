//! Property tests of the host store's accounting: for random plans, every
//! position the executor reads has been written, and the store holds exactly
//! the bytes the plan's summary says.

use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::{
    Dtype, ModelSpec, Plan, PlanHardware, Schedule, Split, Step, StoreLayout, Summary, Workload,
    PLAN_SCHEMA,
};
use proptest::prelude::*;
use runtime::{HostStore, Stored};

/// A plan with random (valid) splits over block-sized context ranges.
fn random_plan(prompt: usize, gen: usize, block: usize, picks: &[(u8, u8, u8)]) -> Plan {
    let workload = Workload {
        batch: 2,
        prompt_len: prompt,
        gen_len: gen,
        dtype: Dtype::F32,
        gpu_memory_budget: 1 << 30,
        host_memory_budget: 1 << 30,
    };
    let max = workload.max_context_len();
    let mut steps = vec![];
    let mut from = prompt;
    let mut i = 0;
    while from <= max {
        let to = ((from / block + 1) * block - 1).min(max);
        let (a, b, c) = picks[i % picks.len()];
        i += 1;
        // Resident and recomputed tokens must fit in the shortest context of the range.
        let g = usize::from(a) * from / 255;
        let l = usize::from(b) * (from - g) / 255;
        steps.push(Step {
            context_len_from: from,
            context_len_to: to,
            resident_tokens: g,
            recompute_tokens: l,
            transfer_tokens: to - g - l,
            chunks: (1 + usize::from(c) % 4).min(l.max(1)),
            kv_ready_us: 1.0,
            step_us: 1.0,
            first_step_us: None,
        });
        from = to + 1;
    }
    Plan {
        schema: PLAN_SCHEMA.into(),
        kvpr_version: plans::KVPR_VERSION.into(),
        model: ModelSpec::preset("tiny-mha").unwrap(),
        hardware: PlanHardware {
            name: "t".into(),
            fingerprint: "0".into(),
        },
        workload,
        schedule: Schedule::Chunked,
        block_tokens: block,
        steps,
        summary: Summary {
            predicted_decode_step_us: 1.0,
            transfer_only_step_us: 1.0,
            io_floor_step_us: 1.0,
            compute_floor_step_us: 1.0,
            speedup_vs_transfer: 1.0,
            host_memory_bytes: 0,
            gpu_memory_bytes: 0,
            recompute_saves_bytes: true,
        },
        notes: vec![],
    }
}

/// The scheduler's definition, computed naively: X for every position in some
/// `[g, g+l)`, K/V for every position in some `[g+l, context_len_to)`.
fn naive_bytes(plan: &Plan, spec: &ModelSpec) -> u64 {
    let max = plan.workload.max_context_len() + 1;
    let (mut x, mut kv) = (vec![false; max], vec![false; max]);
    for st in &plan.steps {
        let (g, l) = (st.resident_tokens, st.recompute_tokens);
        x[g..g + l].iter_mut().for_each(|v| *v = true);
        kv[g + l..st.context_len_to]
            .iter_mut()
            .for_each(|v| *v = true);
    }
    let count = |v: &[bool]| v.iter().filter(|b| **b).count();
    let per_layer = count(&x) * spec.hidden_size + count(&kv) * 2 * spec.kv_dim();
    (per_layer * spec.n_layers * plan.workload.batch * 4) as u64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn reads_follow_writes_and_bytes_match(
        prompt in 1usize..24,
        gen in 1usize..24,
        block in 1usize..6,
        picks in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let plan = random_plan(prompt, gen, block, &picks);
        plan.validate(std::path::Path::new("random.json")).unwrap();
        let spec = plan.model.clone();
        let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap();
        let layout = StoreLayout::for_plan(&plan);
        let cap = plan.workload.max_context_len() + 1;
        let mut store = HostStore::new(&be, layout, spec.n_layers, 2, spec.hidden_size, spec.kv_dim(), cap).unwrap();
        prop_assert_eq!(store.host_bytes(&spec, Dtype::F32), naive_bytes(&plan, &spec));
        // Prefill writes the prompt; each decode step reads its split, then writes its token.
        let write = |store: &mut HostStore, a: usize, b: usize| {
            for li in 0..spec.n_layers {
                for p in a..b {
                    if store.stores(Stored::X, p).is_some() { store.mark_written(Stored::X, li, p, p + 1); }
                    if store.stores(Stored::Kv, p).is_some() { store.mark_written(Stored::Kv, li, p, p + 1); }
                }
            }
        };
        write(&mut store, 0, prompt);
        for s in prompt..=plan.workload.max_context_len() {
            let sp = Split::at(&plan, s).unwrap();
            prop_assert!(sp.g + sp.l <= s);
            for li in 0..spec.n_layers {
                store.read_range(Stored::X, li, sp.g, sp.g + sp.l).unwrap();
                store.read_range(Stored::Kv, li, sp.g + sp.l, s).unwrap();
            }
            write(&mut store, s, s + 1);
        }
    }
}

#[test]
fn a_read_before_its_write_is_refused() {
    let plan = random_plan(4, 4, 2, &[(0, 128, 0)]);
    let spec = plan.model.clone();
    let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap();
    let store = HostStore::new(
        &be,
        StoreLayout::for_plan(&plan),
        spec.n_layers,
        2,
        spec.hidden_size,
        spec.kv_dim(),
        8,
    )
    .unwrap();
    let e = store
        .read_range(Stored::Kv, 1, 2, 4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1") && e.contains("before it was written"),
        "{e}"
    );
}
