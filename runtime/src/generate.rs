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

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax at temperature `t`, seeded.
    Temperature {
        t: f32,
        seed: u64,
    },
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
        if let Sampling::Temperature { t, .. } = sampling {
            if !(t.is_finite() && t > 0.0) {
                return Err(RuntimeError::Request {
                    what: "temperature".into(),
                    reason: format!("{t} is not a positive number"),
                });
            }
        }
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
        let layout = match &self.plan {
            Some(plan) => {
                plan.check_matches(&self.plan_path, &spec, &workload)?;
                StoreLayout::for_plan(plan).up_to(capacity)
            }
            None => StoreLayout::all_resident(capacity),
        };
        let mut exec = Executor::new(&self.backend, &self.model, layout, b, capacity)?;
        let mut rng = match sampling {
            Sampling::Temperature { seed, .. } => rand::rngs::StdRng::seed_from_u64(seed),
            Sampling::Greedy => rand::rngs::StdRng::seed_from_u64(0),
        };
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
                    (sp, plan.step_for(s).map(|st| st.step_us))
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
    match s {
        Sampling::Greedy => logits.chunks_exact(vocab).map(argmax).collect(),
        Sampling::Temperature { t, .. } => logits
            .chunks_exact(vocab)
            .map(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let w: Vec<f64> = row.iter().map(|x| f64::from((x - max) / t).exp()).collect();
                let total: f64 = w.iter().sum();
                let mut u = rng.random::<f64>() * total;
                for (i, wi) in w.iter().enumerate() {
                    u -= wi;
                    if u <= 0.0 {
                        return i as u32;
                    }
                }
                (vocab - 1) as u32
            })
            .collect(),
    }
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
