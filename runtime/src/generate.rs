//! Generation: prompts in, streamed text out, following a plan (or keeping
//! the whole cache resident when there is none), with measured against
//! predicted step times.

use std::path::PathBuf;
use std::time::Instant;

use kernels::Backend;
use plans::{Plan, Workload};
use rand::{Rng, SeedableRng};

use crate::executor::Executor;
use crate::model::Model;
use crate::{Result, RuntimeError};
use plans::{Split, StoreLayout};

/// How the next token is chosen, as llama.cpp, vLLM and the OpenAI API read
/// the knobs: `temperature` 0 is greedy (the largest logit, the first on ties;
/// `top_k` and `top_p` are then moot); above 0 the logits are divided by it,
/// cut to the `top_k` largest, then to the nucleus (the fewest most likely
/// tokens whose probability reaches `top_p`), and one is drawn from what is
/// left, renormalised, with a generator seeded by `seed`: the same seed and
/// knobs on the same logits give the same ids.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0: greedy; otherwise a finite positive divisor of the logits.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`k >= 1`); `None`: all.
    pub top_k: Option<usize>,
    /// Keep the nucleus of probability `p` (in `(0, 1]`); `None`: all.
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::GREEDY
    }
}

impl Sampling {
    /// The largest logit every time.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };

    /// Whether this picks the largest logit (no randomness).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the knobs; the error names the field (`temperature`, `top_k`, `top_p`).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, reason: String| {
            Err(RuntimeError::Request {
                what: what.into(),
                reason,
            })
        };
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return bad(
                "temperature",
                format!("{t} is not a finite number >= 0 (0 means greedy)"),
            );
        }
        if self.top_k == Some(0) {
            return bad(
                "top_k",
                "must be at least 1 (1 keeps only the most likely token)".into(),
            );
        }
        if let Some(p) = self.top_p {
            if !(p.is_finite() && p > 0.0 && p <= 1.0) {
                return bad("top_p", format!("{p} is not in (0, 1]"));
            }
        }
        Ok(())
    }
}

/// One decode step, measured and predicted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Context length `s` (tokens already cached).
    pub context: usize,
    pub resident: usize,
    pub recompute: usize,
    pub transfer: usize,
    pub chunks: usize,
    pub measured_us: f64,
    /// The plan's `step_us` for this context (None without a plan).
    pub predicted_us: Option<f64>,
    /// Activation bytes moved to the device.
    pub bytes_x: u64,
    /// K/V bytes moved to the device.
    pub bytes_kv: u64,
}

/// What a generation did.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationReport {
    pub prefill_ms: f64,
    /// Mean over decode steps (0 when there were none).
    pub decode_ms_per_token: f64,
    pub steps: Vec<StepReport>,
    /// Generated ids per prompt (up to and including EOS).
    pub tokens: Vec<Vec<u32>>,
    /// Generated text per prompt.
    pub texts: Vec<String>,
    /// Logits `[batch, vocab]` that chose the last generated tokens.
    pub final_logits: Vec<f32>,
    /// Host bytes held by the store.
    pub host_bytes: u64,
    /// The measured timelines of the decode steps asked for with
    /// [`Generator::trace_steps`], in step order.
    pub trace: Vec<plans::TraceStep>,
}

/// Runs a model on a backend, optionally following a plan.
pub struct Generator {
    pub model: Model,
    pub backend: Backend,
    plan: Option<Plan>,
    plan_path: PathBuf,
    /// Decode steps (0: the first after prefill) whose timeline to record.
    trace_steps: std::collections::BTreeSet<usize>,
}

impl Generator {
    pub fn new(model: Model, backend: Backend, plan: Option<Plan>) -> Self {
        Generator {
            model,
            backend,
            plan,
            plan_path: PathBuf::from("(plan)"),
            trace_steps: Default::default(),
        }
    }

    /// Names the plan's file in mismatch errors.
    pub fn with_plan_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.plan_path = path.into();
        self
    }

    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// The element type runs on this backend use, as a plan's workload names it.
    pub fn dtype(&self) -> plans::Dtype {
        self.backend.dtype()
    }

    /// Records the measured timeline of these decode steps (0: the first
    /// after prefill); the others record nothing extra.
    pub fn trace_steps(&mut self, steps: impl IntoIterator<Item = usize>) {
        self.trace_steps = steps.into_iter().collect();
    }

    /// Replaces the plan (e.g. one made on the fly for these prompts).
    pub fn set_plan(&mut self, plan: Plan) {
        self.plan = Some(plan);
    }

    /// Encodes the prompts, checking they can run together: what `generate`
    /// will run (so a plan can be made for exactly that prompt length).
    pub fn encode_prompts(&self, prompts: &[String]) -> Result<Vec<Vec<u32>>> {
        let spec = self.model.spec();
        if prompts.is_empty() {
            return Err(RuntimeError::Request {
                what: "prompts".into(),
                reason: "no prompt given".into(),
            });
        }
        let mut out = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let mut ids = self.model.tokenizer.encode(p)?;
            if ids.is_empty() {
                return Err(RuntimeError::Prompt {
                    index: i,
                    reason: "the prompt is empty (no tokens)".into(),
                });
            }
            if ids.len() > spec.max_context {
                return Err(RuntimeError::Prompt {
                    index: i,
                    reason: format!(
                        "{} tokens is longer than {}'s context of {} tokens; shorten the prompt",
                        ids.len(),
                        spec.name,
                        spec.max_context
                    ),
                });
            }
            if let Some(first) = out.first().map(|v: &Vec<u32>| v.len()) {
                if ids.len() != first {
                    return Err(RuntimeError::Prompt {
                        index: i,
                        reason: format!(
                            "{} tokens, but prompt 0 has {first}; prompts of a batch must have equal lengths",
                            ids.len()
                        ),
                    });
                }
            }
            ids.shrink_to_fit();
            out.push(ids);
        }
        Ok(out)
    }

    /// Generates up to `max_new_tokens` per prompt (stopping when every
    /// sequence has produced EOS), calling `on_token(batch_index, text)` with
    /// each new piece of text.
    pub fn generate(
        &mut self,
        prompts: &[String],
        max_new_tokens: usize,
        sampling: Sampling,
        mut on_token: impl FnMut(usize, &str),
    ) -> Result<GenerationReport> {
        let ids = self.encode_prompts(prompts)?;
        let (b, p) = (ids.len(), ids[0].len());
        let spec = self.model.spec().clone();
        if max_new_tokens == 0 {
            return Err(RuntimeError::Request {
                what: "max_new_tokens".into(),
                reason: "must be at least 1".into(),
            });
        }
        sampling.validate()?;
        let workload = Workload {
            batch: b,
            prompt_len: p,
            gen_len: max_new_tokens,
            dtype: self.dtype(),
            gpu_memory_budget: 0,
            host_memory_budget: 0,
        };
        if workload.max_context_len() >= spec.max_context {
            return Err(RuntimeError::Prompt {
                index: 0,
                reason: format!(
                    "{p} prompt tokens + {max_new_tokens} new tokens exceed {}'s context of {} tokens",
                    spec.name, spec.max_context
                ),
            });
        }
        let capacity = workload.max_context_len() + 1;
        // The store holds what this run's contexts read, not what the plan's
        // longest run would (a plan serves every prompt it covers).
        let layout = match &self.plan {
            Some(plan) => {
                plan.check_matches(&self.plan_path, &spec, &workload)?;
                StoreLayout::for_contexts(plan, p, workload.max_context_len())
            }
            None => StoreLayout::all_resident(capacity),
        };
        let mut exec = Executor::new(&self.backend, &self.model, layout, b, capacity)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(sampling.seed);
        let vocab = spec.vocab_size;
        let eos = self.model.tokenizer.eos_token_id;

        let t0 = Instant::now();
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let mut logits = exec.prefill(&flat, p)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut printed: Vec<String> = vec![String::new(); b];
        let mut done = vec![false; b];
        let mut steps = Vec::new();
        let mut trace = Vec::new();
        for n in 0..max_new_tokens {
            let next = sample(&logits, vocab, sampling, &mut rng);
            for i in 0..b {
                if done[i] {
                    continue;
                }
                tokens[i].push(next[i]);
                let text = self.model.tokenizer.decode(&tokens[i])?;
                // Emit only complete characters (a byte-level token may end mid-character).
                if text.len() > printed[i].len() && !text.ends_with('\u{fffd}') {
                    if let Some(new) = text.get(printed[i].len()..) {
                        on_token(i, new);
                    }
                    printed[i] = text;
                }
                done[i] = Some(next[i]) == eos;
            }
            if n + 1 == max_new_tokens || done.iter().all(|d| *d) {
                break;
            }
            let s = p + n;
            let (split, predicted) = match &self.plan {
                Some(plan) => {
                    let sp = Split::at(plan, s).ok_or_else(|| RuntimeError::Request {
                        what: "plan".into(),
                        reason: format!("has no step for context {s}"),
                    })?;
                    (sp, plan.predicted_step_us(s))
                }
                None => (
                    Split {
                        g: s,
                        l: 0,
                        s,
                        chunks: 1,
                    },
                    None,
                ),
            };
            if self.trace_steps.contains(&n) {
                exec.trace_next_step(n);
            }
            let (l, st) = exec.step(&next, split)?;
            trace.extend(exec.take_trace());
            logits = l;
            steps.push(StepReport {
                context: s,
                resident: split.g,
                recompute: split.l,
                transfer: s - split.g - split.l,
                chunks: split.chunks,
                measured_us: st.measured_us,
                predicted_us: predicted,
                bytes_x: st.bytes_x,
                bytes_kv: st.bytes_kv,
            });
        }
        let decode_ms_per_token = if steps.is_empty() {
            0.0
        } else {
            steps.iter().map(|s| s.measured_us).sum::<f64>() / steps.len() as f64 / 1e3
        };
        let texts = tokens
            .iter()
            .map(|t| self.model.tokenizer.decode(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(GenerationReport {
            prefill_ms,
            decode_ms_per_token,
            steps,
            tokens,
            texts,
            final_logits: logits,
            host_bytes: exec.host_bytes(),
            trace,
        })
    }
}

/// The next id of each row of `logits` (`[batch, vocab]`).
fn sample(logits: &[f32], vocab: usize, s: Sampling, rng: &mut rand::rngs::StdRng) -> Vec<u32> {
    logits
        .chunks_exact(vocab)
        .map(|row| {
            if s.is_greedy() {
                argmax(row)
            } else {
                sample_row(row, s, rng)
            }
        })
        .collect()
}

/// One draw from `row` at `s.temperature`, within the top-k and the nucleus.
fn sample_row(row: &[f32], s: Sampling, rng: &mut rand::rngs::StdRng) -> u32 {
    // Candidates, most likely first (ties: the lower id first, as `argmax`).
    let mut ids: Vec<u32> = (0..row.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let k = s.top_k.unwrap_or(row.len()).clamp(1, row.len().max(1));
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_logit);
        ids.truncate(k);
    }
    if s.top_p.is_some() || s.top_k.is_some() {
        ids.sort_unstable_by(by_logit);
    }
    let Some(&first) = ids.first() else {
        return 0;
    };
    // Softmax at the temperature over the candidates, from the largest logit.
    let max = ids
        .iter()
        .map(|&i| row[i as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = ids
        .iter()
        .map(|&i| ((row[i as usize] - max) / s.temperature).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return first;
    }
    // The nucleus: the shortest prefix whose probability reaches top_p.
    let mut n = weights.len();
    if let Some(p) = s.top_p {
        let mut acc = 0.0f32;
        for (i, w) in weights.iter().enumerate() {
            acc += w / total;
            if acc >= p {
                n = i + 1;
                break;
            }
        }
    }
    let kept: f32 = weights[..n].iter().sum();
    let mut u = rng.random::<f32>() * kept;
    for (&id, &w) in ids[..n].iter().zip(&weights[..n]) {
        u -= w;
        if u <= 0.0 {
            return id;
        }
    }
    ids[n - 1]
}

/// Index of the largest value of `row` (the first on ties).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    fn sampling(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            seed: 0,
        }
    }

    /// Seeded random logits, `rows` rows of `vocab`.
    fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        (0..rows * vocab)
            .map(|_| r.random::<f32>() * 8.0 - 4.0)
            .collect()
    }

    #[test]
    fn temperature_0_top_k_1_and_a_tiny_nucleus_are_greedy() {
        let (rows, vocab) = (64, 100);
        let l = logits(rows, vocab, 1);
        let greedy = sample(&l, vocab, Sampling::GREEDY, &mut rng(0));
        let want: Vec<u32> = l.chunks_exact(vocab).map(argmax).collect();
        assert_eq!(greedy, want);
        for s in [
            sampling(0.0, Some(7), Some(0.5)),
            sampling(1.0, Some(1), None),
            sampling(5.0, Some(1), Some(1.0)),
            sampling(1.0, None, Some(1e-6)),
            sampling(100.0, Some(50), Some(1e-6)),
        ] {
            assert_eq!(sample(&l, vocab, s, &mut rng(3)), greedy, "{s:?}");
        }
    }

    #[test]
    fn ties_go_to_the_lower_id_as_in_argmax() {
        let row = [1.0, 3.0, 3.0, 0.0];
        assert_eq!(argmax(&row), 1);
        assert_eq!(
            sample_row(&row, sampling(1.0, Some(1), None), &mut rng(0)),
            1
        );
    }

    #[test]
    fn draws_stay_in_the_top_k_and_the_nucleus() {
        let vocab = 50;
        let row = logits(1, vocab, 2);
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        // The nucleus of 0.6 at temperature 1, computed here independently.
        let max = row[order[0]];
        let w: Vec<f64> = order
            .iter()
            .map(|&i| f64::from(row[i] - max).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let (mut acc, mut n) = (0.0, 0);
        while acc < 0.6 {
            acc += w[n] / total;
            n += 1;
        }
        let nucleus: Vec<u32> = order[..n].iter().map(|&i| i as u32).collect();
        assert!(n > 1 && n < vocab, "a nucleus of {n} tests nothing");
        let mut r = rng(9);
        let (mut seen_k, mut seen_p) = (vec![false; vocab], vec![false; vocab]);
        for _ in 0..2000 {
            let a = sample_row(&row, sampling(1.0, Some(5), None), &mut r);
            assert!(top5.contains(&a), "{a} is not in the top 5 {top5:?}");
            seen_k[a as usize] = true;
            let b = sample_row(&row, sampling(1.0, None, Some(0.6)), &mut r);
            assert!(
                nucleus.contains(&b),
                "{b} is not in the nucleus {nucleus:?}"
            );
            seen_p[b as usize] = true;
        }
        // Sampling, not a disguised argmax: every candidate comes up.
        assert!(top5.iter().all(|&i| seen_k[i as usize]));
        assert!(nucleus.iter().all(|&i| seen_p[i as usize]));
        // With no cut, ids outside the top 5 come up too.
        let all: Vec<u32> = (0..500)
            .map(|_| sample_row(&row, sampling(1.0, None, None), &mut r))
            .collect();
        assert!(all.iter().any(|i| !top5.contains(i)));
    }

    #[test]
    fn the_same_seed_draws_the_same_ids() {
        let (rows, vocab) = (32, 300);
        let l = logits(rows, vocab, 4);
        let s = sampling(0.9, Some(40), Some(0.95));
        let a = sample(&l, vocab, s, &mut rng(7));
        assert_eq!(a, sample(&l, vocab, s, &mut rng(7)));
        assert_ne!(a, sample(&l, vocab, s, &mut rng(8)));
    }

    #[test]
    fn bad_knobs_name_their_field() {
        let e = |s: Sampling| s.validate().unwrap_err().to_string();
        for t in [-0.5, f32::NAN, f32::INFINITY] {
            assert!(e(sampling(t, None, None)).starts_with("temperature:"));
        }
        assert!(e(sampling(1.0, Some(0), None)).starts_with("top_k:"));
        for p in [0.0, -0.1, 1.5, f32::NAN] {
            assert!(e(sampling(1.0, None, Some(p))).starts_with("top_p:"));
        }
        sampling(0.0, None, None).validate().unwrap();
        sampling(0.7, Some(1), Some(1.0)).validate().unwrap();
    }
}
