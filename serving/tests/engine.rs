//! Issue 20: the engine's dynamic API. Requests added while others run,
//! aborted mid-way, or ended by a stop token: every one ends with exactly
//! one `Finished` event and the reason, nothing decodes after it ended, an
//! aborted request's blocks and host region are freed, and every request
//! that ran to its end has the greedy tokens it gets alone.

use kernels::{Backend, BackendOptions, DeviceSpec};
use plans::ModelSource;
use runtime::{Model, Sampling};
use scheduler::Policy;
use serving::{Engine, EngineConfig, Event, FinishReason, RequestParams, ServingError, Step};

fn cpu() -> Backend {
    Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
}

fn model(be: &Backend) -> Model {
    Model::load(&ModelSource::parse("preset:tiny-mha").unwrap(), be).unwrap()
}

fn config(policy: Policy, capacity_blocks: usize, host_tokens: usize) -> EngineConfig {
    EngineConfig {
        policy,
        block_size: 4,
        capacity_blocks,
        max_running: 4,
        max_request_tokens: 40,
        host_tokens,
        partial_share: 0.5,
        offload_share: 0.5,
        offload_admit_blocks: 0,
    }
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|t| ((i * 37 + t * 11 + 3) % 250) as u32 + 1)
        .collect()
}

/// Runs to the end; returns every event.
fn drain(e: &mut Engine) -> Vec<Event> {
    let mut all = Vec::new();
    for _ in 0..10_000 {
        match e.step(1e9).unwrap() {
            Step::Done => return all,
            Step::Ran(ev) => all.extend(ev),
            Step::Idle { .. } => panic!("idle with requests left"),
        }
    }
    panic!("did not finish");
}

/// `n` greedy tokens of `p` alone, on a roomy engine.
fn alone(be: &Backend, m: &Model, p: &[u32], n: usize) -> Vec<u32> {
    alone_with(be, m, p, n, Sampling::GREEDY)
}

/// `n` tokens of `p` alone, chosen by `sampling`.
fn alone_with(be: &Backend, m: &Model, p: &[u32], n: usize, sampling: Sampling) -> Vec<u32> {
    let roomy = EngineConfig {
        max_request_tokens: 128,
        ..config(Policy::Swap, 64, 128)
    };
    let mut e = Engine::new(be, m, roomy).unwrap();
    let params = RequestParams {
        max_tokens: n,
        sampling,
        ..Default::default()
    };
    e.add_request(0.0, p.to_vec(), params).unwrap();
    drain(&mut e);
    e.output(0).unwrap().to_vec()
}

fn sampled(temperature: f32, seed: u64) -> Sampling {
    Sampling {
        temperature,
        top_k: None,
        top_p: None,
        seed,
    }
}

/// Sampling is per request: a request's draws depend on its prompt, its
/// knobs and its seed, not on the batch it runs in, its row there, or the
/// preemptions and offloads the cache forces on it.
#[test]
fn each_request_samples_with_its_own_knobs_whatever_runs_beside_it() {
    let be = cpu();
    let m = model(&be);
    let knobs = [
        sampled(1.0, 7),
        Sampling {
            top_k: Some(5),
            ..sampled(0.7, 7)
        },
        Sampling {
            top_p: Some(0.8),
            ..sampled(1.3, 99)
        },
        Sampling::GREEDY,
        sampled(1.0, 8),
    ];
    let lens = [(9, 12), (14, 10), (5, 16), (11, 10), (9, 12)];
    let prompt_of = |i: usize| prompt(i.min(3), lens[i].0);
    let solo: Vec<Vec<u32>> = (0..knobs.len())
        .map(|i| alone_with(&be, &m, &prompt_of(i), lens[i].1, knobs[i]))
        .collect();
    // Requests 0 and 4 share a prompt and knobs but not a seed.
    assert_ne!(solo[0], solo[4], "the seed makes no difference");
    assert_ne!(
        solo[0],
        alone(&be, &m, &prompt_of(0), 12),
        "sampling is greedy"
    );
    for policy in Policy::ALL {
        let mut e = Engine::new(&be, &m, config(policy, 12, 40 * 8)).unwrap();
        // In reverse order, so each request sits at another row than alone.
        for i in (0..knobs.len()).rev() {
            let params = RequestParams {
                max_tokens: lens[i].1,
                sampling: knobs[i],
                ..Default::default()
            };
            e.add_request(0.0, prompt_of(i), params).unwrap();
        }
        drain(&mut e);
        for (i, want) in solo.iter().enumerate() {
            let id = knobs.len() - 1 - i;
            assert_eq!(e.output(id).unwrap(), want, "{policy:?}: request {i}");
        }
    }
}

#[test]
fn requests_come_and_go_and_each_ends_once_with_its_own_tokens() {
    let be = cpu();
    let m = model(&be);
    for policy in Policy::ALL {
        // A cache of a third of what the requests hold at once: pressure.
        let mut e = Engine::new(&be, &m, config(policy, 12, 40 * 8)).unwrap();
        let lens = [(9, 12), (14, 8), (5, 16), (11, 10), (7, 14), (13, 9)];
        let mut ends = vec![Vec::new(); lens.len()];
        let mut after_end = Vec::new();
        let mut ended = vec![false; lens.len()];
        let mut record = |ev: &[Event], ended: &mut Vec<bool>| {
            for &x in ev {
                match x {
                    Event::Token { id, .. } if ended[id] => after_end.push(id),
                    Event::Finished { id, reason } => {
                        ends[id].push(reason);
                        ended[id] = true;
                    }
                    _ => {}
                }
            }
        };
        let add = |e: &mut Engine, i: usize| {
            let params = RequestParams {
                max_tokens: lens[i].1,
                stop_ids: vec![],
                ..Default::default()
            };
            assert_eq!(e.add_request(0.0, prompt(i, lens[i].0), params).unwrap(), i);
        };
        for i in 0..3 {
            add(&mut e, i);
        }
        for round in 0..40 {
            if let Step::Ran(ev) = e.step(1.0).unwrap() {
                record(&ev, &mut ended);
            }
            match round {
                2 => add(&mut e, 3),
                4 => {
                    // Request 1 is aborted mid-way, once; again is nothing.
                    let ev = e.abort(1).unwrap().expect("it was running");
                    record(&[ev], &mut ended);
                    assert!(e.abort(1).unwrap().is_none());
                }
                5 => add(&mut e, 4),
                7 => add(&mut e, 5),
                _ => {}
            }
        }
        let rest = drain(&mut e);
        record(&rest, &mut ended);
        assert!(after_end.is_empty(), "{policy:?}: tokens after the end");
        for (i, end) in ends.iter().enumerate() {
            let want = if i == 1 {
                FinishReason::Abort
            } else {
                FinishReason::Length
            };
            assert_eq!(end, &[want], "{policy:?}: request {i}");
            if i != 1 {
                let got = e.output(i).unwrap();
                assert_eq!(
                    got,
                    alone(&be, &m, &prompt(i, lens[i].0), lens[i].1),
                    "{policy:?}: {i}"
                );
            }
        }
        assert_eq!(e.blocks_used(), 0, "{policy:?}");
    }
}

#[test]
fn a_stop_token_ends_a_request_with_its_reason_and_frees_it() {
    let be = cpu();
    let m = model(&be);
    let p = prompt(2, 9);
    let free = alone(&be, &m, &p, 12);
    let stop = free[5];
    let first = free.iter().position(|&t| t == stop).unwrap();
    let mut e = Engine::new(&be, &m, config(Policy::Swap, 16, 80)).unwrap();
    let params = RequestParams {
        max_tokens: 12,
        stop_ids: vec![stop],
        ..Default::default()
    };
    e.add_request(0.0, p, params).unwrap();
    let ev = drain(&mut e);
    assert_eq!(e.output(0).unwrap(), &free[..=first]);
    let ends: Vec<_> = ev
        .iter()
        .filter_map(|x| match x {
            Event::Finished { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [FinishReason::Stop]);
    assert_eq!(e.blocks_used(), 0);
}

#[test]
fn requests_the_engine_cannot_take_are_refused_and_hold_nothing() {
    let be = cpu();
    let m = model(&be);
    // Room in the host store for one request of 40 tokens.
    let mut e = Engine::new(&be, &m, config(Policy::Offload, 16, 40)).unwrap();
    let params = |n| RequestParams {
        max_tokens: n,
        stop_ids: vec![],
        ..Default::default()
    };
    let too_long = e.add_request(0.0, prompt(0, 30), params(11)).unwrap_err();
    assert!(
        matches!(&too_long, ServingError::Request { field, .. } if field == "max_tokens"),
        "{too_long}"
    );
    // Bad sampling is refused by its field, holding nothing.
    for (sampling, field) in [
        (sampled(-1.0, 1), "temperature"),
        (
            Sampling {
                top_k: Some(0),
                ..sampled(1.0, 1)
            },
            "top_k",
        ),
        (
            Sampling {
                top_p: Some(1.5),
                ..sampled(1.0, 1)
            },
            "top_p",
        ),
    ] {
        let p = RequestParams {
            sampling,
            ..params(4)
        };
        let err = e.add_request(0.0, prompt(1, 4), p).unwrap_err();
        assert!(
            matches!(&err, ServingError::Request { field: f, .. } if f == field),
            "{err}"
        );
    }
    assert!(e.add_request(0.0, vec![], params(4)).is_err());
    let a = e.add_request(0.0, prompt(1, 20), params(20)).unwrap();
    let full = e.add_request(0.0, prompt(2, 4), params(4)).unwrap_err();
    assert!(matches!(full, ServingError::Full(_)), "{full}");
    // The refused one spent an id and holds nothing; the engine runs on.
    let ev = drain(&mut e);
    assert!(ev.contains(&Event::Finished {
        id: a,
        reason: FinishReason::Length
    }));
    let b = e.add_request(0.0, prompt(2, 4), params(4)).unwrap();
    assert_eq!(b, a + 2);
    drain(&mut e);
    assert_eq!(e.output(b).unwrap().len(), 4);
}

/// Under `offload`, a prompt four times the device's whole K/V cache is
/// served, not refused: its oldest blocks go to the host at prefill and
/// stream back every step. Alone, and beside requests admitted the same
/// way within the link's budget, each gets the tokens it gets unpressured.
#[test]
fn a_prompt_four_times_the_cache_completes_with_its_unpressured_tokens() {
    let be = cpu();
    let m = model(&be);
    // A cache of 4 blocks of 4 tokens; a prompt of 64.
    let cfg = |admit: usize| EngineConfig {
        max_request_tokens: 80,
        offload_admit_blocks: admit,
        ..config(Policy::Offload, 4, 80 * 4)
    };
    let big = prompt(5, 64);
    let want = alone(&be, &m, &big, 10);
    let mut e = Engine::new(&be, &m, cfg(0)).unwrap();
    let params = |n| RequestParams {
        max_tokens: n,
        ..Default::default()
    };
    e.add_request(0.0, big.clone(), params(10)).unwrap();
    let ev = drain(&mut e);
    assert_eq!(e.output(0).unwrap(), want);
    assert!(
        ev.contains(&Event::Offloaded { id: 0, blocks: 12 }),
        "the prompt's first 12 of 16 blocks go to the host at prefill: {ev:?}"
    );
    assert!(
        e.counters().bytes_in > 0,
        "the prefix never crossed the link"
    );
    assert_eq!(e.blocks_used(), 0);
    // With three more requests at once: the budget admits them beside it.
    let others = [(7, 9), (20, 6), (11, 12)];
    let mut e = Engine::new(&be, &m, cfg(40)).unwrap();
    e.add_request(0.0, big.clone(), params(10)).unwrap();
    for (i, &(len, n)) in others.iter().enumerate() {
        e.add_request(0.0, prompt(i, len), params(n)).unwrap();
    }
    // Within two steps all four decode together (the second step's
    // newcomers take blocks the first one's prompt gives up).
    let mut widest = 0;
    for _ in 0..3 {
        if let Step::Ran(ev) = e.step(0.0).unwrap() {
            let n = ev
                .iter()
                .filter(|x| matches!(x, Event::Token { .. }))
                .count();
            widest = widest.max(n);
        }
    }
    assert_eq!(widest, 4, "the four never ran together");
    drain(&mut e);
    assert_eq!(e.output(0).unwrap(), want);
    for (i, &(len, n)) in others.iter().enumerate() {
        assert_eq!(
            e.output(i + 1).unwrap(),
            alone(&be, &m, &prompt(i, len), n),
            "request {}",
            i + 1
        );
    }
    assert_eq!(e.blocks_used(), 0);
}
