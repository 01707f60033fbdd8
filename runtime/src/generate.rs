//! Generation: prompts in, streamed text out, following a plan (or keeping
//! the whole cache resident when there is none), with measured against
//! predicted step times.

use std::path::PathBuf;
use std::time::Instant;

use kernels::{Backend, SampleArgs};
use plans::{Plan, Workload};

use crate::executor::Executor;
use crate::model::Model;
use crate::{Result, RuntimeError};
use plans::{Split, StoreLayout};

/// How the next token is chosen, as llama.cpp, vLLM and the OpenAI API read
/// the knobs: `temperature` 0 is greedy (the largest logit, the first on ties;
/// `top_k` and `top_p` are then moot); above 0 the logits are divided by it,
/// cut to the `top_k` largest and to the nucleus (the most likely tokens whose
/// probability reaches `top_p`), and one is drawn from what is left. The draw
/// runs on the device (`kernels::twin::sample_row` is its exact rule), with
/// noise hashed from `seed`, the step and the sequence: the same seed and
/// knobs on the same logits give the same ids, on every backend.
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

    /// The temperatures that sample (0 is greedy): below the range the
    /// draw is the argmax anyway and `1 / t` overflows; above it, the
    /// distribution is uniform to within f32.
    pub const TEMPERATURE_RANGE: (f32, f32) = (1e-3, 1e3);

    /// Whether this picks the largest logit (no randomness).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The device sampler's arguments for decode step `step` (None: greedy).
    pub fn args(&self, step: u64) -> Option<SampleArgs> {
        (!self.is_greedy()).then(|| SampleArgs {
            inv_temperature: 1.0 / self.temperature,
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed,
            step,
        })
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
        let (lo, hi) = Self::TEMPERATURE_RANGE;
        if !(t == 0.0 || (lo..=hi).contains(&t)) {
            return bad(
                "temperature",
                format!("{t} is not 0 (greedy) or in {lo}..={hi}"),
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
    /// With [`Generator::keep_logits`]: the logits `[batch, vocab]` that
    /// chose each generated token, in order (empty otherwise).
    pub logits: Vec<Vec<f32>>,
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
    /// Keep generating past an EOS id.
    ignore_eos: bool,
    /// Keep every step's logits in the report.
    keep_logits: bool,
}

impl Generator {
    pub fn new(model: Model, backend: Backend, plan: Option<Plan>) -> Self {
        Generator {
            model,
            backend,
            plan,
            plan_path: PathBuf::from("(plan)"),
            trace_steps: Default::default(),
            ignore_eos: false,
            keep_logits: false,
        }
    }

    /// Generates past EOS ids (`--ignore-eos`) instead of stopping there.
    pub fn set_ignore_eos(&mut self, ignore: bool) {
        self.ignore_eos = ignore;
    }

    /// Keeps the logits of every generated token in
    /// [`GenerationReport::logits`] (one download per step: for checks
    /// against a reference, not for timing).
    pub fn keep_logits(&mut self, keep: bool) {
        self.keep_logits = keep;
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
        if prompts.is_empty() {
            return Err(RuntimeError::Request {
                what: "prompts".into(),
                reason: "no prompt given".into(),
            });
        }
        let mut out = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let mut ids = self.model.encode_prompt(i, p)?;
            if ids.is_empty() {
                return Err(RuntimeError::Prompt {
                    index: i,
                    reason: "the prompt is empty (no tokens)".into(),
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

    /// A finished step's report, with the plan's prediction for its context.
    fn report(&self, st: crate::executor::StepStats) -> StepReport {
        let sp = st.split.unwrap_or(Split {
            g: st.context,
            l: 0,
            s: st.context,
            chunks: 1,
        });
        StepReport {
            context: st.context,
            resident: sp.g,
            recompute: sp.l,
            transfer: st.context - sp.g - sp.l,
            chunks: sp.chunks,
            measured_us: st.measured_us,
            predicted_us: self
                .plan
                .as_ref()
                .and_then(|p| p.predicted_step_us(st.context)),
            bytes_x: st.bytes_x,
            bytes_kv: st.bytes_kv,
        }
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
        let ignore_eos = self.ignore_eos;

        let t0 = Instant::now();
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        exec.prefill(&flat, p)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut printed: Vec<String> = vec![String::new(); b];
        let mut done = vec![false; b];
        let mut all_logits = Vec::new();
        let mut steps = Vec::new();
        let mut trace = Vec::new();
        for n in 0..max_new_tokens {
            if self.keep_logits {
                all_logits.push(exec.logits()?);
            }
            let next = exec.choose(sampling.args(n as u64))?;
            // The step that made these logits is done: its time is known.
            if let Some(st) = exec.finish_step()? {
                steps.push(self.report(st));
                trace.extend(exec.take_trace());
            }
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
                done[i] = !ignore_eos && self.model.tokenizer.is_eos(next[i]);
            }
            if n + 1 == max_new_tokens || done.iter().all(|d| *d) {
                break;
            }
            let s = p + n;
            let split = match &self.plan {
                Some(plan) => Split::at(plan, s).ok_or_else(|| RuntimeError::Request {
                    what: "plan".into(),
                    reason: format!("has no step for context {s}"),
                })?,
                None => Split {
                    g: s,
                    l: 0,
                    s,
                    chunks: 1,
                },
            };
            if self.trace_steps.contains(&n) {
                exec.trace_next_step(n);
            }
            exec.step(split)?;
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
            final_logits: exec.logits()?,
            logits: all_logits,
            host_bytes: exec.host_bytes(),
            trace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::twin;
    use rand::{Rng, SeedableRng};

    fn sampling(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            seed: 0,
        }
    }

    /// What the device draws for `row` at decode step `step` (its exact rule).
    fn draw(row: &[f32], s: Sampling, step: u64) -> u32 {
        match s.args(step) {
            None => twin::argmax_row(row),
            Some(a) => twin::sample_row(row, 0, &a),
        }
    }

    /// Seeded random logits, `rows` rows of `vocab`.
    fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..rows * vocab)
            .map(|_| r.random::<f32>() * 8.0 - 4.0)
            .collect()
    }

    #[test]
    fn temperature_0_top_k_1_and_a_tiny_nucleus_are_greedy() {
        let (rows, vocab) = (64, 100);
        let l = logits(rows, vocab, 1);
        let greedy: Vec<u32> = l.chunks_exact(vocab).map(twin::argmax_row).collect();
        assert!(Sampling::GREEDY.args(0).is_none());
        for s in [
            sampling(0.0, Some(7), Some(0.5)),
            sampling(1.0, Some(1), None),
            sampling(5.0, Some(1), Some(1.0)),
            sampling(1.0, None, Some(1e-6)),
            sampling(100.0, Some(50), Some(1e-6)),
        ] {
            let got: Vec<u32> = l.chunks_exact(vocab).map(|r| draw(r, s, 3)).collect();
            assert_eq!(got, greedy, "{s:?}");
        }
    }

    #[test]
    fn greedy_ties_go_to_the_lower_id_and_top_k_keeps_every_tie() {
        let row = [1.0, 3.0, 3.0, 0.0];
        assert_eq!(draw(&row, Sampling::GREEDY, 0), 1);
        // The top-k cut is a threshold: tokens tied at the k-th value all stay.
        let drawn: std::collections::HashSet<u32> = (0..64)
            .map(|step| draw(&row, sampling(1.0, Some(1), None), step))
            .collect();
        assert_eq!(drawn, [1, 2].into_iter().collect());
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
        let (mut seen_k, mut seen_p) = (vec![false; vocab], vec![false; vocab]);
        for step in 0..2000 {
            let a = draw(&row, sampling(1.0, Some(5), None), step);
            assert!(top5.contains(&a), "{a} is not in the top 5 {top5:?}");
            seen_k[a as usize] = true;
            let b = draw(&row, sampling(1.0, None, Some(0.6)), step);
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
            .map(|step| draw(&row, sampling(1.0, None, None), step))
            .collect();
        assert!(all.iter().any(|i| !top5.contains(i)));
    }

    #[test]
    fn the_same_seed_draws_the_same_ids() {
        let (rows, vocab) = (32, 300);
        let l = logits(rows, vocab, 4);
        let with_seed = |seed| {
            let s = Sampling {
                seed,
                ..sampling(0.9, Some(40), Some(0.95))
            };
            l.chunks_exact(vocab)
                .map(|r| draw(r, s, 1))
                .collect::<Vec<_>>()
        };
        assert_eq!(with_seed(7), with_seed(7));
        assert_ne!(with_seed(7), with_seed(8));
    }

    #[test]
    fn bad_knobs_name_their_field() {
        let e = |s: Sampling| s.validate().unwrap_err().to_string();
        // Issue 19: 1e-45 reached the sampler as an infinite 1/t.
        for t in [-0.5, f32::NAN, f32::INFINITY, 1e-45, 1e-4, 1e4] {
            let m = e(sampling(t, None, None));
            assert!(
                m.starts_with("temperature:") && m.contains("0.001..=1000"),
                "{m}"
            );
        }
        sampling(1e-3, None, None).validate().unwrap();
        sampling(1e3, None, None).validate().unwrap();
        assert!(e(sampling(1.0, Some(0), None)).starts_with("top_k:"));
        for p in [0.0, -0.1, 1.5, f32::NAN] {
            assert!(e(sampling(1.0, None, Some(p))).starts_with("top_p:"));
        }
        sampling(0.0, None, None).validate().unwrap();
        sampling(0.7, Some(1), Some(1.0)).validate().unwrap();
    }
}
