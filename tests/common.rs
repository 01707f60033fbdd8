//! Helpers shared by the end-to-end tests: run the real `kvpr` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn kvpr(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvpr"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the kvpr binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A shipped hardware profile, by file name.
pub fn profile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plans/hardware")
        .join(name)
}

/// Asserts a failed run: exit code 2 and every `needles` in stderr.
pub fn assert_fails(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// The real model, or `None` (with a printed reason) when it was not fetched.
pub fn smollm2() -> Option<String> {
    let path = std::env::var_os("KVPR_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/kvpr/SmolLM2-135M-Instruct.Q4_1.gguf"))
        })?;
    if path.is_file() {
        Some(path.display().to_string())
    } else {
        let why = format!(
            "{} not found; run `make model` (scripts/fetch-model.sh)",
            path.display()
        );
        // `make test` sets it: there a missing model fails, not skips.
        assert!(
            std::env::var_os("KVPR_REQUIRE_MODEL").is_none(),
            "KVPR_REQUIRE_MODEL is set and {why}"
        );
        eprintln!("skipping: {why}");
        None
    }
}

/// The folder holding the OpenAI Python client (`make openai`,
/// `KVPR_OPENAI`), or `None` (with a printed reason) when it was not fetched.
pub fn openai_client() -> Option<PathBuf> {
    let dir = std::env::var_os("KVPR_OPENAI").map(PathBuf::from);
    match dir {
        Some(d) if d.join("installed").is_file() => Some(d),
        _ => {
            let why = "the OpenAI Python client is not fetched (KVPR_OPENAI unset or incomplete); run `make openai`";
            assert!(
                std::env::var_os("KVPR_REQUIRE_MODEL").is_none(),
                "KVPR_REQUIRE_MODEL is set and {why}"
            );
            eprintln!("skipping: {why}");
            None
        }
    }
}

/// The CPU reference profile with a constant link of `gbps`, the rate the
/// run paces its copies to, so the plans price the link the run has.
pub fn paced_profile(dir: &std::path::Path, gbps: f64) -> String {
    let text = std::fs::read_to_string(profile("cpu-reference.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for curve in ["h2d_pinned", "d2h_pinned"] {
        for p in v["link"][curve]["points"].as_array_mut().unwrap() {
            p["gbps"] = serde_json::json!(gbps);
        }
    }
    let path = dir.join("paced.json");
    std::fs::write(&path, v.to_string()).unwrap();
    path.display().to_string()
}

/// `kvpr plan` of a tiny preset (batch 1, 4 + 4 tokens) on `hardware`,
/// writing `out`, run in `dir`.
pub fn tiny_plan(dir: &Path, hardware: &str, out: &str) -> Output {
    kvpr(
        &[
            "plan",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            hardware,
            "--batch",
            "1",
            "--prompt-len",
            "4",
            "--gen-len",
            "4",
            "--out",
            out,
        ],
        dir,
    )
}
