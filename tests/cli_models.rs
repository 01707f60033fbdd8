//! Issue 18: the model families people run, computed as Hugging Face
//! transformers computes them, and never silently wrong. `kvpr run` on each
//! tiny checkpoint transformers wrote (`tests/fixtures/hf/`) gives its greedy
//! tokens; every config key that would change the function and that kvpr does
//! not implement is refused with exit 2, naming the key and its value.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails, kvpr, profile, stderr, stdout};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A copy of fixture `name` in `dir` with `edit` applied to its config.json.
fn edited(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, out.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = out.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&cfg, v.to_string()).unwrap();
    out.display().to_string()
}

/// `kvpr run` on `model` for `n` tokens; the summary's tokens.
fn run_tokens(dir: &Path, model: &str, prompt: &str, n: usize, extra: &[&str]) -> Vec<u64> {
    let hw = profile("cpu-reference.json");
    let summary = dir.join("summary.json");
    let n = n.to_string();
    let mut args = vec![
        "run",
        "--model",
        model,
        "--hardware",
        hw.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        &n,
        "--summary-json",
        summary.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = kvpr(&args, dir);
    assert!(o.status.success(), "{model}: {}", stderr(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    v["tokens"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// `kvpr run` of two tokens on `model` (for the refusals).
fn run_two_tokens(dir: &Path, model: &str) -> std::process::Output {
    let hw = profile("cpu-reference.json");
    let args = ["run", "--model", model, "--hardware", hw.to_str().unwrap()];
    kvpr(
        &[&args[..], &["--prompt", "hello", "--max-new-tokens", "2"]].concat(),
        dir,
    )
}

#[test]
fn kvpr_run_gives_transformers_tokens_for_every_family() {
    let dir = tempfile::tempdir().unwrap();
    // Every fixture folder.
    let mut names: Vec<String> = std::fs::read_dir(fixture(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("expected.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 12, "{names:?}");
    for name in &names {
        let name = name.as_str();
        let e = expected(name);
        let want: Vec<u64> = e["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        let model = fixture(name).display().to_string();
        let prompt = e["prompt"].as_str().unwrap();
        let got = run_tokens(dir.path(), &model, prompt, want.len(), &["--ignore-eos"]);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn generation_stops_at_any_eos_id_of_generation_config_unless_ignore_eos() {
    let dir = tempfile::tempdir().unwrap();
    let e = expected("qwen2");
    let want: Vec<u64> = e["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    // Make the fourth greedy token the second of two EOS ids.
    let model = edited(dir.path(), "qwen2", |_| {});
    let gen = Path::new(&model).join("generation_config.json");
    std::fs::write(&gen, format!(r#"{{"eos_token_id": [3, {}]}}"#, want[3])).unwrap();
    let prompt = e["prompt"].as_str().unwrap();
    let stopped = run_tokens(dir.path(), &model, prompt, 16, &[]);
    assert_eq!(stopped, want[..4], "stops at (and includes) the EOS id");
    let all = run_tokens(dir.path(), &model, prompt, 16, &["--ignore-eos"]);
    assert_eq!(all, want);
}

#[test]
fn plan_names_the_family_and_what_it_adds() {
    let dir = tempfile::tempdir().unwrap();
    let hw = profile("cpu-reference.json");
    for (name, needle) in [
        ("qwen2", "qwen2 (q/k/v bias)"),
        ("qwen3", "qwen3 (q/k norm)"),
        ("mistral-window", "mistral (sliding window 6)"),
        ("llama3-rope", "llama (llama3 RoPE x8)"),
    ] {
        let model = fixture(name).display().to_string();
        let out = dir.path().join(format!("{name}.json"));
        let o = kvpr(
            &[
                "plan",
                "--model",
                &model,
                "--hardware",
                hw.to_str().unwrap(),
                "--batch",
                "1",
                "--prompt-len",
                "16",
                "--gen-len",
                "8",
                "--out",
                out.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let text = stdout(&o) + &stderr(&o);
        assert!(text.contains(needle), "{name}: {text}");
    }
}

/// A change to a copied fixture's config.json.
type Edit = Box<dyn FnOnce(&mut Value)>;

/// Each key that changes the function and is not implemented: exit 2, the
/// key and its value named, and what is supported.
#[test]
fn function_changing_keys_kvpr_does_not_implement_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let set = |key: &'static str, value: Value| move |v: &mut Value| v[key] = value;
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "llama-mha",
            Box::new(|v: &mut Value| v["rope_parameters"]["rope_type"] = "longrope".into()),
            &["rope_type", "longrope", "llama3"],
        ),
        (
            "llama-mha",
            Box::new(set("hidden_act", "gelu_pytorch_tanh".into())),
            &["hidden_act", "gelu_pytorch_tanh", "silu"],
        ),
        (
            "llama-mha",
            Box::new(set("partial_rotary_factor", 0.5.into())),
            &["partial_rotary_factor", "0.5"],
        ),
        (
            "llama-mha",
            Box::new(set("attn_logit_softcapping", 50.0.into())),
            &["attn_logit_softcapping", "50"],
        ),
        (
            "llama-mha",
            Box::new(set("final_logit_softcapping", 30.0.into())),
            &["final_logit_softcapping", "30"],
        ),
        (
            "llama-mha",
            Box::new(set("query_pre_attn_scalar", 256.into())),
            &["query_pre_attn_scalar", "256"],
        ),
        (
            "llama-mha",
            Box::new(set("model_type", "gemma2".into())),
            &["model_type", "gemma2", "qwen3"],
        ),
        (
            "qwen2",
            Box::new(|v: &mut Value| {
                v["use_sliding_window"] = true.into();
                v["sliding_window"] = 8.into();
                v["max_window_layers"] = 1.into();
                v.as_object_mut().unwrap().remove("layer_types");
            }),
            &["sliding_window", "1 of 2 layers"],
        ),
        (
            "qwen2",
            Box::new(set("mlp_bias", true.into())),
            &["mlp_bias", "no MLP biases"],
        ),
        (
            "llama-mha",
            Box::new(set(
                "quantization_config",
                serde_json::json!({"quant_method": "awq"}),
            )),
            &["quantization_config", "awq"],
        ),
    ];
    for (i, (name, edit, needles)) in cases.into_iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        std::fs::create_dir_all(&sub).unwrap();
        let model = edited(&sub, name, edit);
        let o = run_two_tokens(dir.path(), &model);
        assert_fails(&o, needles);
        assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
    }
}

#[test]
fn a_tensor_the_forward_does_not_use_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Qwen2's q/k/v biases under a config that says llama without biases.
    let model = edited(dir.path(), "qwen2", |v| v["model_type"] = "llama".into());
    let o = run_two_tokens(dir.path(), &model);
    assert_fails(&o, &["model.layers.0.self_attn.k_proj.bias", "not used"]);
}
