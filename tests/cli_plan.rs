//! `kvpr plan` and `kvpr simulate` end to end: the real binary in temporary folders.

mod common;
use common::*;

fn a100() -> String {
    profile("a100-pcie4.json").display().to_string()
}

#[test]
fn plans_llama_2_7b_on_a100_and_simulates_it() {
    let dir = tempfile::tempdir().unwrap();
    let hw = a100();
    let o = kvpr(
        &[
            "plan",
            "--model",
            "preset:llama-2-7b",
            "--hardware",
            &hw,
            "--batch",
            "8",
            "--prompt-len",
            "4096",
            "--gen-len",
            "32",
            "--out",
            "p.json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("predicted decode step") && out.contains("I/O floor"),
        "{out}"
    );
    let plan = plans::Plan::load(&dir.path().join("p.json")).unwrap();
    assert!(plan.summary.speedup_vs_transfer > 1.0);
    let st = plan.step_for(4096).unwrap();
    assert!(
        st.recompute_tokens > 0 && st.recompute_tokens < 4096,
        "{st:?}"
    );

    let o = kvpr(
        &[
            "simulate",
            "--plan",
            "p.json",
            "--hardware",
            &hw,
            "--context-len",
            "4100",
            "--svg",
            "t.svg",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("simulated / predicted"),
        "{}",
        stdout(&o)
    );
    let svg = std::fs::read_to_string(dir.path().join("t.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("recompute"));
}

#[test]
fn gqa_says_why_nothing_is_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let o = kvpr(
        &[
            "plan",
            "--model",
            "preset:smollm2-135m",
            "--hardware",
            &a100(),
            "--batch",
            "8",
            "--prompt-len",
            "2048",
            "--gen-len",
            "16",
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for st in plan["steps"].as_array().unwrap() {
        assert_eq!(st["recompute_tokens"], 0);
    }
    assert!(stderr(&o).contains("grouped-query"), "{}", stderr(&o));
    // --json alone writes no file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Runs `kvpr plan` with `extra` replacing defaults; expects exit 2, the needles, and no plan file.
fn plan_fails(dir: &std::path::Path, hw: &str, extra: &[&str], needles: &[&str]) {
    let mut args = vec!["plan", "--hardware", hw, "--out", "p.json"];
    let defaults = [
        ("--model", "preset:llama-2-7b"),
        ("--batch", "8"),
        ("--prompt-len", "1024"),
        ("--gen-len", "16"),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend(extra);
    let o = kvpr(&args, dir);
    assert_fails(&o, needles);
    assert!(!dir.join("p.json").exists(), "a plan file was left behind");
}

#[test]
fn bad_profiles_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = std::fs::read_to_string(profile("a100-pcie4.json")).unwrap();

    std::fs::write(d.join("malformed.json"), &good[..good.len() / 2]).unwrap();
    plan_fails(d, "malformed.json", &[], &["malformed.json", "--hardware"]);

    std::fs::write(
        d.join("v2.json"),
        good.replace("kvpr.hardware/v1", "kvpr.hardware/v2"),
    )
    .unwrap();
    plan_fails(
        d,
        "v2.json",
        &[],
        &["v2.json", "kvpr.hardware/v2", "kvpr.hardware/v1"],
    );

    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["link"].as_object_mut().unwrap().remove("h2d_pinned");
    std::fs::write(d.join("nocurve.json"), v.to_string()).unwrap();
    plan_fails(d, "nocurve.json", &[], &["nocurve.json", "h2d_pinned"]);

    plan_fails(d, "missing.json", &[], &["missing.json"]);
}

#[test]
fn bad_workloads_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hw = a100();
    plan_fails(d, &hw, &["--batch", "0"], &["--batch"]);
    plan_fails(
        d,
        &hw,
        &["--prompt-len", "5000"],
        &["--prompt-len", "context"],
    );
    plan_fails(
        d,
        &hw,
        &[
            "--batch",
            "64",
            "--prompt-len",
            "4096",
            "--gpu-memory-budget",
            "64MiB",
        ],
        &["--gpu-memory-budget"],
    );
    plan_fails(
        d,
        &hw,
        &["--host-memory-budget", "1MiB"],
        &["--host-memory-budget"],
    );
    plan_fails(
        d,
        &hw,
        &["--gpu-memory-budget", "lots"],
        &["--gpu-memory-budget"],
    );
    plan_fails(d, &hw, &["--schedule", "magic"], &["--schedule"]);
    plan_fails(
        d,
        &hw,
        &["--model", "preset:gpt-9"],
        &["gpt-9", "llama-2-7b"],
    );
}

#[test]
fn simulate_refuses_a_context_outside_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let hw = a100();
    let o = kvpr(
        &[
            "plan",
            "--model",
            "preset:opt-6.7b",
            "--hardware",
            &hw,
            "--batch",
            "4",
            "--prompt-len",
            "512",
            "--gen-len",
            "8",
            "--out",
            "p.json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kvpr(
        &[
            "simulate",
            "--plan",
            "p.json",
            "--hardware",
            &hw,
            "--context-len",
            "9000",
        ],
        dir.path(),
    );
    assert_fails(&o, &["9000"]);
}
