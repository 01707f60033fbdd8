//! `kvpr run` and `kvpr calibrate` end to end: the real binary, the real model
//! (SmolLM2-135M, fetched by `make test`), temporary folders.

mod common;
use common::*;

use std::path::PathBuf;

/// The real model, or `None` (with a printed reason) when it was not fetched.
fn smollm2() -> Option<String> {
    let path = std::env::var_os("KVPR_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/kvpr/SmolLM2-135M-Instruct.Q4_1.gguf"))
        })?;
    if path.is_file() {
        Some(path.display().to_string())
    } else {
        eprintln!(
            "skipping: {} not found; run `make model` (scripts/fetch-model.sh)",
            path.display()
        );
        None
    }
}

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
