//! The whole-model half of `kvpr selftest`: a synthetic model (seeded random
//! weights) decoded on a backend under every schedule, against the CPU
//! backend's fully resident run of the same weights.
//!
//! The reference run picks each next token greedily; every schedule on the
//! device is fed those same tokens (teacher forcing), so one early near-tie
//! cannot turn the rest of the comparison into noise. Each step compares the
//! logits (largest difference over the largest reference logit) and the
//! device's own greedy choice with the reference's; a token may differ only
//! where the reference's top two logits are closer than the tolerance (a
//! near-tie the dtype cannot resolve), and such steps are counted apart.

use kernels::selftest::rel_error;
use kernels::{Backend, BackendOptions, DeviceSpec, Dtype};
use plans::{ModelSource, Split, StoreLayout};

use crate::{Executor, Model, Result};

/// One schedule of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCheck {
    pub model: String,
    pub schedule: &'static str,
    /// Largest logit difference over the largest reference logit.
    pub logit_error: f64,
    pub tolerance: f64,
    /// Greedy tokens that matched / all tokens decoded (steps x batch).
    pub tokens_matched: usize,
    pub steps: usize,
    /// Steps where the reference's top two were within the tolerance.
    pub near_ties: usize,
    pub pass: bool,
}

/// The relative logit tolerance of a whole model at `dtype`.
pub fn model_tolerance(d: Dtype) -> f64 {
    match d {
        Dtype::F32 => 1e-3,
        Dtype::F16 | Dtype::Bf16 => 5e-2,
    }
}

/// The schedules checked, as a split of context `s`: name, resident,
/// recomputed, chunks.
pub const SCHEDULES: [&str; 5] = [
    "transfer",
    "paper",
    "chunked",
    "recompute-all",
    "resident+chunked",
];

fn split(schedule: &str, s: usize) -> Split {
    let (g, l, chunks) = match schedule {
        "transfer" => (0, 0, 1),
        "paper" => (0, s / 2, 1),
        "chunked" => (0, s / 2, 4),
        "recompute-all" => (0, s, 2),
        _ => (s / 4, s / 4, 2),
    };
    Split { g, l, s, chunks }
}

/// Sequences decoded together: more than one, so every per-sequence copy is
/// a strided block of rows, as in a real batch.
pub const BATCH: usize = 2;

/// The prompts, sequence after sequence: `p` ids each, spread over the
/// vocabulary, different for each sequence.
fn prompts(p: usize, vocab: usize) -> Vec<u32> {
    (0..BATCH * p)
        .map(|i| ((i * 7919 + 13 + (i / p) * 101) % vocab) as u32)
        .collect()
}

/// Checks `preset` (a synthetic model) on `be` under every schedule against
/// the CPU backend, with a prompt of `p` tokens and `steps` decode steps.
pub fn check_model(be: &Backend, preset: &str, p: usize, steps: usize) -> Result<Vec<ModelCheck>> {
    let source = ModelSource::parse(&format!("preset:{preset}"))?;
    let cpu = Backend::new(DeviceSpec::Cpu, BackendOptions::default())?;
    let ref_model = Model::load(&source, &cpu)?;
    let vocab = ref_model.spec().vocab_size;
    let ids = prompts(p, vocab);
    let cap = p + steps + 1;
    // The reference: resident, greedy, on the CPU.
    let mut ex = Executor::new(&cpu, &ref_model, StoreLayout::all_resident(cap), BATCH, cap)?;
    ex.prefill(&ids, p)?;
    let mut ref_logits = vec![ex.logits()?];
    let mut ref_tokens = Vec::with_capacity(steps);
    for i in 0..steps {
        ref_tokens.push(ex.choose(None)?);
        let s = p + i;
        ex.step(Split {
            g: s,
            l: 0,
            s,
            chunks: 1,
        })?;
        ex.finish_step()?;
        ref_logits.push(ex.logits()?);
    }
    drop(ex);
    let model = Model::load(&source, be)?;
    let tol = model_tolerance(be.dtype());
    let mut out = Vec::new();
    for schedule in SCHEDULES {
        let layout = StoreLayout::from_steps((0..steps).map(|i| {
            let sp = split(schedule, p + i);
            (sp.g, sp.l, sp.s)
        }));
        let mut ex = Executor::new(be, &model, layout, BATCH, cap)?;
        ex.prefill(&ids, p)?;
        let mut err = rel_error(&ex.logits()?, &ref_logits[0]);
        let (mut matched, mut ties) = (0, 0);
        for i in 0..steps {
            let mine = ex.choose(None)?;
            let want = &ref_tokens[i];
            for (b, row) in ref_logits[i].chunks(vocab).enumerate() {
                if mine[b] == want[b] {
                    matched += 1;
                } else if near_tie(row, tol) {
                    ties += 1;
                }
            }
            ex.set_ids(want)?;
            ex.step(split(schedule, p + i))?;
            ex.finish_step()?;
            err = err.max(rel_error(&ex.logits()?, &ref_logits[i + 1]));
        }
        out.push(ModelCheck {
            model: preset.to_string(),
            schedule,
            logit_error: err,
            tolerance: tol,
            tokens_matched: matched,
            steps: steps * BATCH,
            near_ties: ties,
            pass: err <= tol && matched + ties == steps * BATCH,
        });
    }
    Ok(out)
}

/// Whether the top two logits of `row` are within `tol` of its scale.
fn near_tie(row: &[f32], tol: f64) -> bool {
    let scale = row
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-6);
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    ((a - b) as f64) <= 2.0 * tol * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schedule_on_the_cpu_matches_the_resident_run() {
        let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap();
        let rows = check_model(&be, "tiny-gqa", 12, 5).unwrap();
        assert_eq!(rows.len(), SCHEDULES.len());
        for r in &rows {
            assert!(r.pass, "{r:?}");
            assert_eq!(r.tokens_matched, r.steps, "{r:?}");
        }
    }

    /// Biases, q/k norms, an explicit head_dim, a window shorter than the
    /// context and llama3 RoPE: every split gives the resident run's tokens.
    #[test]
    fn every_schedule_of_the_variants_preset_matches_the_resident_run() {
        let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap();
        let spec = plans::ModelSpec::preset("tiny-variants").unwrap();
        assert!(spec.arch.sliding_window.is_some_and(|w| w < 20));
        for r in check_model(&be, "tiny-variants", 20, 6).unwrap() {
            assert!(r.pass, "{r:?}");
            assert_eq!(r.tokens_matched, r.steps, "{r:?}");
        }
    }

    #[test]
    fn the_comparison_sees_a_difference() {
        assert!(rel_error(&[1.0, 2.0], &[1.0, 2.5]) > 0.1);
        assert_eq!(rel_error(&[1.0, f32::NAN], &[1.0, 2.0]), f64::INFINITY);
        assert!(near_tie(&[1.0, 5.0, 4.9999], 1e-3));
        assert!(!near_tie(&[1.0, 5.0, 4.0], 1e-3));
    }
}
