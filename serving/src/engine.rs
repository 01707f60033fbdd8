//! The serving engine with a dynamic API: requests are added while others
//! run ([`Engine::add_request`]), ended by a client ([`Engine::abort`]), and
//! each [`Engine::step`] runs one iteration and says what happened
//! ([`Event`]): tokens, finished requests with their reason, preemptions
//! and offloads. Every added request ends with exactly one
//! [`Event::Finished`].
//!
//! Each iteration: preemptions first (drop, or swap out), then offloads,
//! then admissions (a fresh request prefills its prompt; a resumed one
//! prefills again under `recompute` and `offload`, or swaps in, recomputing
//! a prefix from its activations under `partial`), then one ragged decode
//! step for every running request that has not produced its token yet, and
//! finally the finished requests leave. The engine's block count is checked
//! against the scheduler's after every iteration.

use std::collections::HashSet;
use std::time::Instant;

use kernels::Backend;
use plans::Requests;
use runtime::{Model, PagedConfig, PagedCounters, PagedEngine, RuntimeError, Sampling};
use scheduler::{Entry, Eviction, Policy, Serving, ServingConfig};

use crate::{Result, ServingError};

/// The engine's shape and policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineConfig {
    pub policy: Policy,
    /// Tokens per K/V block.
    pub block_size: usize,
    /// Device blocks for K/V.
    pub capacity_blocks: usize,
    /// The most requests decoding together.
    pub max_running: usize,
    /// The most tokens one request may hold (prompt plus output).
    pub max_request_tokens: usize,
    /// Tokens the host store holds for the requests present at once.
    pub host_tokens: usize,
    /// `partial`: the share of a resumed context recomputed from `X`.
    pub partial_share: f64,
    /// `offload`: the share of an offloaded prefix recomputed from `X` each step.
    pub offload_share: f64,
    /// `offload`: the host blocks the running batch may hold for a request
    /// admitted with its oldest blocks on the host, beside others
    /// ([`crate::offload_admit_blocks`]).
    pub offload_admit_blocks: usize,
}

/// What one request asks for besides its prompt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestParams {
    /// The most new tokens.
    pub max_tokens: usize,
    /// Tokens that end the request where it produces one (EOS), kept in
    /// its output.
    pub stop_ids: Vec<u32>,
    /// How each token is chosen (greedy by default). A request's tokens
    /// depend on its prompt and this alone, not on what runs beside it.
    pub sampling: Sampling,
}

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// It produced a stop token.
    Stop,
    /// It produced its `max_tokens`.
    Length,
    /// It was aborted (a client gone, a shutdown).
    Abort,
}

/// What happened to a request in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// It produced `token`.
    Token { id: usize, token: u32 },
    /// It ended, and will produce nothing more.
    Finished { id: usize, reason: FinishReason },
    /// It left the running batch to make room (`recompute`, `swap`, `partial`).
    Preempted { id: usize },
    /// `blocks` of its oldest blocks moved to the host (`offload`).
    Offloaded { id: usize, blocks: usize },
}

/// What a step did.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// One iteration ran: what happened, in order.
    Ran(Vec<Event>),
    /// Nothing could run now; the next request arrives at this time, if one
    /// is to come.
    Idle { next_arrival_s: Option<f64> },
    /// Every request added so far has ended.
    Done,
}

/// Where the time and the K/V went, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineTimes {
    /// Prefilling fresh requests (host clock, includes the first token), s.
    pub prefill_s: f64,
    /// Decode steps, s.
    pub decode_s: f64,
    /// Preempting and resuming (device-synchronised), s.
    pub preempt_resume_s: f64,
    /// Tokens whose K/V left the device (dropped, swapped or offloaded).
    pub evicted_tokens: usize,
    /// Tokens prefilled again on resume (`recompute`, `offload`).
    pub reprefilled: u64,
}

#[derive(Clone, Debug)]
struct Live {
    prompt: Vec<u32>,
    output: Vec<u32>,
    stop_ids: Vec<u32>,
    ended: bool,
}

/// The scheduler and the paged engine, driven together.
pub struct Engine<'a> {
    be: &'a Backend,
    cfg: EngineConfig,
    sched: Serving,
    eng: PagedEngine<'a>,
    reqs: Vec<Live>,
    pub times: EngineTimes,
}

impl<'a> Engine<'a> {
    /// Allocates the paged cache and the host store for `cfg`.
    pub fn new(be: &'a Backend, model: &'a Model, cfg: EngineConfig) -> Result<Self> {
        let sc = ServingConfig {
            block_size: cfg.block_size,
            capacity_blocks: cfg.capacity_blocks,
            policy: cfg.policy,
            max_running: cfg.max_running,
            partial_recompute: match cfg.policy {
                Policy::Partial => cfg.partial_share,
                _ => 0.0,
            },
            offload_admit_blocks: cfg.offload_admit_blocks,
        };
        let sched = Serving::new(&Requests { requests: vec![] }, sc)?;
        let pc = PagedConfig {
            block_size: cfg.block_size,
            capacity_blocks: cfg.capacity_blocks,
            max_batch: cfg.max_running,
            keep_activations: cfg.policy.keeps_activations(),
            max_request_tokens: cfg.max_request_tokens,
            host_tokens: cfg.host_tokens,
        };
        let eng = PagedEngine::new(be, model, pc).map_err(ServingError::Setup)?;
        Ok(Engine {
            be,
            cfg,
            sched,
            eng,
            reqs: Vec::new(),
            times: EngineTimes::default(),
        })
    }

    /// Adds a request arriving at `arrival_s` (on the clock [`Engine::step`]
    /// is given) and returns its id: the next after every request so far.
    /// Refused, holding nothing, where it is empty or longer than the
    /// engine's `max_request_tokens`, where the cache cannot hold it alone
    /// under the policy, or where the host store has no room for it now
    /// ([`ServingError::Full`]: try again once a request has finished).
    pub fn add_request(
        &mut self,
        arrival_s: f64,
        prompt: Vec<u32>,
        params: RequestParams,
    ) -> Result<usize> {
        let tokens = prompt.len().saturating_add(params.max_tokens);
        let max = self.cfg.max_request_tokens;
        if prompt.is_empty() || params.max_tokens == 0 || tokens > max {
            return Err(ServingError::Request {
                field: if prompt.is_empty() || prompt.len() >= max {
                    "prompt"
                } else {
                    "max_tokens"
                }
                .into(),
                reason: format!(
                    "a prompt of {} tokens and up to {} new ones: this engine takes at least 1 of each and {max} in all",
                    prompt.len(),
                    params.max_tokens
                ),
            });
        }
        if let Err(RuntimeError::Request { what, reason }) = params.sampling.validate() {
            return Err(ServingError::Request {
                field: what,
                reason,
            });
        }
        let id = self.sched.add(arrival_s, prompt.len(), params.max_tokens)?;
        let added = self
            .eng
            .add_request(id, tokens)
            .and_then(|()| self.eng.set_sampling(id, params.sampling));
        // The id is spent either way: a refused request holds it, ended.
        self.reqs.push(Live {
            prompt,
            output: Vec::new(),
            stop_ids: params.stop_ids,
            ended: added.is_err(),
        });
        if let Err(e) = added {
            self.sched.end(id)?;
            return Err(match e {
                RuntimeError::HostStoreFull { .. } => ServingError::Full(e.to_string()),
                e => e.into(),
            });
        }
        Ok(id)
    }

    /// Ends request `id` now (a client gone, a shutdown): its blocks and its
    /// host region are freed. Returns its [`Event::Finished`], or `None`
    /// where it had ended already.
    pub fn abort(&mut self, id: usize) -> Result<Option<Event>> {
        self.end(id, FinishReason::Abort)
    }

    /// Ends request `id` now with `reason`: [`Engine::abort`] with the
    /// reason the caller saw (`Stop` where its text reached a stop string).
    /// Returns its [`Event::Finished`], or `None` where it had ended already.
    pub fn end(&mut self, id: usize, reason: FinishReason) -> Result<Option<Event>> {
        let live = self.reqs.get_mut(id).ok_or_else(|| ServingError::Request {
            field: "id".into(),
            reason: format!("no request {id}"),
        })?;
        if live.ended {
            return Ok(None);
        }
        live.ended = true;
        self.sched.end(id)?;
        self.eng.finish(id);
        Ok(Some(Event::Finished { id, reason }))
    }

    /// The tokens request `id` has produced so far.
    pub fn output(&self, id: usize) -> Option<&[u32]> {
        self.reqs.get(id).map(|r| r.output.as_slice())
    }

    /// Whether every request added so far has ended.
    pub fn done(&self) -> bool {
        self.sched.done()
    }

    /// Device blocks in use.
    pub fn blocks_used(&self) -> usize {
        self.eng.blocks_used()
    }

    /// Requests running, waiting (arrived, never run) and preempted.
    pub fn queue_lengths(&self) -> (usize, usize, usize) {
        self.sched.queue_lengths()
    }

    /// Bytes and tokens the paged engine has moved or computed.
    pub fn counters(&self) -> PagedCounters {
        self.eng.counters
    }

    /// Requests added that have not run yet (waiting, or arriving).
    pub fn not_started(&self) -> usize {
        self.sched.not_started()
    }

    /// Running requests with K/V blocks on the host (`offload`).
    pub fn offloaded_requests(&self) -> usize {
        self.sched.running_contexts().filter(|c| c.1 > 0).count()
    }

    /// The most tokens one request may hold (prompt plus output).
    pub fn max_request_tokens(&self) -> usize {
        self.cfg.max_request_tokens
    }

    /// Device blocks in all.
    pub fn capacity_blocks(&self) -> usize {
        self.cfg.capacity_blocks
    }

    /// Preemptions so far.
    pub fn preemptions(&self) -> usize {
        self.sched.stats.preemptions
    }

    /// Runs one iteration at time `now_s`.
    pub fn step(&mut self, now_s: f64) -> Result<Step> {
        if self.sched.done() {
            return Ok(Step::Done);
        }
        let it = self.sched.next_iteration(now_s);
        if it.decode.is_empty() {
            return Ok(Step::Idle {
                next_arrival_s: self.sched.next_arrival_s(),
            });
        }
        let (be, bs) = (self.be, self.cfg.block_size);
        let mut events = Vec::new();
        // Preempt, offload and resume, timed together.
        let pressure = !it.preempted.is_empty()
            || !it.offloaded.is_empty()
            || it
                .admitted
                .iter()
                .any(|(_, e)| matches!(e, Entry::Resume { .. }));
        if pressure {
            be.synchronize()?;
        }
        let t0 = Instant::now();
        for &(id, ev) in &it.preempted {
            events.push(Event::Preempted { id });
            match ev {
                Eviction::Dropped { tokens } => {
                    self.times.evicted_tokens += tokens;
                    self.eng.drop_kv(id)?;
                }
                Eviction::SwappedOut {
                    recompute_tokens, ..
                } => {
                    let (cached, _) = self.eng.cached(id).unwrap_or((0, 0));
                    self.times.evicted_tokens += cached;
                    self.eng.swap_out(id, recompute_tokens)?;
                }
            }
        }
        for &(id, blocks) in &it.offloaded {
            events.push(Event::Offloaded { id, blocks });
            self.times.evicted_tokens += blocks * bs;
            self.eng.offload(id, blocks)?;
        }
        // This iteration's token of each request, in order.
        let mut produced: Vec<(usize, u32)> = Vec::new();
        let mut fresh = Vec::new();
        for &(id, entry) in &it.admitted {
            match entry {
                Entry::Fresh { host_blocks, .. } => fresh.push((id, host_blocks)),
                Entry::Resume {
                    recompute_tokens,
                    host_blocks,
                    ..
                } => match self.cfg.policy {
                    Policy::Recompute | Policy::Offload => {
                        let r = &self.reqs[id];
                        let tokens: Vec<u32> = r.prompt.iter().chain(&r.output).copied().collect();
                        self.times.reprefilled += tokens.len() as u64;
                        let t = self.eng.prefill_offloaded(id, &tokens, host_blocks)?;
                        produced.push((id, t));
                    }
                    Policy::Swap | Policy::Partial => self.eng.swap_in(id, recompute_tokens)?,
                },
            }
        }
        if pressure {
            be.synchronize()?;
            self.times.preempt_resume_s += t0.elapsed().as_secs_f64();
        }
        let t1 = Instant::now();
        for (id, host_blocks) in fresh {
            let t = self
                .eng
                .prefill_offloaded(id, &self.reqs[id].prompt, host_blocks)?;
            if host_blocks > 0 {
                events.push(Event::Offloaded {
                    id,
                    blocks: host_blocks,
                });
                self.times.evicted_tokens += host_blocks * bs;
            }
            produced.push((id, t));
        }
        self.times.prefill_s += t1.elapsed().as_secs_f64();
        let done: HashSet<usize> = produced.iter().map(|p| p.0).collect();
        let batch: Vec<(usize, usize)> = it
            .decode
            .iter()
            .filter(|id| !done.contains(id))
            .map(|&id| {
                let off = self.eng.cached(id).map_or(0, |(_, off)| off * bs);
                (id, (off as f64 * self.cfg.offload_share) as usize)
            })
            .collect();
        let t2 = Instant::now();
        let next = self.eng.decode(&batch)?;
        self.times.decode_s += t2.elapsed().as_secs_f64();
        produced.extend(batch.iter().map(|b| b.0).zip(next));
        let last: HashSet<usize> = it.finished.iter().copied().collect();
        for (id, token) in produced {
            let r = &mut self.reqs[id];
            r.output.push(token);
            events.push(Event::Token { id, token });
            let stop = r.stop_ids.contains(&token);
            if stop || last.contains(&id) {
                r.ended = true;
                if !last.contains(&id) {
                    self.sched.end(id)?;
                }
                self.eng.finish(id);
                let reason = if stop {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                };
                events.push(Event::Finished { id, reason });
            }
        }
        if self.eng.blocks_used() != self.sched.blocks_used() {
            return Err(ServingError::Invariant(format!(
                "the paged cache holds {} blocks where the scheduler counts {}",
                self.eng.blocks_used(),
                self.sched.blocks_used()
            )));
        }
        Ok(Step::Ran(events))
    }
}
