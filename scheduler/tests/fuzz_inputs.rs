//! Mutation property tests over real files: the shipped hardware profiles and a
//! plan the scheduler made. Each case mutates the file (numbers replaced by
//! extreme values, bytes flipped, the file truncated) and loads it. Nothing may
//! panic; what loads must plan and simulate without panicking, and a plan made
//! from it must be one that can be written and read back.
//!
//! Cases: `KVPR_FUZZ_CASES` (default 2,000; `make fuzz` runs 100,000).

use std::path::{Path, PathBuf};

use plans::{Dtype, HardwareProfile, ModelSpec, Plan, Workload};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use scheduler::{make_plan, simulate, PlanRequest, ScheduleChoice, Solver};

fn cases() -> u32 {
    std::env::var("KVPR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Values a hostile file puts where a number belongs.
const EXTREMES: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "5e-324",
    "-0.0",
    "1e-30",
    "1e30",
    "18446744073709551615",
    "9223372036854775808",
    "4294967296",
    "100000000",
    "1e999",
    "null",
    "\"x\"",
    "[]",
];

/// One edit of a JSON text.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace the `i`-th number (mod the count) with an extreme value.
    Number(usize, usize),
    /// Flip bits of the byte at `i` (mod the length).
    Flip(usize, u8),
    /// Keep the first `i` (mod the length) bytes.
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<usize>(), 0..EXTREMES.len()).prop_map(|(i, v)| Edit::Number(i, v)),
        2 => (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// Byte ranges of the JSON number tokens outside strings.
fn numbers(text: &[u8]) -> Vec<(usize, usize)> {
    let (mut out, mut i, mut in_str) = (Vec::new(), 0, false);
    while i < text.len() {
        let c = text[i];
        if in_str {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
            i += 1;
        } else if c == b'"' {
            in_str = true;
            i += 1;
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i;
            while i < text.len()
                && matches!(text[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

fn apply(text: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut t = text.to_vec();
    for e in edits {
        match *e {
            Edit::Number(i, v) => {
                let nums = numbers(&t);
                if let Some(&(a, b)) = nums.get(i % nums.len().max(1)) {
                    t.splice(a..b, EXTREMES[v].bytes());
                }
            }
            Edit::Flip(i, bits) if !t.is_empty() => {
                let n = t.len();
                t[i % n] ^= bits;
            }
            Edit::Truncate(i) if !t.is_empty() => {
                let n = t.len();
                t.truncate(i % n);
            }
            _ => {}
        }
    }
    t
}

fn shipped_profiles() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/hardware");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no profiles under {}", dir.display());
    v
}

fn workload() -> Workload {
    Workload {
        batch: 2,
        prompt_len: 40,
        gen_len: 24,
        dtype: Dtype::F32,
        // The executor's own buffers (475 KiB, prefill's activations
        // included) and a short resident prefix.
        gpu_memory_budget: 480 << 10,
        host_memory_budget: 1 << 30,
    }
}

fn request() -> PlanRequest {
    PlanRequest {
        schedule: ScheduleChoice::Auto,
        block_tokens: 4,
        solver: Solver::Lp,
        forced: None,
    }
}

/// A plan made for the file's profile reads back, and simulates at its ends.
fn plan_round_trips(plan: &Plan, hw: &HardwareProfile, dir: &Path) {
    let out = dir.join("plan.json");
    if plan.save(&out).is_ok() {
        let back = Plan::load(&out).expect("a plan the scheduler saved reads back");
        assert_eq!(&back, plan);
    }
    let _ = simulate(plan, hw, plan.workload.prompt_len);
}

#[test]
fn mutated_profiles_load_plan_and_simulate_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let model = ModelSpec::preset("tiny-mha").unwrap();
    let texts: Vec<(PathBuf, Vec<u8>)> = shipped_profiles()
        .into_iter()
        .map(|p| {
            let t = std::fs::read(&p).unwrap();
            (p, t)
        })
        .collect();
    let strategy = (
        0..texts.len(),
        proptest::collection::vec(edit(), 1..4),
        any::<bool>(),
    );
    runner()
        .run(&strategy, |(which, edits, cpu)| {
            let (path, text) = &texts[which];
            let bytes = apply(text, &edits);
            let file = dir.path().join(path.file_name().unwrap());
            std::fs::write(&file, &bytes).unwrap();
            let Ok(hw) = HardwareProfile::load(&file) else {
                return Ok(());
            };
            let mut w = workload();
            if !cpu {
                w.dtype = Dtype::F16;
            }
            if let Ok(plan) = make_plan(&model, &hw, hw_id(&hw), &w, &request()) {
                plan_round_trips(&plan, &hw, dir.path());
            }
            Ok(())
        })
        .unwrap();
}

fn hw_id(hw: &HardwareProfile) -> plans::PlanHardware {
    plans::PlanHardware {
        name: hw.name.clone(),
        fingerprint: hw.fingerprint(),
    }
}

#[test]
fn mutated_plans_load_and_simulate_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let model = ModelSpec::preset("tiny-mha").unwrap();
    let hw_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/hardware/cpu-reference.json");
    let mut hw = HardwareProfile::load(&hw_path).unwrap();
    // A slow link, so the plan recomputes and its steps have chunks.
    for p in &mut hw.link.h2d_pinned.points {
        p.gbps = 0.05;
    }
    let mut req = request();
    req.schedule = ScheduleChoice::Fixed(plans::Schedule::Chunked);
    let plan = make_plan(&model, &hw, hw_id(&hw), &workload(), &req).unwrap();
    assert!(plan.steps.iter().any(|s| s.recompute_tokens > 0));
    let text = plan.to_json().into_bytes();
    let file = dir.path().join("plan.json");
    runner()
        .run(&proptest::collection::vec(edit(), 1..4), |edits| {
            std::fs::write(&file, apply(&text, &edits)).unwrap();
            let Ok(p) = Plan::load(&file) else {
                return Ok(());
            };
            for s in [p.workload.prompt_len, p.workload.max_context_len()] {
                let _ = simulate(&p, &hw, s);
            }
            Ok(())
        })
        .unwrap();
}
