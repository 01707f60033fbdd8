//! Bad input never panics, hangs or runs away with memory: the reliability
//! findings of issue 10, each on crafted files in a temporary folder, run
//! through the real binary. Every case exits 2 and names the file and field.

mod common;
use common::*;

use std::path::Path;

/// A GGUF v3 file: `kvs` are `(key, type, value bytes)`, then `tensors`
/// (`name`, dims, type id, offset), then `pad` bytes.
fn gguf(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)], pad: usize) -> Vec<u8> {
    let s = |b: &[u8]| {
        let mut v = (b.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(b);
        v
    };
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend((tensors.len() as u64).to_le_bytes());
    f.extend((kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        f.extend(s(k.as_bytes()));
        f.extend(ty.to_le_bytes());
        f.extend(v);
    }
    for (name, dims, ty, offset) in tensors {
        f.extend(s(name.as_bytes()));
        f.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            f.extend(d.to_le_bytes());
        }
        f.extend(ty.to_le_bytes());
        f.extend(offset.to_le_bytes());
    }
    f.resize(f.len().next_multiple_of(32) + pad, 0);
    f
}

fn string(v: &str) -> Vec<u8> {
    let mut b = (v.len() as u64).to_le_bytes().to_vec();
    b.extend(v.as_bytes());
    b
}

/// The llama metadata of a tiny model, with `freq_base`.
fn llama_kvs(freq_base: f32) -> Vec<(&'static str, u32, Vec<u8>)> {
    let u = |v: u32| v.to_le_bytes().to_vec();
    vec![
        ("general.architecture", 8, string("llama")),
        ("llama.embedding_length", 4, u(64)),
        ("llama.attention.head_count", 4, u(4)),
        ("llama.block_count", 4, u(2)),
        ("llama.feed_forward_length", 4, u(172)),
        ("llama.context_length", 4, u(512)),
        ("llama.rope.freq_base", 6, freq_base.to_le_bytes().to_vec()),
    ]
}

fn plan_args<'a>(model: &'a str, hw: &'a str) -> Vec<&'a str> {
    vec![
        "plan",
        "--model",
        model,
        "--hardware",
        hw,
        "--batch",
        "1",
        "--prompt-len",
        "16",
        "--gen-len",
        "8",
        "--out",
        "p.json",
    ]
}

fn cpu_profile() -> String {
    profile("cpu-reference.json").display().to_string()
}

/// The CPU reference profile with `field` (a JSON pointer) set to `value`.
fn profile_with(dir: &Path, pointer: &str, value: f64) -> String {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(profile("cpu-reference.json")).unwrap()).unwrap();
    *v.pointer_mut(pointer).unwrap() = serde_json::json!(value);
    let p = dir.join("hw.json");
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// A plan for tiny-mha made by the binary, as JSON.
fn made_plan(dir: &Path) -> serde_json::Value {
    let hw = cpu_profile();
    let o = kvpr(&plan_args("preset:tiny-mha", &hw), dir);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&std::fs::read(dir.join("p.json")).unwrap()).unwrap()
}

fn simulate(dir: &Path, plan: &serde_json::Value) -> std::process::Output {
    std::fs::write(dir.join("bad.json"), plan.to_string()).unwrap();
    let hw = cpu_profile();
    kvpr(
        &[
            "simulate",
            "--plan",
            "bad.json",
            "--hardware",
            &hw,
            "--context-len",
            "16",
            "--svg",
            "t.svg",
        ],
        dir,
    )
}

#[test]
fn gguf_with_alignment_zero_is_refused_by_plan_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(1u64.to_le_bytes());
    f.extend(string("general.alignment"));
    f.extend(4u32.to_le_bytes());
    f.extend(0u32.to_le_bytes());
    assert_eq!(f.len(), 57);
    std::fs::write(dir.path().join("a.gguf"), &f).unwrap();
    let hw = cpu_profile();
    let o = kvpr(&plan_args("a.gguf", &hw), dir.path());
    assert_fails(&o, &["a.gguf", "general.alignment"]);
    let o = kvpr(
        &[
            "run",
            "--model",
            "a.gguf",
            "--hardware",
            &hw,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
        ],
        dir.path(),
    );
    assert_fails(&o, &["a.gguf", "general.alignment"]);
}

#[test]
fn gguf_with_zero_dimension_token_embd_and_no_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = gguf(&llama_kvs(1e4), &[("token_embd.weight", &[], 0, 0)], 32);
    std::fs::write(dir.path().join("m.gguf"), f).unwrap();
    let o = kvpr(&plan_args("m.gguf", &cpu_profile()), dir.path());
    assert_fails(&o, &["m.gguf", "vocab_size"]);
}

#[test]
fn gguf_with_nan_freq_base_is_refused_not_written_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let f = gguf(
        &llama_kvs(f32::NAN),
        &[("token_embd.weight", &[64, 256], 0, 0)],
        64 * 256 * 4,
    );
    std::fs::write(dir.path().join("m.gguf"), f).unwrap();
    let o = kvpr(&plan_args("m.gguf", &cpu_profile()), dir.path());
    assert_fails(&o, &["m.gguf", "rope_theta"]);
    assert!(!dir.path().join("p.json").exists());
    // The same file with a finite freq_base plans.
    let f = gguf(
        &llama_kvs(1e4),
        &[("token_embd.weight", &[64, 256], 0, 0)],
        64 * 256 * 4,
    );
    std::fs::write(dir.path().join("m.gguf"), f).unwrap();
    let o = kvpr(&plan_args("m.gguf", &cpu_profile()), dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn profile_with_absurd_figures_is_refused_on_load_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (pointer, value, field) in [
        (
            "/launch_overhead_us/value",
            1e308,
            "launch_overhead_us.value",
        ),
        ("/gemm/points/0/tflops", 5e-324, "gemm.points[0].tflops"),
        (
            "/link/h2d_pinned/points/0/gbps",
            5e-324,
            "link.h2d_pinned.points[0].gbps",
        ),
        ("/attention_gbps/value", 5e-324, "attention_gbps.value"),
    ] {
        let hw = profile_with(dir.path(), pointer, value);
        let o = kvpr(&plan_args("preset:tiny-mha", &hw), dir.path());
        assert_fails(&o, &["hw.json", field]);
        let plan = made_plan_with(dir.path());
        let o = kvpr(
            &[
                "simulate",
                "--plan",
                &plan,
                "--hardware",
                &hw,
                "--context-len",
                "16",
                "--svg",
                "t.svg",
            ],
            dir.path(),
        );
        assert_fails(&o, &["hw.json", field]);
        assert!(!dir.path().join("t.svg").exists());
    }
}

fn made_plan_with(dir: &Path) -> String {
    let sub = dir.join("made");
    std::fs::create_dir_all(&sub).unwrap();
    made_plan(&sub);
    sub.join("p.json").display().to_string()
}

#[test]
fn plan_with_zero_layers_or_zero_block_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = made_plan(dir.path());
    let mut p = good.clone();
    p["model"]["n_layers"] = 0.into();
    assert_fails(
        &simulate(dir.path(), &p),
        &["bad.json", "model.num_hidden_layers"],
    );
    let mut p = good;
    p["block_tokens"] = 0.into();
    assert_fails(&simulate(dir.path(), &p), &["bad.json", "block_tokens"]);
}

#[test]
fn plan_with_huge_chunks_is_refused_before_simulating() {
    let dir = tempfile::tempdir().unwrap();
    let good = made_plan(dir.path());
    for chunks in [1u64 << 63, 100_000_000, 1_000_000] {
        let mut p = good.clone();
        p["steps"][0]["chunks"] = chunks.into();
        assert_fails(&simulate(dir.path(), &p), &["bad.json", "steps[0].chunks"]);
    }
}

#[test]
fn plan_whose_resident_tokens_wrap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = made_plan(dir.path());
    let s = &mut p["steps"][0];
    let to = s["context_len_to"].as_u64().unwrap();
    s["resident_tokens"] = u64::MAX.into();
    s["recompute_tokens"] = 0.into();
    s["transfer_tokens"] = (to + 1).into();
    assert_fails(
        &simulate(dir.path(), &p),
        &["bad.json", "steps[0]", "must equal"],
    );
}

#[test]
fn plan_with_a_billion_token_generation_is_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = made_plan(dir.path());
    p["workload"]["gen_len"] = 1_000_000_000u64.into();
    assert_fails(&simulate(dir.path(), &p), &["bad.json", "workload.gen_len"]);
}

#[test]
fn plan_with_a_non_finite_prediction_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = made_plan(dir.path());
    p["steps"][0]["kv_ready_us"] = serde_json::Value::Null;
    // null is not a number: refused by the parser, with the field.
    assert_fails(&simulate(dir.path(), &p), &["bad.json", "kv_ready_us"]);
    p["steps"][0]["kv_ready_us"] = serde_json::json!(-1.0);
    assert_fails(
        &simulate(dir.path(), &p),
        &["bad.json", "steps[0].kv_ready_us"],
    );
}

#[test]
fn gen_len_that_overflows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hw = cpu_profile();
    let mut args = plan_args("preset:tiny-mha", &hw);
    let i = args.iter().position(|a| *a == "--gen-len").unwrap();
    args[i + 1] = "18446744073709551615";
    let o = kvpr(&args, dir.path());
    assert_fails(&o, &["18446744073709551615"]);
    assert!(!dir.path().join("p.json").exists());
}

#[test]
fn hardware_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = kvpr(&plan_args("preset:tiny-mha", "/dev/zero"), dir.path());
    assert_fails(&o, &["/dev/zero", "not a regular file"]);
}

#[test]
fn bare_preset_names_work_for_plan_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let hw = cpu_profile();
    let o = kvpr(&plan_args("tiny-mha", &hw), dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kvpr(
        &[
            "run",
            "--model",
            "tiny-mha",
            "--hardware",
            &hw,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}
