//! A whole run of known requests on the [`Engine`]: each added at its
//! arrival time, iterations until every one has finished, timed, with what
//! each policy cost.
//!
//! Time is the host's clock over the whole run (the device is waited for at
//! least once per iteration, to read the chosen ids). The time spent
//! preempting and resuming is bracketed by device synchronisations, so it
//! counts the device's work, not just its issue.

use std::time::Instant;

use kernels::Backend;
use plans::Requests;
use runtime::{Model, PagedConfig, PagedCounters};
use scheduler::Policy;

use crate::{Engine, EngineConfig, Event, RequestParams, Result, ServingError, Step};

/// One run's knobs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub policy: Policy,
    pub block_size: usize,
    pub capacity_blocks: usize,
    pub max_running: usize,
    /// `partial`: the share of a resumed context recomputed from `X`.
    pub partial_share: f64,
    /// `offload`: the share of an offloaded prefix recomputed from `X` each step.
    pub offload_share: f64,
    /// `offload`: host blocks the batch may hold for requests admitted
    /// with their oldest blocks on the host ([`crate::offload_admit_blocks`]).
    pub offload_admit_blocks: usize,
    /// How every request chooses its tokens; request `i` draws with seed
    /// `seed + i`, so equal prompts draw apart and a run repeats itself.
    pub sampling: runtime::Sampling,
}

/// One telemetry sample (one iteration).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub iteration_s: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub kv_blocks_used: usize,
    pub kv_blocks: usize,
    pub running: usize,
    pub waiting: usize,
    pub preempted: usize,
    pub bytes_swapped: u64,
    pub tokens_recomputed: u64,
    pub gpu_util: Option<u32>,
}

/// What one run produced and cost.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunResult {
    pub policy: String,
    pub block_size: usize,
    pub capacity_blocks: usize,
    pub total_s: f64,
    /// Time spent preempting and resuming (device-synchronised), s.
    pub preempt_resume_s: f64,
    /// Allocating the paged cache and the host store (not in `total_s`), s.
    pub setup_s: f64,
    /// Device bytes the paged engine allocated for its life (its pool and
    /// step buffers; a prefill's own buffers come and go).
    pub engine_bytes: u64,
    /// Prefilling fresh requests (host clock, includes the first token), s.
    pub prefill_s: f64,
    /// Decode steps, s.
    pub decode_s: f64,
    pub tokens: usize,
    pub preemptions: usize,
    /// Requests preempted at least once.
    pub preempted_requests: usize,
    /// Tokens whose K/V left the device (dropped, swapped or offloaded).
    pub evicted_tokens: usize,
    pub counters: PagedCounters,
    /// Tokens prefilled again on resume (`recompute`, and `offload`'s rare resumes).
    pub tokens_reprefilled: u64,
    /// Gaps between successive tokens of a request, ms.
    pub tpot_p50_ms: f64,
    pub tpot_p99_ms: f64,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    #[serde(skip)]
    pub outputs: Vec<Vec<u32>>,
}

impl RunResult {
    /// Tokens whose K/V were computed again: from activations, or by
    /// prefilling again.
    pub fn tokens_recomputed(&self) -> u64 {
        self.counters.tokens_recomputed + self.tokens_reprefilled
    }

    pub fn throughput(&self) -> f64 {
        self.tokens as f64 / self.total_s.max(1e-9)
    }
}

/// The value at quantile `q` of `v` (sorted in place); 0 when empty.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The paged engine `serve` builds for `cfg`: a step batch of at most
/// `max_running` rows, and no more rows than there are requests.
pub fn engine_config(requests: &Requests, cfg: &RunConfig) -> PagedConfig {
    let tokens: Vec<usize> = requests
        .requests
        .iter()
        .map(|r| r.input_len + r.output_len)
        .collect();
    PagedConfig {
        block_size: cfg.block_size,
        capacity_blocks: cfg.capacity_blocks,
        max_batch: cfg.max_running.min(requests.requests.len()).max(1),
        keep_activations: cfg.policy.keeps_activations(),
        max_request_tokens: tokens.iter().copied().max().unwrap_or(1),
        host_tokens: PagedConfig::host_tokens_for(&tokens, cfg.block_size),
    }
}

/// Something that reads the GPU's utilisation (NVML), or nothing.
pub type Monitor<'m> = &'m dyn Fn() -> Option<u32>;

/// Serves `requests` (`prompts[i]` is request `i`'s prompt as ids) with
/// `cfg` on an [`Engine`], each added at its arrival time, calling
/// `progress` with the tokens produced after each iteration.
pub fn serve(
    be: &Backend,
    model: &Model,
    requests: &Requests,
    prompts: &[Vec<u32>],
    cfg: &RunConfig,
    monitor: Monitor,
    progress: &dyn Fn(usize),
) -> Result<RunResult> {
    let n = requests.requests.len();
    // Refused up front, naming the smallest capacity that works.
    scheduler::check_capacity(requests, cfg.block_size, cfg.capacity_blocks, cfg.policy)?;
    let pc = engine_config(requests, cfg);
    let ec = EngineConfig {
        policy: cfg.policy,
        block_size: cfg.block_size,
        capacity_blocks: cfg.capacity_blocks,
        max_running: pc.max_batch,
        max_request_tokens: pc.max_request_tokens,
        host_tokens: pc.host_tokens,
        partial_share: cfg.partial_share,
        offload_share: cfg.offload_share,
        offload_admit_blocks: cfg.offload_admit_blocks,
    };
    let setup = Instant::now();
    let before = be.allocated_bytes();
    let mut engine = Engine::new(be, model, ec)?;
    let engine_bytes = be.allocated_bytes() - before;
    // Every request now, at its arrival time: the engine admits each when
    // the clock reaches it. Ids are the requests' places in `requests`.
    for (i, r) in requests.requests.iter().enumerate() {
        let params = RequestParams {
            max_tokens: r.output_len,
            stop_ids: Vec::new(),
            sampling: runtime::Sampling {
                seed: cfg.sampling.seed.wrapping_add(i as u64),
                ..cfg.sampling
            },
        };
        let id = engine.add_request(r.arrival_s, prompts[i].clone(), params)?;
        if id != i {
            return Err(ServingError::Invariant(format!("request {i} got id {id}")));
        }
    }
    be.synchronize()?;
    let setup_s = setup.elapsed().as_secs_f64();
    let mut stamps: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut samples = Vec::new();
    let mut was_preempted = vec![false; n];
    let mut produced_total = 0usize;
    let start = Instant::now();
    let mut last_t = 0.0;
    loop {
        let now = start.elapsed().as_secs_f64();
        let events = match engine.step(now)? {
            Step::Done => break,
            Step::Idle {
                next_arrival_s: Some(t),
            } => {
                if t > now {
                    std::thread::sleep(std::time::Duration::from_secs_f64((t - now).min(1.0)));
                }
                continue;
            }
            Step::Idle {
                next_arrival_s: None,
            } => {
                return Err(ServingError::Invariant(
                    "the scheduler has requests left but nothing to run".into(),
                ))
            }
            Step::Ran(events) => events,
        };
        let t = start.elapsed().as_secs_f64();
        let mut tokens = 0;
        for e in &events {
            match *e {
                Event::Token { id, .. } => {
                    stamps[id].push(t);
                    tokens += 1;
                }
                Event::Preempted { id } => was_preempted[id] = true,
                Event::Offloaded { .. } | Event::Finished { .. } => {}
            }
        }
        produced_total += tokens;
        let (running, waiting, preempted) = engine.queue_lengths();
        let c = engine.counters();
        samples.push(Sample {
            t_s: t,
            iteration_s: t - last_t,
            tokens,
            tokens_per_s: tokens as f64 / (t - last_t).max(1e-9),
            kv_blocks_used: engine.blocks_used(),
            kv_blocks: cfg.capacity_blocks,
            running,
            waiting,
            preempted,
            bytes_swapped: c.bytes_out + c.bytes_in,
            tokens_recomputed: c.tokens_recomputed + engine.times.reprefilled,
            gpu_util: monitor(),
        });
        last_t = t;
        progress(produced_total);
    }
    let total_s = start.elapsed().as_secs_f64();
    let mut outputs = Vec::with_capacity(n);
    for (i, r) in requests.requests.iter().enumerate() {
        let out = engine.output(i).unwrap_or_default().to_vec();
        if out.len() != r.output_len {
            return Err(ServingError::Invariant(format!(
                "request {} produced {} tokens, not {}",
                r.id,
                out.len(),
                r.output_len
            )));
        }
        outputs.push(out);
    }
    let mut gaps: Vec<f64> = stamps
        .iter()
        .flat_map(|s| s.windows(2).map(|w| (w[1] - w[0]) * 1e3))
        .collect();
    let p50 = quantile(&mut gaps, 0.5);
    let p99 = quantile(&mut gaps, 0.99);
    let times = engine.times;
    Ok(RunResult {
        policy: cfg.policy.name().to_string(),
        block_size: cfg.block_size,
        capacity_blocks: cfg.capacity_blocks,
        total_s,
        preempt_resume_s: times.preempt_resume_s,
        setup_s,
        engine_bytes,
        prefill_s: times.prefill_s,
        decode_s: times.decode_s,
        tokens: produced_total,
        preemptions: engine.preemptions(),
        preempted_requests: was_preempted.iter().filter(|&&p| p).count(),
        evicted_tokens: times.evicted_tokens,
        counters: engine.counters(),
        tokens_reprefilled: times.reprefilled,
        tpot_p50_ms: p50,
        tpot_p99_ms: p99,
        samples,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::{BackendOptions, DeviceSpec};
    use plans::{ModelSource, Request};
    use scheduler::min_capacity;

    fn cpu() -> Backend {
        Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
    }

    fn model(be: &Backend, preset: &str) -> Model {
        Model::load(
            &ModelSource::parse(&format!("preset:{preset}")).unwrap(),
            be,
        )
        .unwrap()
    }

    /// Requests of `(input, output)` tokens arriving together, with prompts
    /// spread over the vocabulary (`salt` varies them).
    fn requests_of(
        lens: &[(usize, usize)],
        vocab: usize,
        salt: usize,
    ) -> (Requests, Vec<Vec<u32>>) {
        let requests = Requests {
            requests: lens
                .iter()
                .enumerate()
                .map(|(i, &(input_len, output_len))| Request {
                    id: i,
                    arrival_s: 0.0,
                    input_len,
                    output_len,
                    prompt: None,
                })
                .collect(),
        };
        let prompts = lens
            .iter()
            .enumerate()
            .map(|(i, &(l, _))| {
                (0..l)
                    .map(|t| ((i * 131 + t * 17 + salt) % vocab) as u32)
                    .collect()
            })
            .collect();
        (requests, prompts)
    }

    /// Requests of different lengths, arriving together.
    fn ragged(vocab: usize) -> (Requests, Vec<Vec<u32>>) {
        requests_of(&[(9, 7), (20, 5), (3, 12), (14, 9), (6, 6)], vocab, 5)
    }

    fn run(
        be: &Backend,
        m: &Model,
        r: &Requests,
        p: &[Vec<u32>],
        policy: Policy,
        cap: usize,
    ) -> RunResult {
        let cfg = RunConfig {
            policy,
            block_size: 4,
            capacity_blocks: cap,
            max_running: 8,
            partial_share: 0.5,
            offload_share: 0.5,
            offload_admit_blocks: 0,
            sampling: runtime::Sampling::GREEDY,
        };
        serve(be, m, r, p, &cfg, &|| None, &|_| {}).unwrap()
    }

    /// Found in review: with more than two sequences offloaded at once, the
    /// staging regions of their prefixes must follow the order of the
    /// offloaded sequences, not of the batch; many offloaded together, at
    /// every share recomputed from `X`.
    #[test]
    fn many_offloaded_sequences_together_keep_their_tokens() {
        let be = cpu();
        // Eight layers: the copy stream runs two layers ahead, so a model of
        // two would never reuse a layer's buffers.
        for preset in ["tiny-mha", "llama-3-8b-tiny"] {
            let m = model(&be, preset);
            let vocab = m.spec().vocab_size;
            // A short first request that is never offloaded puts the offloaded
            // ones at batch indices of the other parity.
            let lens = [(3, 30), (13, 14), (9, 18), (17, 12), (11, 16)];
            let (reqs, prompts) = requests_of(&lens, vocab, 3);
            let alone = run(&be, &m, &reqs, &prompts, Policy::Swap, 1000).outputs;
            for cap in [5, 7, 9, 12] {
                for share in [0.0, 0.5, 1.0] {
                    let cfg = RunConfig {
                        policy: Policy::Offload,
                        block_size: 4,
                        capacity_blocks: cap,
                        max_running: 8,
                        partial_share: 0.0,
                        offload_share: share,
                        offload_admit_blocks: 0,
                        sampling: runtime::Sampling::GREEDY,
                    };
                    let r = serve(&be, &m, &reqs, &prompts, &cfg, &|| None, &|_| {}).unwrap();
                    assert!(r.counters.bytes_out > 0, "nothing offloaded at {cap}");
                    assert_eq!(r.outputs, alone, "{preset}: {cap} blocks, share {share}");
                }
            }
        }
    }

    /// Issue 12: a ragged batch gives each sequence the tokens it gets alone,
    /// and every policy under pressure gives every request the tokens it gets
    /// without pressure; no request is lost or duplicated.
    #[test]
    fn every_policy_under_pressure_matches_each_request_decoded_alone() {
        let be = cpu();
        for preset in ["tiny-mha", "tiny-gqa"] {
            let m = model(&be, preset);
            let (reqs, prompts) = ragged(m.spec().vocab_size);
            // Each request alone, with room to spare.
            let alone: Vec<Vec<u32>> = (0..reqs.requests.len())
                .map(|i| {
                    let one = Requests {
                        requests: vec![Request {
                            id: 0,
                            ..reqs.requests[i].clone()
                        }],
                    };
                    run(&be, &m, &one, &prompts[i..i + 1], Policy::Swap, 64).outputs[0].clone()
                })
                .collect();
            let together = run(&be, &m, &reqs, &prompts, Policy::Swap, 1000);
            assert_eq!(together.outputs, alone, "{preset}: ragged batch vs alone");
            assert_eq!(together.preemptions, 0);
            let want: usize = reqs.requests.iter().map(|q| q.output_len).sum();
            for policy in Policy::ALL {
                let least = min_capacity(&reqs, 4, policy);
                for cap in [least, least + 1, least + 3, least + 6] {
                    let r = run(&be, &m, &reqs, &prompts, policy, cap);
                    let what = format!("{preset} {policy:?} at {cap} blocks");
                    assert_eq!(r.outputs, alone, "{what}");
                    assert_eq!(r.tokens, want, "{what}");
                    if cap == least {
                        // Pressure really happened, and the policy's own path ran.
                        let c = r.counters;
                        match policy {
                            Policy::Recompute => {
                                assert!(r.preemptions > 0 && r.tokens_recomputed() > 0, "{what}")
                            }
                            Policy::Swap => assert!(c.bytes_out > 0 && c.bytes_in > 0, "{what}"),
                            Policy::Partial => {
                                assert!(c.bytes_in > 0 && c.tokens_recomputed > 0, "{what}")
                            }
                            Policy::Offload => {
                                assert!(r.preemptions == 0 && c.tokens_recomputed > 0, "{what}")
                            }
                        }
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Issue 12: under any policy, block size, capacity and batch limit,
        /// on random traces, every request finishes once with all its tokens,
        /// the same greedy tokens as without pressure, and the engine's blocks
        /// match the scheduler's after every iteration (checked inside `serve`).
        #[test]
        fn random_traces_lose_nothing_under_any_policy(
            lens in proptest::collection::vec((1usize..18, 1usize..10, 0u8..3), 1..6),
            policy in 0usize..4,
            block in 1usize..6,
            extra in 0usize..8,
            max_running in 1usize..6,
        ) {
            let be = cpu();
            let m = model(&be, "tiny-mha");
            let vocab = m.spec().vocab_size;
            let reqs = Requests {
                requests: lens
                    .iter()
                    .enumerate()
                    .map(|(i, &(input_len, output_len, at))| Request {
                        id: i,
                        arrival_s: at as f64 * 1e-4,
                        input_len,
                        output_len,
                        prompt: None,
                    })
                    .collect(),
            };
            let prompts: Vec<Vec<u32>> = lens
                .iter()
                .enumerate()
                .map(|(i, &(l, _, _))| (0..l).map(|t| ((i * 53 + t * 29 + 7) % vocab) as u32).collect())
                .collect();
            let policy = Policy::ALL[policy];
            let least = min_capacity(&reqs, block, policy);
            let cfg = |policy, capacity_blocks| RunConfig {
                policy,
                block_size: block,
                capacity_blocks,
                max_running,
                partial_share: 0.5,
                offload_share: 0.5,
                offload_admit_blocks: 0,
                sampling: runtime::Sampling::GREEDY,
            };
            let free = serve(&be, &m, &reqs, &prompts, &cfg(Policy::Swap, 10_000), &|| None, &|_| {}).unwrap();
            let r = serve(&be, &m, &reqs, &prompts, &cfg(policy, least + extra), &|| None, &|_| {}).unwrap();
            for (i, q) in reqs.requests.iter().enumerate() {
                proptest::prop_assert_eq!(r.outputs[i].len(), q.output_len);
            }
            proptest::prop_assert_eq!(&r.outputs, &free.outputs);
        }
    }
}
