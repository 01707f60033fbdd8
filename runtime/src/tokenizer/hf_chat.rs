//! Where a Hugging Face directory keeps its chat template and the text of
//! its special tokens, read as transformers 5 reads them (the tokenizer
//! itself is `tokenizer.json`, read by the parent module).

use std::path::Path;

use crate::{Result, RuntimeError};

/// The largest `chat_template.jinja` kvpr reads (published templates are at
/// most tens of KB; this only stops a device or a huge file being read whole).
const MAX_CHAT_TEMPLATE_BYTES: u64 = 4 << 20;

/// A Hugging Face directory's chat template, as transformers 5 reads it: the
/// `chat_template.jinja` file when there is one (it wins over the JSON field),
/// else `tokenizer_config.json`'s `chat_template`, a string or a list of
/// `{"name", "template"}` of which the one named `default` is used (none
/// named so: `None`, as transformers needs a name then).
pub(super) fn chat_template(dir: &Path, tk_cfg: &serde_json::Value) -> Result<Option<String>> {
    let file = dir.join("chat_template.jinja");
    if file.exists() {
        return Ok(Some(plans::read_text_limited(
            &file,
            MAX_CHAT_TEMPLATE_BYTES,
        )?));
    }
    let bad = |reason: String| RuntimeError::Tokenizer {
        path: dir.join("tokenizer_config.json"),
        reason,
    };
    match tk_cfg.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(t)) => Ok(Some(t.clone())),
        Some(serde_json::Value::Array(list)) => {
            for (i, entry) in list.iter().enumerate() {
                let field = |k: &str| entry.get(k).and_then(|v| v.as_str());
                let (Some(name), Some(template)) = (field("name"), field("template")) else {
                    return Err(bad(format!(
                        "chat_template[{i}] is not an object with string \"name\" and \"template\""
                    )));
                };
                if name == "default" {
                    return Ok(Some(template.to_string()));
                }
            }
            Ok(None)
        }
        Some(_) => Err(bad(
            "chat_template is neither a string nor a list of {\"name\", \"template\"}".into(),
        )),
    }
}

/// The text of a special token (`bos_token`, `eos_token`) as transformers
/// reads it: from `tokenizer_config.json`, except that a legacy directory
/// (whose config has no `added_tokens_decoder`) takes the token from
/// `special_tokens_map.json` when that file names it. The value is a string
/// or an object with `content` (a serialized `AddedToken`); null is none.
pub(super) fn special_token(
    dir: &Path,
    tk_cfg: &serde_json::Value,
    key: &str,
) -> Result<Option<String>> {
    let mut path = dir.join("tokenizer_config.json");
    let mut value = tk_cfg.get(key).cloned();
    let legacy = dir.join("special_tokens_map.json");
    if tk_cfg.get("added_tokens_decoder").is_none() && legacy.exists() {
        if let Some(v) = super::optional_json(&legacy)?.get(key) {
            value = Some(v.clone());
            path = legacy;
        }
    }
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(t)) => Ok(Some(t)),
        Some(v) => match v.get("content").and_then(|c| c.as_str()) {
            Some(t) => Ok(Some(t.to_string())),
            None => Err(RuntimeError::Tokenizer {
                path,
                reason: format!(
                    "{key} is neither a string nor an object with a string \"content\""
                ),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::Tokenizer;

    fn fixture_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    /// A Hugging Face directory with the `qwen2` fixture's tokenizer.json and
    /// `files` (name, contents) beside it.
    fn hf_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let tk = fixture_dir("hf/qwen2/tokenizer.json");
        std::fs::copy(tk, dir.path().join("tokenizer.json")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn hf_chat_template_from_the_config_or_the_jinja_file() {
        let load = |files: &[(&str, &str)]| Tokenizer::from_hf_dir(hf_dir(files).path());
        // A string; bos as a string, eos as a serialized AddedToken.
        let t = load(&[(
            "tokenizer_config.json",
            r#"{"chat_template": "T", "bos_token": "<s>",
                "eos_token": {"__type": "AddedToken", "content": "</s>", "special": true}}"#,
        )])
        .unwrap();
        assert_eq!(t.chat_template.as_deref(), Some("T"));
        assert_eq!(t.bos_token.as_deref(), Some("<s>"));
        assert_eq!(t.eos_token.as_deref(), Some("</s>"));
        // A list: the one named "default"; none so named: no template.
        let list = r#"{"chat_template": [{"name": "tool_use", "template": "U"},
                                         {"name": "default", "template": "D"}]}"#;
        let t = load(&[("tokenizer_config.json", list)]).unwrap();
        assert_eq!(t.chat_template.as_deref(), Some("D"));
        let t = load(&[(
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "rag", "template": "R"}], "bos_token": null}"#,
        )])
        .unwrap();
        assert_eq!((t.chat_template, t.bos_token), (None, None));
        // chat_template.jinja wins over the JSON field (transformers 5).
        let t = load(&[
            ("tokenizer_config.json", list),
            (
                "chat_template.jinja",
                "J
",
            ),
        ])
        .unwrap();
        assert_eq!(
            t.chat_template.as_deref(),
            Some(
                "J
"
            )
        );
        // No tokenizer_config.json at all: nothing.
        let t = load(&[]).unwrap();
        assert_eq!(
            (t.chat_template, t.bos_token, t.eos_token),
            (None, None, None)
        );
        // Malformed values are named.
        for (cfg, key) in [
            (r#"{"chat_template": 3}"#, "chat_template"),
            (
                r#"{"chat_template": [{"name": "default"}]}"#,
                "chat_template[0]",
            ),
            (r#"{"eos_token": {"id": 2}}"#, "eos_token"),
            (r#"{"bos_token": 1}"#, "bos_token"),
        ] {
            let e = load(&[("tokenizer_config.json", cfg)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(key) && e.contains("tokenizer_config.json"),
                "{e}"
            );
        }
    }

    /// A legacy directory (no `added_tokens_decoder`) takes its special
    /// tokens from `special_tokens_map.json`, as transformers does.
    #[test]
    fn hf_legacy_special_tokens_map() {
        let map = (
            "special_tokens_map.json",
            r#"{"eos_token": {"content": "<|eot|>"}}"#,
        );
        let legacy = r#"{"bos_token": "<s>", "eos_token": "</s>"}"#;
        let t = Tokenizer::from_hf_dir(hf_dir(&[("tokenizer_config.json", legacy), map]).path())
            .unwrap();
        assert_eq!(t.bos_token.as_deref(), Some("<s>"));
        assert_eq!(t.eos_token.as_deref(), Some("<|eot|>"));
        let modern = r#"{"eos_token": "</s>", "added_tokens_decoder": {}}"#;
        let t = Tokenizer::from_hf_dir(hf_dir(&[("tokenizer_config.json", modern), map]).path())
            .unwrap();
        assert_eq!(t.eos_token.as_deref(), Some("</s>"));
    }

    #[test]
    fn hf_fixtures_have_special_texts_and_no_template() {
        let t = Tokenizer::from_hf_dir(&fixture_dir("hf/qwen2")).unwrap();
        assert_eq!(t.chat_template, None);
        assert_eq!(t.bos_token.as_deref(), Some("<s>"));
        assert_eq!(t.eos_token.as_deref(), Some("</s>"));
    }
}
