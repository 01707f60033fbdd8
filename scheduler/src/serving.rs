//! Serving under KV overflow (issue 12's scheduling core): a paged K/V
//! cache of fixed-size blocks on the device, continuous batching of requests
//! that arrive over time, and what each policy does when a running request
//! needs a block and none is free:
//!
//! - `recompute`: the most recently admitted running request is preempted
//!   (vLLM's rule) and its blocks dropped; on resume it prefills its prompt and
//!   the tokens it had generated again;
//! - `swap`: the same request's blocks go to host memory, and come back on
//!   resume;
//! - `partial`: as `swap`, but on resume a prefix of the context is
//!   recomputed from stored activations while the rest swaps in (the share is
//!   the caller's, from the cost model);
//! - `offload`: nobody is preempted; the requesting sequence's oldest device
//!   block moves to the host store and it keeps decoding through a split.
//!
//! This is pure bookkeeping: [`Serving::next_iteration`] says, for one engine
//! iteration, who is admitted or resumed (and how), who is preempted or
//! offloaded, who decodes, and who finishes; the engine runs it. Invariants
//! (property-tested): block counts stay within `[0, capacity]`, and every
//! request finishes exactly once with all its tokens.

use std::collections::VecDeque;

use plans::Requests;

use crate::SchedError;

/// What happens to the blocks that do not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    Recompute,
    Swap,
    Partial,
    Offload,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::Recompute,
        Policy::Swap,
        Policy::Partial,
        Policy::Offload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Recompute => "recompute",
            Policy::Swap => "swap",
            Policy::Partial => "partial",
            Policy::Offload => "offload",
        }
    }

    /// Whether the policy recomputes K/V from activations, so every token's
    /// `X` is kept on the host (and staged on the device).
    pub fn keeps_activations(self) -> bool {
        matches!(self, Policy::Partial | Policy::Offload)
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown policy {s:?}; use recompute, swap, partial or offload"))
    }
}

/// The paged cache and the policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServingConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// Device blocks for K/V.
    pub capacity_blocks: usize,
    pub policy: Policy,
    /// The most requests decoding together.
    pub max_running: usize,
    /// `partial` only: the share of a resumed context to recompute, in `[0, 1]`.
    pub partial_recompute: f64,
    /// `offload` only: a request whose blocks are more than the free ones
    /// is admitted with its oldest blocks on the host (written there at
    /// prefill) while the running batch's host blocks stay within this
    /// many: what the link streams under a step's compute. Where nothing
    /// runs, a request is admitted whatever its size.
    pub offload_admit_blocks: usize,
}

/// How a request enters the running batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// First time: prefill its prompt, the first `host_blocks` blocks of
    /// its K/V written to the host (`offload`).
    Fresh {
        prefill_tokens: usize,
        host_blocks: usize,
    },
    /// Back after preemption: recompute `recompute_tokens` of its context and
    /// copy `swap_in_blocks` blocks back from the host; the first
    /// `host_blocks` blocks of what is recomputed go to the host (`offload`).
    Resume {
        recompute_tokens: usize,
        swap_in_blocks: usize,
        host_blocks: usize,
    },
}

/// How a request left the running batch early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Its K/V were dropped (`recompute`).
    Dropped { tokens: usize },
    /// `blocks` of its blocks were copied to the host (`swap`, `partial`);
    /// its first `recompute_tokens` tokens were not, and are recomputed from
    /// activations on resume (`partial`; 0 under `swap`).
    SwappedOut {
        blocks: usize,
        recompute_tokens: usize,
    },
}

/// One engine iteration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Iteration {
    pub admitted: Vec<(usize, Entry)>,
    pub preempted: Vec<(usize, Eviction)>,
    /// `offload`: blocks moved to the host this iteration, per request.
    pub offloaded: Vec<(usize, usize)>,
    /// Requests that produce a token this iteration (the admitted ones included).
    pub decode: Vec<usize>,
    pub finished: Vec<usize>,
}

impl Iteration {
    /// One more block of request `id` offloaded this iteration.
    fn offload_one(&mut self, id: usize) {
        match self.offloaded.iter_mut().find(|(i, _)| *i == id) {
            Some(e) => e.1 += 1,
            None => self.offloaded.push((id, 1)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Future,
    Waiting,
    Running,
    Preempted,
    Finished,
}

#[derive(Clone, Debug)]
struct Req {
    arrival_s: f64,
    input_len: usize,
    output_len: usize,
    generated: usize,
    device_blocks: usize,
    host_blocks: usize,
    /// `partial`, while preempted: leading tokens left to recompute on resume.
    recompute_tokens: usize,
    state: State,
}

/// The serving scheduler: block tables, queues and counters.
#[derive(Clone, Debug)]
pub struct Serving {
    cfg: ServingConfig,
    reqs: Vec<Req>,
    /// Arrival order.
    order: Vec<usize>,
    next_arrival: usize,
    waiting: VecDeque<usize>,
    preempted: VecDeque<usize>,
    /// In order of admission (the last is the most recently admitted).
    running: Vec<usize>,
    free: usize,
    /// Requests finished, so [`Serving::done`] is O(1): a dry run of a
    /// million requests must not scan them all every iteration.
    finished: usize,
    pub stats: ServingStats,
}

/// What the policies cost, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServingStats {
    pub preemptions: usize,
    pub blocks_swapped_out: usize,
    pub blocks_swapped_in: usize,
    pub tokens_recomputed: usize,
    pub blocks_offloaded: usize,
    pub peak_blocks_used: usize,
}

use plans::blocks_for;

/// The fewest device blocks with which `requests` can all be served under
/// `policy`: the longest request's context must fit alone (for `offload`, its
/// prompt, since decoding can spill to the host).
pub fn min_capacity(requests: &Requests, block_size: usize, policy: Policy) -> usize {
    requests
        .requests
        .iter()
        .map(|r| least_blocks(r.input_len, r.output_len, block_size, policy))
        .max()
        .unwrap_or(1)
}

/// The fewest device blocks one request of `input_len` prompt tokens and up
/// to `output_len` new ones needs alone under `policy`.
fn least_blocks(input_len: usize, output_len: usize, block_size: usize, policy: Policy) -> usize {
    let tokens = match policy {
        // Everything but the newest block can live on the host.
        Policy::Offload => 1,
        _ => (input_len + output_len).saturating_sub(1),
    };
    blocks_for(tokens, block_size).max(1)
}

/// Refuses a capacity of `capacity` blocks too small for the longest of
/// `requests` under `policy`, naming the smallest that works: the one rule
/// the scheduler and every capacity flag use.
pub fn check_capacity(
    requests: &Requests,
    block_size: usize,
    capacity: usize,
    policy: Policy,
) -> Result<(), SchedError> {
    let least = min_capacity(requests, block_size, policy);
    match capacity < least {
        true => Err(SchedError::Capacity {
            capacity,
            block_size,
            policy: policy.name(),
            least,
        }),
        false => Ok(()),
    }
}

impl Serving {
    /// A scheduler for `requests` (their input lengths known: prompts tokenized).
    /// Refuses a capacity too small for the longest request, naming the
    /// smallest one that works.
    pub fn new(requests: &Requests, cfg: ServingConfig) -> Result<Serving, SchedError> {
        let bad = |reason: String| SchedError::Invalid {
            field: plans::Field::GpuMemoryBudget,
            reason,
        };
        if cfg.block_size == 0 || cfg.max_running == 0 {
            return Err(bad("the block size and the batch must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&cfg.partial_recompute) {
            return Err(bad(format!(
                "a recomputed share of {} is not in [0, 1]",
                cfg.partial_recompute
            )));
        }
        if let Some(r) = requests.requests.iter().find(|r| r.input_len == 0) {
            return Err(bad(format!(
                "request {} has no input tokens (tokenize its prompt first)",
                r.id
            )));
        }
        check_capacity(requests, cfg.block_size, cfg.capacity_blocks, cfg.policy)?;
        let reqs: Vec<Req> = requests
            .requests
            .iter()
            .map(|r| Req {
                arrival_s: r.arrival_s,
                input_len: r.input_len,
                output_len: r.output_len,
                generated: 0,
                device_blocks: 0,
                host_blocks: 0,
                recompute_tokens: 0,
                state: State::Future,
            })
            .collect();
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        order.sort_by(|&a, &b| reqs[a].arrival_s.total_cmp(&reqs[b].arrival_s));
        Ok(Serving {
            cfg,
            reqs,
            order,
            next_arrival: 0,
            waiting: VecDeque::new(),
            preempted: VecDeque::new(),
            running: Vec::new(),
            free: cfg.capacity_blocks,
            finished: 0,
            stats: ServingStats::default(),
        })
    }

    /// Adds a request of `input_len` prompt tokens and up to `output_len`
    /// new ones, arriving at `arrival_s` (on the clock `next_iteration` is
    /// given), and returns its id: the next after every request so far.
    /// Refuses one the cache cannot hold alone under the policy, as
    /// [`Serving::new`] does.
    pub fn add(
        &mut self,
        arrival_s: f64,
        input_len: usize,
        output_len: usize,
    ) -> Result<usize, SchedError> {
        let bad = |reason: String| SchedError::Invalid {
            field: plans::Field::PromptLen,
            reason,
        };
        if input_len == 0 || output_len == 0 {
            return Err(bad(
                "a request needs at least one prompt token and one new token".into(),
            ));
        }
        if !arrival_s.is_finite() {
            return Err(bad(format!("arrival at {arrival_s} s")));
        }
        let (bs, policy) = (self.cfg.block_size, self.cfg.policy);
        let least = least_blocks(input_len, output_len, bs, policy);
        if self.cfg.capacity_blocks < least {
            return Err(SchedError::Capacity {
                capacity: self.cfg.capacity_blocks,
                block_size: bs,
                policy: policy.name(),
                least,
            });
        }
        let id = self.reqs.len();
        self.reqs.push(Req {
            arrival_s,
            input_len,
            output_len,
            generated: 0,
            device_blocks: 0,
            host_blocks: 0,
            recompute_tokens: 0,
            state: State::Future,
        });
        // Among the arrivals still to come, in order (after any at the same time).
        let later = self.order[self.next_arrival..]
            .partition_point(|&i| self.reqs[i].arrival_s <= arrival_s);
        self.order.insert(self.next_arrival + later, id);
        Ok(id)
    }

    /// Ends request `id` before its last token (a stop sequence, or a client
    /// gone): it leaves every queue, its device blocks are freed, and it
    /// produces no more tokens. Returns whether it was still live (`false`
    /// where it had finished already).
    pub fn end(&mut self, id: usize) -> Result<bool, SchedError> {
        let Some(r) = self.reqs.get_mut(id) else {
            return Err(SchedError::Invalid {
                field: plans::Field::Batch,
                reason: format!("request {id} was never added"),
            });
        };
        let state = std::mem::replace(&mut r.state, State::Finished);
        if state == State::Finished {
            return Ok(false);
        }
        self.free += r.device_blocks;
        r.device_blocks = 0;
        r.host_blocks = 0;
        self.finished += 1;
        match state {
            State::Future => {
                // Still to arrive: its place in the arrival order goes
                // (an arrived one has passed it already).
                if let Some(k) = self.order[self.next_arrival..]
                    .iter()
                    .position(|&i| i == id)
                {
                    self.order.remove(self.next_arrival + k);
                }
            }
            State::Waiting => self.waiting.retain(|&i| i != id),
            State::Running => self.running.retain(|&i| i != id),
            State::Preempted => self.preempted.retain(|&i| i != id),
            State::Finished => {}
        }
        Ok(true)
    }

    /// Whether every request has finished.
    pub fn done(&self) -> bool {
        self.finished == self.reqs.len()
    }

    /// Device blocks in use.
    pub fn blocks_used(&self) -> usize {
        self.cfg.capacity_blocks - self.free
    }

    /// Each running request's context (tokens with K/V once this iteration's
    /// token is in) and the tokens of it held on the host (`offload`).
    pub fn running_contexts(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.running.iter().map(|&i| {
            let r = &self.reqs[i];
            let context = r.input_len + r.generated;
            (context, (r.host_blocks * self.cfg.block_size).min(context))
        })
    }

    /// Requests running, waiting (arrived, never run) and preempted.
    pub fn queue_lengths(&self) -> (usize, usize, usize) {
        (self.running.len(), self.waiting.len(), self.preempted.len())
    }

    /// Requests added that have not run yet: waiting, and those whose
    /// arrival the next iteration has still to see.
    pub fn not_started(&self) -> usize {
        self.waiting.len() + (self.order.len() - self.next_arrival)
    }

    /// The next arrival after `now_s`, if any (for an idle engine to wait for).
    pub fn next_arrival_s(&self) -> Option<f64> {
        self.order
            .get(self.next_arrival)
            .map(|&i| self.reqs[i].arrival_s)
    }

    /// Plans one iteration at time `now_s`.
    pub fn next_iteration(&mut self, now_s: f64) -> Iteration {
        let mut it = Iteration::default();
        while let Some(&i) = self.order.get(self.next_arrival) {
            if self.reqs[i].arrival_s > now_s {
                break;
            }
            self.reqs[i].state = State::Waiting;
            self.waiting.push_back(i);
            self.next_arrival += 1;
        }
        self.grow_running(&mut it);
        self.admit(&mut it);
        // Everyone running produces a token.
        let running = std::mem::take(&mut self.running);
        for &i in &running {
            it.decode.push(i);
            let r = &mut self.reqs[i];
            r.generated += 1;
            if r.generated == r.output_len {
                r.state = State::Finished;
                self.finished += 1;
                self.free += r.device_blocks;
                r.device_blocks = 0;
                r.host_blocks = 0;
                it.finished.push(i);
            }
        }
        self.running = running
            .into_iter()
            .filter(|&i| self.reqs[i].state == State::Running)
            .collect();
        self.stats.peak_blocks_used = self.stats.peak_blocks_used.max(self.blocks_used());
        it
    }

    /// Gives each running request (oldest first) the blocks its next token
    /// needs, applying the policy when none is free.
    fn grow_running(&mut self, it: &mut Iteration) {
        let mut k = 0;
        while k < self.running.len() {
            let i = self.running[k];
            let r = &self.reqs[i];
            let need = blocks_for(r.input_len + r.generated, self.cfg.block_size);
            let mut short = need.saturating_sub(r.device_blocks + r.host_blocks);
            let mut evicted_self = false;
            while short > 0 {
                if self.free > 0 {
                    self.free -= 1;
                    self.reqs[i].device_blocks += 1;
                    short -= 1;
                    continue;
                }
                if self.cfg.policy == Policy::Offload {
                    // Its oldest device block goes to the host store.
                    let r = &mut self.reqs[i];
                    r.device_blocks -= 1;
                    r.host_blocks += 1;
                    self.free += 1;
                    self.stats.blocks_offloaded += 1;
                    it.offload_one(i);
                    continue;
                }
                // vLLM's rule: preempt the most recently admitted.
                let victim = *self.running.last().expect("a running request");
                self.preempt(victim, it);
                if victim == i {
                    evicted_self = true;
                    break;
                }
            }
            if !evicted_self {
                k += 1;
            }
        }
    }

    fn preempt(&mut self, i: usize, it: &mut Iteration) {
        self.running.retain(|&x| x != i);
        let r = &mut self.reqs[i];
        let blocks = r.device_blocks;
        self.free += blocks;
        r.device_blocks = 0;
        let ev = match self.cfg.policy {
            Policy::Recompute | Policy::Offload => {
                r.host_blocks = 0;
                Eviction::Dropped {
                    tokens: r.input_len + r.generated.saturating_sub(1),
                }
            }
            Policy::Swap | Policy::Partial => {
                // `partial` decides here which leading blocks it will
                // recompute, so that they are never copied out.
                let kept = match self.cfg.policy {
                    Policy::Partial => {
                        ((blocks as f64) * self.cfg.partial_recompute).round() as usize
                    }
                    _ => 0,
                }
                .min(blocks);
                let cached = r.input_len + r.generated.saturating_sub(1);
                r.recompute_tokens = (kept * self.cfg.block_size).min(cached);
                r.host_blocks = blocks - kept;
                self.stats.blocks_swapped_out += blocks - kept;
                Eviction::SwappedOut {
                    blocks: blocks - kept,
                    recompute_tokens: r.recompute_tokens,
                }
            }
        };
        r.state = State::Preempted;
        self.stats.preemptions += 1;
        self.preempted.push_front(i);
        it.preempted.push((i, ev));
    }

    /// How many of a request's `need` blocks go to the host if it is
    /// admitted now: none where they all fit. Under `offload`, what does not
    /// fit goes to the host, the request keeping at least its newest block
    /// on the device, where nothing else runs (or it would never run) or
    /// the batch's host blocks stay within `offload_admit_blocks`. Where no
    /// block is free, the running request with the most device blocks
    /// (admitted before this iteration) offloads its oldest one to make
    /// room, within the same budget. `None`: it waits.
    fn admit_on_host(&mut self, need: usize, it: &mut Iteration) -> Option<usize> {
        if need <= self.free {
            return Some(0);
        }
        if self.cfg.policy != Policy::Offload {
            return None;
        }
        let on_host: usize = self.running.iter().map(|&j| self.reqs[j].host_blocks).sum();
        let within = |extra: usize| on_host.saturating_add(extra) <= self.cfg.offload_admit_blocks;
        if self.free > 0 {
            let host = need - self.free;
            return (self.running.is_empty() || within(host)).then_some(host);
        }
        let host = need - 1;
        if !within(host + 1) {
            return None;
        }
        let donor = self
            .running
            .iter()
            .copied()
            .filter(|&j| self.reqs[j].device_blocks > 1)
            .filter(|&j| !it.admitted.iter().any(|a| a.0 == j))
            .max_by_key(|&j| (self.reqs[j].device_blocks, std::cmp::Reverse(j)))?;
        let r = &mut self.reqs[donor];
        r.device_blocks -= 1;
        r.host_blocks += 1;
        self.free += 1;
        self.stats.blocks_offloaded += 1;
        it.offload_one(donor);
        Some(host)
    }

    /// Admits preempted requests first, then waiting ones, in order, while
    /// their whole context fits in the free blocks (under `offload`, see
    /// [`Serving::admit_on_host`]).
    fn admit(&mut self, it: &mut Iteration) {
        while self.running.len() < self.cfg.max_running {
            let (from_preempted, i) = match (self.preempted.front(), self.waiting.front()) {
                (Some(&i), _) => (true, i),
                (None, Some(&i)) => (false, i),
                (None, None) => return,
            };
            let r = &self.reqs[i];
            let tokens = r.input_len + r.generated;
            let need = blocks_for(tokens, self.cfg.block_size);
            let Some(host) = self.admit_on_host(need, it) else {
                return;
            };
            let r = &self.reqs[i];
            let entry = if from_preempted {
                self.preempted.pop_front();
                let (recompute, swap_in) = match self.cfg.policy {
                    Policy::Recompute | Policy::Offload => (tokens, 0),
                    Policy::Swap | Policy::Partial => (r.recompute_tokens, r.host_blocks),
                };
                self.stats.tokens_recomputed += recompute;
                self.stats.blocks_swapped_in += swap_in;
                Entry::Resume {
                    recompute_tokens: recompute,
                    swap_in_blocks: swap_in,
                    host_blocks: host,
                }
            } else {
                self.waiting.pop_front();
                Entry::Fresh {
                    prefill_tokens: r.input_len,
                    host_blocks: host,
                }
            };
            self.stats.blocks_offloaded += host;
            let r = &mut self.reqs[i];
            r.device_blocks = need - host;
            r.host_blocks = host;
            r.state = State::Running;
            self.free -= need - host;
            self.running.push(i);
            it.admitted.push((i, entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plans::Request;
    use proptest::prelude::*;

    fn requests(spec: &[(f64, usize, usize)]) -> Requests {
        Requests {
            requests: spec
                .iter()
                .enumerate()
                .map(|(id, &(arrival_s, input_len, output_len))| Request {
                    id,
                    arrival_s,
                    input_len,
                    output_len,
                    prompt: None,
                })
                .collect(),
        }
    }

    fn cfg(block_size: usize, capacity_blocks: usize, policy: Policy) -> ServingConfig {
        ServingConfig {
            block_size,
            capacity_blocks,
            policy,
            max_running: 64,
            partial_recompute: 0.5,
            offload_admit_blocks: 0,
        }
    }

    /// Runs to the end, checking the invariants every iteration; returns
    /// the tokens each request produced and the scheduler.
    fn run(reqs: &Requests, c: ServingConfig) -> (Vec<usize>, Serving) {
        let mut s = Serving::new(reqs, c).unwrap();
        let n = reqs.requests.len();
        let mut produced = vec![0usize; n];
        let mut finished = vec![0usize; n];
        let mut now = 0.0;
        for _ in 0..1_000_000 {
            if s.done() {
                break;
            }
            let it = s.next_iteration(now);
            let used: usize = s.reqs.iter().map(|r| r.device_blocks).sum();
            assert_eq!(used + s.free, c.capacity_blocks, "blocks lost or made up");
            assert!(used <= c.capacity_blocks);
            for &i in &s.running {
                let r = &s.reqs[i];
                let need = blocks_for(r.input_len + r.generated - 1, c.block_size);
                assert!(
                    r.device_blocks >= 1,
                    "request {i} runs with no device block"
                );
                assert!(
                    r.device_blocks + r.host_blocks >= need,
                    "request {i}'s blocks do not cover its context"
                );
            }
            let mut seen = std::collections::HashSet::new();
            for &i in &it.decode {
                assert!(seen.insert(i), "request {i} decoded twice in one iteration");
                produced[i] += 1;
                assert!(
                    produced[i] <= reqs.requests[i].output_len,
                    "request {i} made too many tokens"
                );
            }
            for &i in &it.finished {
                finished[i] += 1;
            }
            for (i, _) in &it.preempted {
                assert!(!it.decode.contains(i) || it.admitted.iter().any(|(a, _)| a == i));
            }
            now += 0.05;
        }
        assert!(s.done(), "did not finish");
        assert!(
            finished.iter().all(|&f| f == 1),
            "finished counts {finished:?}"
        );
        (produced, s)
    }

    #[test]
    fn without_pressure_nothing_is_preempted() {
        let r = requests(&[(0.0, 10, 5), (0.0, 7, 9), (0.3, 4, 4)]);
        for p in Policy::ALL {
            let (produced, s) = run(&r, cfg(4, 100, p));
            assert_eq!(produced, vec![5, 9, 4]);
            assert_eq!(s.stats.preemptions, 0);
            assert_eq!(s.stats.blocks_offloaded, 0);
        }
    }

    #[test]
    fn the_most_recently_admitted_request_is_preempted() {
        // Two requests at once; the second is admitted last and must yield.
        let r = requests(&[(0.0, 4, 8), (0.0, 4, 8)]);
        let mut s = Serving::new(&r, cfg(4, 3, Policy::Recompute)).unwrap();
        let first = s.next_iteration(0.0);
        assert_eq!(first.admitted.len(), 2);
        let mut preempted = Vec::new();
        for _ in 0..4 {
            preempted.extend(s.next_iteration(0.0).preempted);
        }
        assert_eq!(preempted.first().map(|p| p.0), Some(1), "{preempted:?}");
    }

    #[test]
    fn policies_evict_and_resume_as_they_say() {
        let r = requests(&[(0.0, 8, 12), (0.0, 8, 12), (0.0, 8, 12)]);
        let (_, s) = run(&r, cfg(4, 8, Policy::Swap));
        assert!(s.stats.preemptions > 0);
        assert_eq!(s.stats.blocks_swapped_out, s.stats.blocks_swapped_in);
        assert_eq!(s.stats.tokens_recomputed, 0);
        let (_, s) = run(&r, cfg(4, 8, Policy::Recompute));
        assert!(s.stats.tokens_recomputed > 0 && s.stats.blocks_swapped_in == 0);
        let (_, s) = run(&r, cfg(4, 8, Policy::Partial));
        assert!(s.stats.tokens_recomputed > 0 && s.stats.blocks_swapped_in > 0);
        let (_, s) = run(&r, cfg(4, 8, Policy::Offload));
        assert_eq!(s.stats.preemptions, 0);
        assert!(s.stats.blocks_offloaded > 0);
    }

    /// Issue 12: a capacity too small for one request is refused up front,
    /// naming the smallest capacity that works.
    #[test]
    fn too_small_a_capacity_names_the_smallest_that_works() {
        let r = requests(&[(0.0, 30, 11), (0.0, 5, 5)]);
        let e = Serving::new(&r, cfg(8, 4, Policy::Swap))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("smallest capacity that works is 5 blocks (40 tokens)"),
            "{e}"
        );
        assert!(Serving::new(&r, cfg(8, 5, Policy::Swap)).is_ok());
        // Offload keeps all but the newest block on the host if it must.
        assert!(Serving::new(&r, cfg(8, 1, Policy::Offload)).is_ok());
    }

    /// Issue 20: under `offload`, a prompt larger than the whole cache is
    /// admitted with its oldest blocks on the host where nothing else runs;
    /// beside running requests, a prompt that does not fit is admitted
    /// that way only while the batch's host blocks stay within what the
    /// link hides (`offload_admit_blocks`), and waits otherwise.
    #[test]
    fn offload_admits_what_does_not_fit_within_the_links_budget() {
        // A prompt of 40 tokens (10 blocks of 4) on a cache of 3 blocks.
        let big = requests(&[(0.0, 40, 6)]);
        let mut s = Serving::new(&big, cfg(4, 3, Policy::Offload)).unwrap();
        let it = s.next_iteration(0.0);
        assert_eq!(
            it.admitted,
            [(
                0,
                Entry::Fresh {
                    prefill_tokens: 40,
                    host_blocks: 7
                }
            )]
        );
        assert_eq!(s.running_contexts().collect::<Vec<_>>(), [(41, 28)]);
        let (produced, _) = run(&big, cfg(4, 3, Policy::Offload));
        assert_eq!(produced, [6]);
        // Two prompts of 12 tokens (3 blocks) on 4 blocks: the second gets
        // 1 block and 2 on the host, if the budget allows 2.
        let two = requests(&[(0.0, 12, 8), (0.0, 12, 8)]);
        for (budget, admitted) in [(0, 1), (1, 1), (2, 2)] {
            let c = ServingConfig {
                offload_admit_blocks: budget,
                ..cfg(4, 4, Policy::Offload)
            };
            let mut s = Serving::new(&two, c).unwrap();
            let it = s.next_iteration(0.0);
            assert_eq!(it.admitted.len(), admitted, "budget {budget}");
            let (produced, _) = run(&two, c);
            assert_eq!(produced, [8, 8]);
        }
        // On 3 blocks the first takes them all; next iteration it has one
        // block on the host (its context grew), and the second needs a
        // donated block and 2 on the host: 4 in all against the budget.
        for (budget, admitted) in [(3, false), (4, true)] {
            let c = ServingConfig {
                offload_admit_blocks: budget,
                ..cfg(4, 3, Policy::Offload)
            };
            let mut s = Serving::new(&two, c).unwrap();
            assert_eq!(s.next_iteration(0.0).admitted.len(), 1);
            let it = s.next_iteration(0.0);
            assert_eq!(it.admitted.len(), usize::from(admitted), "budget {budget}");
            if admitted {
                // The first gave its oldest device block to make room.
                assert_eq!(it.offloaded, [(0, 2)]);
                assert_eq!(s.running_contexts().collect::<Vec<_>>(), [(14, 8), (13, 8)]);
            }
            let (produced, _) = run(&two, c);
            assert_eq!(produced, [8, 8]);
        }
        // Other policies wait for room.
        let mut s = Serving::new(&two, cfg(4, 5, Policy::Swap)).unwrap();
        assert_eq!(s.next_iteration(0.0).admitted.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Issue 12: under any policy and capacity, no request is lost or
        /// duplicated, and block counts stay within [0, capacity].
        #[test]
        fn no_request_is_lost_and_blocks_stay_in_bounds(
            spec in proptest::collection::vec((0.0f64..2.0, 1usize..40, 1usize..40), 1..12),
            block_size in 1usize..9,
            extra in 0usize..20,
            policy in proptest::sample::select(Policy::ALL.to_vec()),
            max_running in 1usize..8,
            offload_admit_blocks in 0usize..12,
        ) {
            let r = requests(&spec);
            let min = min_capacity(&r, block_size, policy);
            let c = ServingConfig {
                max_running,
                offload_admit_blocks,
                ..cfg(block_size, min + extra, policy)
            };
            let (produced, _) = run(&r, c);
            let want: Vec<usize> = spec.iter().map(|s| s.2).collect();
            prop_assert_eq!(produced, want);
        }

        /// Issue 20: requests added while others run and requests ended
        /// early (a stop sequence, a client gone), in any order with the
        /// iterations, under any policy: every request ends exactly once
        /// (by its last token or by `end`), none decodes after it ended,
        /// none makes more than its tokens, and no block is lost or made up.
        #[test]
        fn requests_added_and_ended_while_serving_end_exactly_once(
            initial in proptest::collection::vec((1usize..30, 1usize..30), 0..6),
            ops in proptest::collection::vec((0u8..4, 1usize..30, 1usize..30, 0usize..64), 1..80),
            block_size in 1usize..6,
            policy in proptest::sample::select(Policy::ALL.to_vec()),
            max_running in 1usize..6,
        ) {
            let spec: Vec<(f64, usize, usize)> =
                initial.iter().map(|&(i, o)| (0.0, i, o)).collect();
            let c = ServingConfig { max_running, ..cfg(block_size, 64, policy) };
            let mut s = Serving::new(&requests(&spec), c).unwrap();
            let mut want: Vec<usize> = initial.iter().map(|r| r.1).collect();
            let (mut produced, mut ended) = (vec![0usize; want.len()], vec![0usize; want.len()]);
            let mut now = 0.0;
            let step = |s: &mut Serving, now: f64, produced: &mut Vec<usize>, ended: &mut Vec<usize>| {
                let it = s.next_iteration(now);
                for &i in &it.decode {
                    prop_assert_eq!(ended[i], 0, "request {} decoded after it ended", i);
                    produced[i] += 1;
                }
                for &i in &it.finished {
                    ended[i] += 1;
                }
                let used: usize = s.reqs.iter().map(|r| r.device_blocks).sum();
                prop_assert_eq!(used + s.free, c.capacity_blocks);
                Ok(())
            };
            for (op, input, output, pick) in ops {
                match op {
                    0 | 1 => step(&mut s, now, &mut produced, &mut ended)?,
                    2 => {
                        let id = s.add(now + 0.01 * (pick % 3) as f64, input, output).unwrap();
                        prop_assert_eq!(id, want.len());
                        want.push(output);
                        produced.push(0);
                        ended.push(0);
                    }
                    _ => {
                        if want.is_empty() {
                            continue;
                        }
                        let id = pick % want.len();
                        if s.end(id).unwrap() {
                            ended[id] += 1;
                        }
                    }
                }
                now += 0.005;
            }
            for _ in 0..100_000 {
                if s.done() {
                    break;
                }
                step(&mut s, now, &mut produced, &mut ended)?;
                now += 0.005;
            }
            prop_assert!(s.done());
            prop_assert_eq!(s.blocks_used(), 0);
            for i in 0..want.len() {
                prop_assert_eq!(ended[i], 1, "request {} ended {} times", i, ended[i]);
                prop_assert!(produced[i] <= want[i]);
            }
            prop_assert!(s.end(want.len()).is_err());
        }
    }
}
