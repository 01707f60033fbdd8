//! Issue 20: the paged engine takes requests that come and go. Each holds a
//! region of the host store from `add_request` to `finish`; a finished
//! request's region serves the next, and a request decodes the same tokens
//! whatever came before it in its region, at every policy's host use
//! (swap-out to the region, offloaded prefixes read from it).

use kernels::{Backend, BackendOptions, DeviceSpec};
use runtime::{Model, ModelSource, PagedConfig, PagedEngine, RuntimeError};

fn cpu() -> Backend {
    Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
}

fn config(host_tokens: usize) -> PagedConfig {
    PagedConfig {
        block_size: 4,
        capacity_blocks: 16,
        max_batch: 2,
        keep_activations: true,
        max_request_tokens: 24,
        host_tokens,
    }
}

/// `n` greedy tokens of each `(id, prompt)`, decoded together, each swapped
/// out and back in half way and with its first block offloaded for the
/// rest, so every region is written and read while the others are in use.
fn generate(eng: &mut PagedEngine, reqs: &[(usize, &[u32])], n: usize) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = reqs
        .iter()
        .map(|&(id, p)| vec![eng.prefill(id, p).unwrap()])
        .collect();
    while out[0].len() < n {
        if out[0].len() == n / 2 {
            for &(id, _) in reqs {
                eng.swap_out(id, 0).unwrap();
                eng.swap_in(id, 0).unwrap();
                eng.offload(id, 1).unwrap();
            }
        }
        let batch: Vec<(usize, usize)> = reqs.iter().map(|&(id, _)| (id, 2)).collect();
        for (o, t) in out.iter_mut().zip(eng.decode(&batch).unwrap()) {
            o.push(t);
        }
    }
    out
}

#[test]
fn a_finished_requests_region_serves_the_next_with_the_same_tokens() {
    let be = cpu();
    let src = ModelSource::Preset {
        name: "tiny-mha".into(),
        seed: 3,
    };
    let model = Model::load(&src, &be).unwrap();
    let prompts: [Vec<u32>; 3] = [
        (1..=11).collect(),
        (40..=52).rev().collect(),
        (7..=16).map(|t| t * 3).collect(),
    ];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut eng = PagedEngine::new(&be, &model, config(24)).unwrap();
            eng.add_request(0, 24).unwrap();
            generate(&mut eng, &[(0, p)], 10).remove(0)
        })
        .collect();
    // Room for two requests at once: the third waits for the first's region.
    let mut eng = PagedEngine::new(&be, &model, config(48)).unwrap();
    eng.add_request(10, 24).unwrap();
    eng.add_request(11, 24).unwrap();
    match eng.add_request(12, 24) {
        Err(RuntimeError::HostStoreFull {
            free: 0, total: 48, ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let first = generate(&mut eng, &[(10, &prompts[0]), (11, &prompts[1])], 10);
    assert_eq!(first, [alone[0].clone(), alone[1].clone()]);
    eng.finish(10);
    assert_eq!(eng.host_tokens_free(), (24, 48));
    // 12 takes 10's region while 11 keeps its own: both run again together.
    eng.add_request(12, 24).unwrap();
    eng.drop_kv(11).unwrap();
    let second = generate(&mut eng, &[(12, &prompts[2]), (11, &prompts[1])], 10);
    assert_eq!(second, [alone[2].clone(), alone[1].clone()]);
    eng.finish(11);
    eng.finish(12);
    assert_eq!(eng.host_tokens_free(), (48, 48));
    assert_eq!(eng.blocks_used(), 0);
    // Past the engine's longest request, present already, or unknown.
    assert!(eng.add_request(13, 25).is_err());
    eng.add_request(13, 8).unwrap();
    assert!(eng.add_request(13, 8).is_err());
    assert!(eng.prefill(14, &[1, 2]).is_err());
}
