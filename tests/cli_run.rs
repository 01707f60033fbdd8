//! `kvpr run` and `kvpr calibrate` end to end: the real binary, the real model
//! (SmolLM2-135M, fetched by `make test`), temporary folders.

mod common;
use common::*;

fn cpu_profile() -> String {
    profile("cpu-reference.json").display().to_string()
}

#[test]
fn smollm2_generates_text_and_reports_measured_against_predicted() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hw = cpu_profile();
    let args = [
        "run",
        "--model",
        &model,
        "--hardware",
        &hw,
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "6",
        "--plan-out",
        "p.json",
    ];
    let o = kvpr(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("The capital of France is Paris"), "{text}");
    let err = stderr(&o);
    for needle in ["prefill", "ms/token", "meas/pred", "grouped-query"] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
    // The plan written on the fly runs again from the file, with the same text.
    let o2 = kvpr(
        &[
            "run",
            "--model",
            &model,
            "--plan",
            "p.json",
            "--prompt",
            "The capital of France is",
            "--max-new-tokens",
            "6",
        ],
        dir.path(),
    );
    assert!(o2.status.success(), "{}", stderr(&o2));
    assert_eq!(stdout(&o2), text);
}

#[test]
fn synthetic_mha_gives_the_same_tokens_under_every_schedule_on_a_paced_link() {
    let dir = tempfile::tempdir().unwrap();
    let hw = cpu_profile();
    let prompt = "kvpr recomputes part of the context while the rest crosses the link. ".repeat(2);
    let mut outputs = Vec::new();
    for schedule in ["transfer", "paper", "chunked"] {
        let o = kvpr(
            &[
                "run",
                "--model",
                "preset:llama-2-7b-tiny",
                "--hardware",
                &hw,
                "--link-gbps",
                "2",
                "--schedule",
                schedule,
                "--prompt",
                &prompt,
                "--max-new-tokens",
                "8",
                "--plan-out",
                &format!("{schedule}.json"),
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{schedule}: {}", stderr(&o));
        outputs.push(stdout(&o));
        let plan = plans::Plan::load(&dir.path().join(format!("{schedule}.json"))).unwrap();
        assert_eq!(plan.schedule.name(), schedule);
    }
    assert_eq!(outputs[0], outputs[1], "paper differs from transfer");
    assert_eq!(outputs[0], outputs[2], "chunked differs from transfer");
}

#[test]
fn bad_models_and_prompts_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hw = cpu_profile();
    let run = |model: &str, prompt: &str| {
        kvpr(
            &[
                "run",
                "--model",
                model,
                "--hardware",
                &hw,
                "--prompt",
                prompt,
                "--max-new-tokens",
                "2",
            ],
            d,
        )
    };
    std::fs::write(d.join("garbage.gguf"), b"this is not a model").unwrap();
    assert_fails(&run("garbage.gguf", "hi"), &["garbage.gguf"]);
    if let Some(model) = smollm2() {
        let bytes = std::fs::read(&model).unwrap();
        std::fs::write(d.join("truncated.gguf"), &bytes[..bytes.len() / 3]).unwrap();
        assert_fails(&run("truncated.gguf", "hi"), &["truncated.gguf"]);
        assert_fails(&run(&model, ""), &["empty"]);
    }
    // tiny-mha has a 512-token context and a byte tokenizer: 600 bytes is too long.
    assert_fails(&run("preset:tiny-mha", &"x".repeat(600)), &["context"]);
    assert_fails(&run("missing.gguf", "hi"), &["missing.gguf"]);
    let o = kvpr(&["run", "--model", "preset:tiny-mha", "--prompt", "hi"], d);
    assert_fails(&o, &["--plan", "--hardware"]);
}

#[test]
fn a_plan_for_another_model_or_batch_is_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hw = cpu_profile();
    let o = kvpr(
        &[
            "plan",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            &hw,
            "--batch",
            "1",
            "--prompt-len",
            "2",
            "--gen-len",
            "4",
            "--out",
            "mha.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-gqa",
            "--plan",
            "mha.json",
            "--prompt",
            "hi",
            "--max-new-tokens",
            "4",
        ],
        d,
    );
    assert_fails(&o, &["mha.json", "model", "tiny-mha", "kvpr plan"]);
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-mha",
            "--plan",
            "mha.json",
            "--prompt",
            "hi",
            "--prompt",
            "yo",
            "--max-new-tokens",
            "4",
        ],
        d,
    );
    assert_fails(&o, &["mha.json", "batch"]);
}

#[test]
fn calibrate_writes_a_profile_and_cuda_without_a_driver_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = kvpr(&["calibrate", "--quick", "--out", "cpu.json"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("GB/s"), "{}", stdout(&o));
    let p = plans::HardwareProfile::load(&dir.path().join("cpu.json")).unwrap();
    assert_eq!(p.link.h2d_pinned.source, plans::Source::Measured);

    let o = kvpr(&["calibrate", "--device", "cuda:0", "--quick"], dir.path());
    if o.status.success() {
        eprintln!("a CUDA driver is present: the no-driver message is not checked here");
    } else {
        assert_fails(&o, &["CUDA", "--device cpu"]);
    }
}

/// The CPU reference profile with its link slowed 50 times, so that the
/// planner recomputes part of a multi-head model's context.
fn slow_link_profile(dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(profile("cpu-reference.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for p in v["link"]["h2d_pinned"]["points"].as_array_mut().unwrap() {
        p["gbps"] = serde_json::json!(p["gbps"].as_f64().unwrap() / 50.0);
    }
    let path = dir.join("slow-link.json");
    std::fs::write(&path, v.to_string()).unwrap();
    path.display().to_string()
}

/// Runs `kvpr run` with `plan` (`--plan FILE` or `--hardware FILE`) and
/// returns its stdout, failing the test on a non-zero exit.
fn run_ok(dir: &std::path::Path, model: &str, plan: &[&str], prompt: &str, n: &str) -> String {
    let mut args = vec!["run", "--model", model, "--prompt", prompt];
    args.extend(["--max-new-tokens", n]);
    args.extend(plan);
    let o = kvpr(&args, dir);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Issue 10, item 3, on a multi-head preset whose plan recomputes: a plan made
/// for `--prompt-len 512` drives prompts of 5, 100 and 512 tokens (the byte
/// tokenizer: one token per byte) with the tokens of a run planned for each
/// exact prompt; a 600-token prompt is refused, naming both ranges.
#[test]
fn a_plan_for_prompt_len_512_serves_shorter_prompts_with_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hw = slow_link_profile(d);
    let model = "preset:llama-2-7b-tiny";
    let o = kvpr(
        &[
            "plan",
            "--model",
            model,
            "--hardware",
            &hw,
            "--batch",
            "1",
            "--prompt-len",
            "512",
            "--gen-len",
            "8",
            // The executor's own buffers (9.30 MiB, prefill's activations
            // included) and ~50 resident tokens.
            "--gpu-memory-budget",
            "10312KiB",
            "--out",
            "p512.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("covers contexts 1..=519"),
        "{}",
        stdout(&o)
    );
    let plan = plans::Plan::load(&d.join("p512.json")).unwrap();
    assert_eq!(plan.covered(), Some((1, 519)));
    for s in [100, 512] {
        let st = plan.step_for(s).unwrap();
        assert!(st.recompute_tokens > 0, "nothing recomputed at {s}: {st:?}");
    }
    let text = "kvpr recomputes part of the context while the rest crosses the link. ".repeat(10);
    for n in [5, 100, 512] {
        let prompt = &text[..n];
        let from_plan = run_ok(d, model, &["--plan", "p512.json"], prompt, "8");
        let out = format!("exact{n}.json");
        let exact = run_ok(
            d,
            model,
            &["--hardware", &hw, "--plan-out", &out],
            prompt,
            "8",
        );
        assert_eq!(from_plan, exact, "{n}-token prompt");
        let exact_plan = plans::Plan::load(&d.join(&out)).unwrap();
        assert_eq!(exact_plan.workload.prompt_len, n);
    }
    let o = kvpr(
        &[
            "run",
            "--model",
            model,
            "--plan",
            "p512.json",
            "--prompt",
            &text[..600],
            "--max-new-tokens",
            "8",
        ],
        d,
    );
    assert_fails(
        &o,
        &[
            "p512.json covers contexts 1..=519 (prompts up to 512 tokens + 8 new)",
            "this run needs 600..=607",
        ],
    );
}

/// The same on the real model (grouped-query attention: resident prefix and
/// transfer, nothing recomputed): a plan for up to 512 prompt tokens serves
/// a short, a medium and a long prompt with the text of an exact plan.
#[test]
fn smollm2_plan_for_512_tokens_serves_shorter_prompts_with_the_same_text() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hw = cpu_profile();
    let o = kvpr(
        &[
            "plan",
            "--model",
            &model,
            "--hardware",
            &hw,
            "--batch",
            "1",
            "--prompt-len",
            "512",
            "--gen-len",
            "4",
            // The executor's own buffers (16.49 MiB, 11.63 of them
            // prefill's activations) and 3.14 MiB of resident K/V.
            "--gpu-memory-budget",
            "20100KiB",
            "--out",
            "p512.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sentence = "The quick brown fox jumps over the lazy dog near the river bank. ";
    let prompts = [
        "The capital of France is".to_string(),
        sentence.repeat(7),
        sentence.repeat(36),
    ];
    let mut lens = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let from_plan = run_ok(d, &model, &["--plan", "p512.json"], prompt, "4");
        let out = format!("exact{i}.json");
        let exact = run_ok(
            d,
            &model,
            &["--hardware", &hw, "--plan-out", &out],
            prompt,
            "4",
        );
        assert_eq!(from_plan, exact, "prompt {i}");
        lens.push(
            plans::Plan::load(&d.join(&out))
                .unwrap()
                .workload
                .prompt_len,
        );
    }
    assert!(
        lens[0] <= 8 && (80..=120).contains(&lens[1]) && (400..=512).contains(&lens[2]),
        "prompt lengths in tokens: {lens:?}"
    );
    let o = kvpr(
        &[
            "run",
            "--model",
            &model,
            "--plan",
            "p512.json",
            "--prompt",
            &sentence.repeat(45),
            "--max-new-tokens",
            "4",
        ],
        d,
    );
    assert_fails(&o, &["covers contexts 1..=515", "this run needs"]);
}

/// Issue 10, item 4: `--temperature 0` is greedy (the default), and sampling
/// with a seed gives the same tokens twice; bad values name their flag.
#[test]
fn temperature_0_is_greedy_and_a_seed_repeats_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hw = cpu_profile();
    let model = "preset:tiny-mha";
    let plan = ["--hardware", hw.as_str()];
    let run = |extra: &[&str]| {
        let mut p = plan.to_vec();
        p.extend(extra);
        run_ok(d, model, &p, "sampling", "16")
    };
    let greedy = run(&[]);
    assert_eq!(run(&["--temperature", "0"]), greedy);
    assert_eq!(
        run(&["--temperature", "0", "--top-k", "5", "--seed", "9"]),
        greedy
    );
    assert_eq!(run(&["--temperature", "1", "--top-k", "1"]), greedy);
    let sampled = [
        "--temperature",
        "0.9",
        "--top-k",
        "50",
        "--top-p",
        "0.95",
        "--seed",
        "7",
    ];
    assert_eq!(run(&sampled), run(&sampled));
    let hot = ["--temperature", "2", "--seed", "3"];
    assert_eq!(run(&hot), run(&hot));

    let bad = |extra: &[&str], flag: &str| {
        let mut args = vec!["run", "--model", model, "--hardware", &hw, "--prompt", "hi"];
        args.extend(extra);
        assert_fails(&kvpr(&args, d), &[flag]);
    };
    bad(&["--temperature", "-1"], "--temperature");
    bad(&["--temperature", "NaN"], "--temperature");
    bad(&["--temperature", "inf"], "--temperature");
    bad(&["--temperature", "1", "--top-k", "0"], "--top-k");
    bad(&["--temperature", "1", "--top-k", "-3"], "--top-k");
    bad(&["--temperature", "1", "--top-p", "0"], "--top-p");
    bad(&["--temperature", "1", "--top-p", "1.5"], "--top-p");
}

/// Issue 12: prompts of different lengths decode together as a ragged batch,
/// each with the tokens it gets alone; with a small device budget the rest
/// of the K/V is offloaded and the tokens do not change.
#[test]
fn smollm2_ragged_prompts_decode_as_each_alone() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hw = cpu_profile();
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village by the sea, there lived",
    ];
    let tokens = |args: &[&str], out: &str| -> Vec<Vec<u64>> {
        let mut a = vec![
            "run",
            "--model",
            &model,
            "--hardware",
            &hw,
            "--max-new-tokens",
            "10",
        ];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--summary-json", out]);
        let o = kvpr(&a, dir.path());
        assert!(o.status.success(), "{}", stderr(&o));
        if args.contains(&"--gpu-memory-budget") {
            assert!(
                stderr(&o).contains("paged cache of 1 blocks of 16 tokens")
                    && stderr(&o).contains("the rest offloaded"),
                "{}",
                stderr(&o)
            );
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(out)).unwrap()).unwrap();
        serde_json::from_value(v["tokens"].clone()).unwrap()
    };
    let alone: Vec<Vec<u64>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| tokens(&["--prompt", p], &format!("a{i}.json")).remove(0))
        .collect();
    let both = ["--prompt", prompts[0], "--prompt", prompts[1]];
    assert_eq!(tokens(&both, "r.json"), alone);
    let mut tight = both.to_vec();
    // The engine's buffers and one block of pool (2.38 MiB): the rest offloaded.
    tight.extend_from_slice(&["--gpu-memory-budget", "2500KiB"]);
    assert_eq!(tokens(&tight, "o.json"), alone);
    // A ragged batch samples too, each prompt on its own seed: the same
    // flags give the same tokens, and they are not the greedy ones.
    let mut sampled = both.to_vec();
    sampled.extend_from_slice(&["--temperature", "0.9", "--seed", "5"]);
    let drawn = tokens(&sampled, "s1.json");
    assert_eq!(tokens(&sampled, "s2.json"), drawn);
    assert_ne!(drawn, alone);
}
