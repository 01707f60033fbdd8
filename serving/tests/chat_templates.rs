//! Chat templates render exactly as Hugging Face transformers renders them:
//! every case of `tests/fixtures/chat/cases.json` (SmolLM2's own template
//! and Llama-3, Mistral, Qwen2.5 and Python-compatibility templates, each
//! over several message lists, rendered by transformers'
//! `apply_chat_template`; see `scripts/hf-fixtures/make_chat_cases.py`)
//! gives the same string, byte for byte, or fails with the message the
//! template's `raise_exception` gave transformers.

use std::path::Path;

use serde_json::Value as Json;
use serving::{ChatError, ChatMessage, ChatTemplate};

fn cases() -> Json {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat/cases.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_case_renders_as_transformers() {
    let all = cases();
    let cases = all["cases"].as_array().unwrap();
    let mut errors = 0;
    let mut failures = Vec::new();
    for case in cases {
        let (tname, mname) = (
            case["template"].as_str().unwrap(),
            case["messages"].as_str().unwrap(),
        );
        let t = &all["templates"][tname];
        let template = ChatTemplate::new(
            t["source"].as_str().unwrap(),
            t["bos_token"].as_str(),
            t["eos_token"].as_str(),
        )
        .unwrap_or_else(|e| panic!("{tname}: {e}"));
        let messages: Vec<ChatMessage> =
            serde_json::from_value(all["messages"][mname].clone()).unwrap();
        let got = template.render(&messages);
        match (&got, case.get("expected"), case.get("error")) {
            (Ok(text), Some(want), None) if text == want.as_str().unwrap() => {}
            (Err(ChatError::Render { reason }), None, Some(want))
                if reason == want.as_str().unwrap() =>
            {
                errors += 1
            }
            _ => failures.push(format!(
                "{tname} x {mname}:\n  got  {got:?}\n  want {:?}",
                case.get("expected").or(case.get("error")).unwrap()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The fixture covers every template with every message list, and the
    // raised errors are there.
    let templates = all["templates"].as_object().unwrap().len();
    let lists = all["messages"].as_object().unwrap().len();
    assert_eq!(cases.len(), templates * lists);
    assert!(
        templates >= 5 && errors >= 2,
        "{templates} templates, {errors} errors"
    );
}
