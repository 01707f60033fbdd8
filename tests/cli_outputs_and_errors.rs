//! Regression tests for issue 10's reliability findings on outputs and
//! messages: output paths that are not regular files (2), memory (8),
//! half-written outputs (10), unclear messages (12), flags named by the CLI and
//! not by the libraries, sizes past u64. The real binary in temporary folders.

mod common;
use common::*;

use std::process::Command;

fn cpu_profile() -> String {
    profile("cpu-reference.json").display().to_string()
}

#[cfg(unix)]
#[test]
fn output_paths_that_are_not_regular_files_are_refused_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let made = Command::new("mkfifo").arg(d.join("fifo")).status();
    let have_fifo = made.map(|s| s.success()).unwrap_or(false);
    std::fs::write(d.join("target.json"), "keep").unwrap();
    std::os::unix::fs::symlink(d.join("target.json"), d.join("link.json")).unwrap();
    std::fs::create_dir(d.join("folder")).unwrap();

    for out in ["link.json", "folder", "fifo"] {
        if out == "fifo" && !have_fifo {
            eprintln!("skipping the FIFO case: mkfifo is not available");
            continue;
        }
        let o = tiny_plan(d, &cpu_profile(), out);
        assert_fails(&o, &["--out", out, "exists and is not a regular file"]);
    }
    // Nothing was replaced.
    let meta = |p: &str| std::fs::symlink_metadata(d.join(p)).unwrap().file_type();
    assert!(meta("link.json").is_symlink());
    assert!(meta("folder").is_dir());
    if have_fifo {
        assert!(meta("fifo").is_fifo());
    }
    assert_eq!(
        std::fs::read_to_string(d.join("target.json")).unwrap(),
        "keep"
    );

    // simulate --svg goes through the same check, before simulating.
    assert!(tiny_plan(d, &cpu_profile(), "p.json").status.success());
    let o = kvpr(
        &[
            "simulate",
            "--plan",
            "p.json",
            "--hardware",
            &cpu_profile(),
            "--context-len",
            "5",
            "--svg",
            "link.json",
        ],
        d,
    );
    assert_fails(&o, &["--svg", "exists and is not a regular file"]);
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(meta("link.json").is_symlink());
}

#[test]
fn calibrate_into_a_missing_folder_fails_before_measuring() {
    let dir = tempfile::tempdir().unwrap();
    let o = kvpr(
        &["calibrate", "--quick", "--out", "no/such/folder/cpu.json"],
        dir.path(),
    );
    assert_fails(&o, &["--out", "does not exist"]);
    // No measurement was made: no tables on stdout, no progress on stderr.
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(!stderr(&o).contains("GB/s"), "{}", stderr(&o));
}

#[test]
fn a_failed_run_leaves_no_plan_out_file() {
    let dir = tempfile::tempdir().unwrap();
    // tiny-mha's context is 512 tokens: 600 new tokens run past it.
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            &cpu_profile(),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "600",
            "--plan-out",
            "p.json",
        ],
        dir.path(),
    );
    assert_fails(&o, &["context"]);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn run_max_new_tokens_zero_names_its_own_flag() {
    let dir = tempfile::tempdir().unwrap();
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            &cpu_profile(),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "0",
        ],
        dir.path(),
    );
    assert_fails(&o, &["--max-new-tokens"]);
    assert!(!stderr(&o).contains("--gen-len"), "{}", stderr(&o));
}

#[test]
fn bad_numbers_in_a_plan_file_are_named_as_the_file_field_not_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(tiny_plan(d, &cpu_profile(), "p.json").status.success());
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("p.json")).unwrap()).unwrap();
    for (field, value, flag) in [
        ("batch", 0u64, "--batch"),
        ("gpu_memory_budget", 1, "--gpu-memory-budget"),
    ] {
        let mut v = good.clone();
        v["workload"][field] = value.into();
        std::fs::write(d.join("bad.json"), v.to_string()).unwrap();
        let o = kvpr(
            &[
                "simulate",
                "--plan",
                "bad.json",
                "--hardware",
                &cpu_profile(),
                "--context-len",
                "5",
            ],
            d,
        );
        assert_fails(&o, &["bad.json", &format!("workload.{field}")]);
        assert!(!stderr(&o).contains(flag), "{}", stderr(&o));
    }
}

#[test]
fn a_cause_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    // A path through a regular file: the OS says "Not a directory" once.
    std::fs::write(dir.path().join("folder.json"), b"{}").unwrap();
    let o = kvpr(
        &[
            "plan",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            "folder.json/profile.json",
            "--batch",
            "1",
            "--prompt-len",
            "4",
            "--gen-len",
            "4",
            "--json",
        ],
        dir.path(),
    );
    assert_fails(&o, &["--hardware", "folder.json/profile.json"]);
    let err = stderr(&o);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

#[test]
fn sizes_past_u64_are_refused_not_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let o = kvpr(
        &[
            "plan",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            &cpu_profile(),
            "--batch",
            "1",
            "--prompt-len",
            "4",
            "--gen-len",
            "4",
            "--gpu-memory-budget",
            "20000000000GiB",
            "--json",
        ],
        dir.path(),
    );
    assert_fails(&o, &["--gpu-memory-budget", "20000000000GiB", "more bytes"]);
}

#[test]
fn gguf_errors_carry_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    // A GGUF version no reader knows: candle refuses it with a backtrace inside.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(99u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(5u64.to_le_bytes());
    std::fs::write(dir.path().join("bad.gguf"), bytes).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kvpr"))
        .args(["run", "--model", "bad.gguf", "--prompt", "hi"])
        .args(["--hardware", &cpu_profile()])
        .env("RUST_BACKTRACE", "1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_fails(&o, &["bad.gguf"]);
    let err = stderr(&o);
    assert!(err.lines().count() <= 2, "{err}");
    assert!(!err.contains("backtrace"), "{err}");
}

#[test]
fn a_model_larger_than_memory_is_refused_with_what_it_needs() {
    let spec = plans::ModelSpec::preset("llama-2-13b").unwrap();
    let needed = spec.total_params() * 4;
    match runtime::available_memory() {
        Some(a) if a < needed => {}
        a => {
            eprintln!("skipping: {a:?} bytes available, llama-2-13b fits");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:llama-2-13b",
            "--hardware",
            &cpu_profile(),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
        ],
        dir.path(),
    );
    assert_fails(&o, &["llama-2-13b", "needs", "available", "smaller model"]);
}

#[test]
fn a_batch_larger_than_memory_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // 4000 sequences of up to 4096 tokens: terabytes of K/V.
    std::fs::write(dir.path().join("prompts.txt"), "hi\n".repeat(4000)).unwrap();
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:llama-2-7b-tiny",
            "--hardware",
            &cpu_profile(),
            "--prompts-file",
            "prompts.txt",
            "--max-new-tokens",
            "4000",
            "--host-memory-budget",
            "1000TiB",
        ],
        dir.path(),
    );
    assert_fails(&o, &["batch of 4000", "needs", "available", "fewer"]);
}

#[test]
fn a_plan_for_a_huge_generation_does_not_size_a_short_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            "preset:tiny-mha",
            "--prompt",
            "hi",
            "--max-new-tokens",
            "4",
        ];
        args.extend(extra);
        kvpr(&args, d)
    };
    let hw = cpu_profile();
    let o = run(&["--hardware", &hw, "--plan-out", "p.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Stretch the plan to a billion generated tokens: its last step covers them.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("p.json")).unwrap()).unwrap();
    let gen = v["workload"]["gen_len"].as_u64().unwrap();
    let extra = 1_000_000_000 - gen;
    v["workload"]["gen_len"] = 1_000_000_000u64.into();
    let last = v["steps"].as_array_mut().unwrap().last_mut().unwrap();
    for key in ["context_len_to", "transfer_tokens"] {
        last[key] = (last[key].as_u64().unwrap() + extra).into();
    }
    std::fs::write(d.join("huge.json"), v.to_string()).unwrap();
    let o = run(&["--plan", "huge.json"]);
    // Either refused with a message or run in the memory this run needs;
    // never an abort.
    let code = o.status.code();
    assert!(
        code == Some(0) || code == Some(2),
        "{code:?}: {}",
        stderr(&o)
    );
    if code == Some(2) {
        assert!(stderr(&o).contains("huge.json"), "{}", stderr(&o));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_failed_allocation_is_an_error_not_an_abort() {
    // The memory check passes (the machine has the memory), but the process
    // may not map it: the allocation itself fails and must be reported.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prompts.txt"), "hi\n".repeat(100)).unwrap();
    let script = format!(
        "ulimit -v 3000000 && exec {} run --model preset:llama-2-7b-tiny --hardware {} \
         --prompts-file prompts.txt --max-new-tokens 4000",
        env!("CARGO_BIN_EXE_kvpr"),
        cpu_profile()
    );
    let o = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    // On a machine with less than the run needs, the check refuses it first.
    assert_fails(&o, &[]);
    let err = stderr(&o);
    assert!(
        err.contains("cannot allocate") || err.contains("available"),
        "{err}"
    );
}
