//! The GGUF tokenizer splits text as llama.cpp does for the file's
//! `tokenizer.ggml.pre`: GGUF files with a small byte-level BPE (trained with
//! merges that cross every split boundary, so a wrong split gives other ids)
//! and each pre value kvpr reads, held to the ids of the Hugging Face
//! `tokenizers` library built with that model family's pre-tokenizer
//! (`tests/fixtures/tokenizers/bpe_pre.json`, made by
//! `scripts/hf-fixtures/make_tokenizer_cases.py`, which also checks every id
//! against llama.cpp itself). Unknown pre values are refused by name; EOT and
//! EOM end generation as EOS does; BOS follows llama.cpp's default; and the
//! real SmolLM2 file encodes as it did before kvpr read `tokenizer.ggml.pre`.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use runtime::{RuntimeError, Tokenizer};
use serde_json::Value as Json;

fn fixture(name: &str) -> Json {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tokenizers")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn strs(v: &Json) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// The fixture's vocabulary as GGUF tokenizer metadata (no tensors: the
/// tokenizer reads only the header), with `pre` (`None`: no key).
fn gguf(case: &Json, pre: Option<&str>) -> common::Gguf {
    let strings = |k: &str| Value::Array(strs(&case[k]).into_iter().map(Value::String).collect());
    let types = ids(&case["token_types"])
        .into_iter()
        .map(|t| Value::I32(t as i32))
        .collect();
    let id = |k: &str| Value::U32(case[k].as_u64().unwrap() as u32);
    let mut g = common::Gguf {
        metadata: Vec::new(),
        tensors: Vec::new(),
    };
    g.set("general.architecture", Value::String("llama".into()));
    g.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    g.set("tokenizer.ggml.tokens", strings("tokens"));
    g.set("tokenizer.ggml.token_type", Value::Array(types));
    g.set("tokenizer.ggml.merges", strings("merges"));
    for k in ["bos", "eos", "eot", "eom"] {
        let key = format!("{k}_token_id");
        g.set(&format!("tokenizer.ggml.{key}"), id(&key));
    }
    if let Some(pre) = pre {
        g.set("tokenizer.ggml.pre", Value::String(pre.into()));
    }
    g
}

fn write(g: &common::Gguf, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    g.write(&p);
    p
}

/// Loads as the runtime does: the header, then the tokenizer from it.
fn load(g: &common::Gguf, dir: &Path, name: &str) -> Result<Tokenizer, RuntimeError> {
    let p = write(g, dir, name);
    let (header, _) = plans::GgufHeader::open(&p).unwrap();
    Tokenizer::from_gguf_header(&header, &p)
}

fn pre_values(case: &Json) -> Vec<(Option<String>, String, bool)> {
    case["pre_values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["pre"].as_str().map(str::to_string),
                v["family"].as_str().unwrap().to_string(),
                v["add_bos"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_pre_value_splits_as_llama_cpp() {
    let case = fixture("bpe_pre.json");
    let strings = strs(&case["strings"]);
    let specials = ["<|im_end|>", "<|eot_id|>"];
    let dir = tempfile::tempdir().unwrap();
    let values = pre_values(&case);
    // The fixture covers exactly the values kvpr reads, and the key absent.
    let mut listed: Vec<&str> = values.iter().filter_map(|v| v.0.as_deref()).collect();
    let mut supported = Tokenizer::GGUF_PRE_TOKENIZERS.to_vec();
    listed.sort_unstable();
    supported.sort_unstable();
    assert_eq!(listed, supported);
    assert!(values.iter().any(|v| v.0.is_none()));

    for (i, (pre, family, _)) in values.iter().enumerate() {
        let mut g = gguf(&case, pre.as_deref());
        g.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        let tk = load(&g, dir.path(), &format!("{i}.gguf")).unwrap();
        let want = &case["encodings"][family.as_str()];
        for (s, want) in strings.iter().zip(want.as_array().unwrap()) {
            let got = tk.encode(s).unwrap();
            assert_eq!(got, ids(want), "pre {pre:?} ({family}), {s:?}");
            if !specials.iter().any(|t| s.contains(t)) {
                assert_eq!(&tk.decode(&got).unwrap(), s, "pre {pre:?}, {s:?}");
            }
        }
    }
}

/// The families are told apart by the fixture (a tokenizer that split every
/// value with GPT-2's regex, as kvpr did, fails the test above), and the
/// split kvpr used for every file before is still the `gpt-2` one.
#[test]
fn the_families_differ_and_gpt2_is_unchanged() {
    let case = fixture("bpe_pre.json");
    let enc = case["encodings"].as_object().unwrap();
    let names: Vec<&String> = enc.keys().collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            assert_ne!(enc[*a], enc[*b], "{a} and {b}");
        }
    }

    // What from_gguf_header built for every file before it read
    // tokenizer.ggml.pre: GPT-2's ByteLevel split.
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let tokens = strs(&case["tokens"]);
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = strs(&case["merges"])
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut old = tokenizers::Tokenizer::new(bpe);
    old.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    let specials: Vec<tokenizers::AddedToken> = tokens
        .iter()
        .zip(ids(&case["token_types"]))
        .filter(|(_, t)| *t == 3)
        .map(|(t, _)| tokenizers::AddedToken::from(t.clone(), true))
        .collect();
    old.add_special_tokens(&specials);

    let dir = tempfile::tempdir().unwrap();
    let mut g = gguf(&case, Some("gpt-2"));
    g.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
    let tk = load(&g, dir.path(), "gpt2.gguf").unwrap();
    for (s, want) in strs(&case["strings"])
        .iter()
        .zip(case["encodings"]["gpt2"].as_array().unwrap())
    {
        let before = old.encode(s.as_str(), true).unwrap().get_ids().to_vec();
        assert_eq!(before, ids(want), "{s:?}");
        assert_eq!(tk.encode(s).unwrap(), before, "{s:?}");
    }
}

/// Without `tokenizer.ggml.add_bos_token` a prompt starts with BOS where
/// llama.cpp's default for the pre-tokenizer says so (Llama-3's: its
/// converted files usually have no such key); the key, when present, wins.
#[test]
fn bos_follows_llama_cpp_default_unless_the_file_says() {
    let case = fixture("bpe_pre.json");
    let bos = case["bos_token_id"].as_u64().unwrap() as u32;
    let dir = tempfile::tempdir().unwrap();
    for (i, (pre, _, add_bos)) in pre_values(&case).iter().enumerate() {
        let mut g = gguf(&case, pre.as_deref());
        let tk = load(&g, dir.path(), &format!("{i}.gguf")).unwrap();
        assert_eq!(tk.add_bos, *add_bos, "pre {pre:?}");
        assert_eq!(tk.encode("a b").unwrap()[0] == bos, *add_bos, "pre {pre:?}");
        for says in [false, true] {
            g.set("tokenizer.ggml.add_bos_token", Value::Bool(says));
            let tk = load(&g, dir.path(), &format!("{i}-{says}.gguf")).unwrap();
            assert_eq!(tk.add_bos, says, "pre {pre:?}");
            assert_eq!(tk.encode("a b").unwrap()[0] == bos, says, "pre {pre:?}");
        }
    }
    // BOS by default but no BOS id: refused, not a prompt without it.
    let mut g = gguf(&case, Some("llama-bpe"));
    g.remove("tokenizer.ggml.bos_token_id");
    let e = load(&g, dir.path(), "no-bos.gguf").unwrap_err().to_string();
    assert!(e.contains("bos_token_id"), "{e}");
    g.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
    assert!(!load(&g, dir.path(), "no-bos-false.gguf").unwrap().add_bos);
}

#[test]
fn unknown_pre_values_are_refused_by_name() {
    let case = fixture("bpe_pre.json");
    let dir = tempfile::tempdir().unwrap();
    // `tekken` and `gpt-4o` are llama.cpp's (other splits); `gpt2` is nobody's.
    for (i, pre) in ["tekken", "gpt-4o", "deepseek-v3", "gpt2", "made-up"]
        .iter()
        .enumerate()
    {
        let g = gguf(&case, Some(pre));
        let e = load(&g, dir.path(), &format!("{i}.gguf")).unwrap_err();
        assert!(matches!(e, RuntimeError::Tokenizer { .. }), "{e:?}");
        let e = e.to_string();
        for needle in [
            "tokenizer.ggml.pre",
            &format!("{pre:?}"),
            &format!("{i}.gguf"),
            "llama-bpe",
            "qwen2",
            "smollm",
            "gpt-2",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
    let mut g = gguf(&case, None);
    g.set("tokenizer.ggml.pre", Value::U32(7));
    let e = load(&g, dir.path(), "num.gguf").unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.pre"), "{e}");
}

#[test]
fn eot_and_eom_end_generation() {
    let case = fixture("bpe_pre.json");
    let n = |k: &str| case[k].as_u64().unwrap() as u32;
    let (eos, eot, eom) = (n("eos_token_id"), n("eot_token_id"), n("eom_token_id"));
    let dir = tempfile::tempdir().unwrap();
    let mut g = gguf(&case, Some("llama-bpe"));
    let tk = load(&g, dir.path(), "all.gguf").unwrap();
    assert_eq!(tk.eos_token_ids, vec![eos, eot, eom]);
    assert!(tk.is_eos(eot) && tk.is_eos(eom) && !tk.is_eos(n("bos_token_id")));

    // Each once, EOS first.
    g.set("tokenizer.ggml.eot_token_id", Value::U32(eos));
    let tk = load(&g, dir.path(), "dup.gguf").unwrap();
    assert_eq!(tk.eos_token_ids, vec![eos, eom]);
    g.remove("tokenizer.ggml.eos_token_id");
    g.set("tokenizer.ggml.eot_token_id", Value::U32(eot));
    g.remove("tokenizer.ggml.eom_token_id");
    let tk = load(&g, dir.path(), "eot.gguf").unwrap();
    assert_eq!(tk.eos_token_ids, vec![eot]);
}

/// The real SmolLM2 file (`tokenizer.ggml.pre = "smollm"`: single digits,
/// then GPT-2's regex) encodes as kvpr did before it read the key, which is
/// also what llama.cpp gives (`tests/fixtures/tokenizers/smollm2_ids.json`).
#[test]
fn smollm2_encodes_as_before() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let tk = Tokenizer::from_gguf(&path).unwrap();
    assert_eq!(tk.eos_token_ids, vec![2]);
    assert!(!tk.add_bos);
    let case = fixture("smollm2_ids.json");
    for c in case["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        assert_eq!(tk.encode(text).unwrap(), ids(&c["ids"]), "{text:?}");
    }
}
