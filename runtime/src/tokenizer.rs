//! Tokenizers: GPT-2-style byte-level BPE built from GGUF metadata, a Hugging
//! Face `tokenizer.json`, or (for synthetic presets) bytes modulo the vocabulary,
//! with the model's chat template and the text of its BOS/EOS tokens (what a
//! chat template renders; rendering it is `serving`'s, not this module's).

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::{Result, RuntimeError};
use plans::{GgufHeader, ModelSource};

mod hf_chat;

/// The largest `tokenizer.json` kvpr reads (the largest published ones are ~35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    /// ids are bytes modulo the vocabulary size.
    Bytes {
        vocab: usize,
    },
}

/// Text to token ids and back.
pub struct Tokenizer {
    inner: Inner,
    path: PathBuf,
    /// Beginning-of-sequence id, if the model has one.
    pub bos_token_id: Option<u32>,
    /// Whether [`Tokenizer::encode`] starts a prompt with the BOS id
    /// (`tokenizer_config.json`'s `add_bos_token`, GGUF's
    /// `tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// End-of-sequence ids: generation of a sequence stops at any of them
    /// (`config.json` and `generation_config.json`'s `eos_token_id`, one or a
    /// list; GGUF's `tokenizer.ggml.eos_token_id`, then its `eot_token_id` and
    /// `eom_token_id`, e.g. Llama-3's `<|eot_id|>` and `<|eom_id|>`).
    pub eos_token_ids: Vec<u32>,
    /// The Jinja chat template, as the model ships it: GGUF's
    /// `tokenizer.chat_template`; a Hugging Face directory's
    /// `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`
    /// (the one named `default` when it is a list). `None`: the model has none.
    pub chat_template: Option<String>,
    /// The BOS token's text, which chat templates print as `bos_token`
    /// (GGUF: the token of `tokenizer.ggml.bos_token_id`; Hugging Face:
    /// `tokenizer_config.json`'s `bos_token`).
    pub bos_token: Option<String>,
    /// The EOS token's text, `eos_token` in chat templates (GGUF: the token
    /// of `tokenizer.ggml.eos_token_id`; Hugging Face: `eos_token`).
    pub eos_token: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("bos_token_id", &self.bos_token_id)
            .field("add_bos", &self.add_bos)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// The `tokenizer.ggml.pre` values a GGUF tokenizer may have (or none):
    /// those whose split llama.cpp's `llama-vocab.cpp` maps to one kvpr
    /// implements. Any other value is refused by name.
    pub const GGUF_PRE_TOKENIZERS: &'static [&'static str] = GGUF_PRE_TOKENIZERS;

    /// The tokenizer that goes with a model source.
    pub fn load(source: &ModelSource) -> Result<Self> {
        match source {
            ModelSource::Gguf(p) => Self::from_gguf(p),
            ModelSource::HfDir(d) => Self::from_hf_dir(d),
            ModelSource::Preset { name, .. } => {
                let spec = plans::ModelSpec::preset(name)?;
                Ok(Self::bytes(spec.vocab_size, source.label()))
            }
        }
    }

    /// A byte-level tokenizer for synthetic models: id = byte mod `vocab`.
    pub fn bytes(vocab: usize, path: PathBuf) -> Self {
        Tokenizer {
            inner: Inner::Bytes {
                vocab: vocab.max(1),
            },
            path,
            bos_token_id: None,
            add_bos: false,
            eos_token_ids: Vec::new(),
            chat_template: None,
            bos_token: None,
            eos_token: None,
        }
    }

    /// Whether `id` ends a sequence.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// From a GGUF file's metadata (`tokenizer.ggml.*`, model `gpt2`, split
    /// as `tokenizer.ggml.pre` says: see [`Tokenizer::GGUF_PRE_TOKENIZERS`]).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let (header, _) = GgufHeader::open(path)?;
        Self::from_gguf_header(&header, path)
    }

    /// From GGUF metadata already read; `path` names the file in messages.
    pub fn from_gguf_header(header: &GgufHeader, path: &Path) -> Result<Self> {
        let bad = |reason: String| RuntimeError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let md = &header.metadata;
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no tokenizer.ggml.model in the GGUF metadata".into()))?;
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model is {model:?}; kvpr reads GPT-2-style byte-level BPE (\"gpt2\")"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let values = md
                .get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad(format!("{key} missing or not an array")))?;
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("{key}[{i}] is not a string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(format!("tokenizer.ggml.merges[{i}] {m:?} has no space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i64> = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .map(|v| v.iter().map(|t| t.as_i64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let id = |key: &str| {
            md.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
        };
        let pre = match md.get("tokenizer.ggml.pre") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| bad("tokenizer.ggml.pre is not a string".into()))?,
            ),
        };
        let split = GgufPre::of(pre).ok_or_else(|| {
            bad(format!(
                "tokenizer.ggml.pre is {:?}: kvpr does not implement that pre-tokenizer \
                 (llama.cpp's split of the text before the merges); it reads {}",
                pre.unwrap_or_default(),
                GgufPre::supported()
            ))
        })?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(split.ignore_merges)
            .build()
            .map_err(|e| bad(format!("cannot build BPE: {e}")))?;
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(
            split
                .family
                .pre_tokenizer()
                .map_err(|e| bad(format!("cannot build the pre-tokenizer: {e}")))?,
        ));
        tk.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
        // Control tokens (type 3, e.g. <|im_start|>) are matched whole and
        // skipped when decoding. User-defined ones (type 4: llama.cpp's
        // converter writes a tokenizer.json's non-special added tokens so,
        // e.g. Qwen2.5's <tool_call>) are matched whole too, as the Hugging
        // Face tokenizer matches every added token, and kept when decoding.
        let added = |ty: i64| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(types.iter())
                .filter(|(_, t)| **t == ty)
                .map(|(tok, _)| AddedToken::from(tok.clone(), ty == 3))
                .collect()
        };
        tk.add_special_tokens(&added(3));
        tk.add_tokens(&added(4));
        // llama.cpp's default for the pre-tokenizer (true for Llama-3's, whose
        // converted files usually have no add_bos_token), unless the file says.
        let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
            None => split.add_bos,
            Some(plans::GgufValue::Bool(b)) => *b,
            Some(_) => return Err(bad("tokenizer.ggml.add_bos_token is not a bool".into())),
        };
        let bos_token_id = id("tokenizer.ggml.bos_token_id");
        if add_bos && bos_token_id.is_none() {
            return Err(bad(
                "the prompt starts with BOS (tokenizer.ggml.add_bos_token, or the default of \
                 its pre-tokenizer) but there is no tokenizer.ggml.bos_token_id"
                    .into(),
            ));
        }
        // Generation ends at EOS and, as in llama.cpp, at end-of-turn and
        // end-of-message (EOS first, each once).
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(i) = id(key) {
                if !eos_token_ids.contains(&i) {
                    eos_token_ids.push(i);
                }
            }
        }
        let chat_template = match md.get("tokenizer.chat_template") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| bad("tokenizer.chat_template is not a string".into()))?
                    .to_string(),
            ),
        };
        // An id past the vocabulary has no text: llama.cpp ignores such a
        // special id with a warning, so it is no error here either.
        let text_of = |key: &str| id(key).and_then(|i| tokens.get(i as usize)).cloned();
        let bos_token = text_of("tokenizer.ggml.bos_token_id");
        let eos_token = text_of("tokenizer.ggml.eos_token_id");
        Ok(Tokenizer {
            inner: Inner::Hf(Box::new(tk)),
            path: path.to_path_buf(),
            bos_token_id,
            add_bos,
            eos_token_ids,
            chat_template,
            bos_token,
            eos_token,
        })
    }

    /// From a Hugging Face directory's `tokenizer.json`, with BOS/EOS ids
    /// from `config.json` and `generation_config.json`, whether to add BOS
    /// from `tokenizer_config.json`, and the chat template and BOS/EOS text
    /// as transformers reads them (see [`Tokenizer::chat_template`]).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bytes = plans::read_limited(&path, MAX_TOKENIZER_BYTES)?;
        let bad = |reason: String| RuntimeError::Tokenizer {
            path: path.clone(),
            reason,
        };
        // The tokenizers crate panics on some malformed files (e.g. an invalid
        // code point in a decoder's settings): that is an error in the file.
        let tk = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| {
                bad("malformed tokenizer.json: the tokenizers crate could not read it".into())
            })?
            .map_err(|e| bad(e.to_string()))?;
        let cfg = optional_json(&dir.join("config.json"))?;
        let gen = optional_json(&dir.join("generation_config.json"))?;
        let tk_cfg = optional_json(&dir.join("tokenizer_config.json"))?;
        // One id or a list of them.
        let ids = |v: &serde_json::Value, key: &str| -> Vec<u32> {
            let one = |x: &serde_json::Value| x.as_u64().and_then(|x| u32::try_from(x).ok());
            match v.get(key) {
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(one).collect(),
                Some(x) => one(x).into_iter().collect(),
                None => Vec::new(),
            }
        };
        let mut eos = ids(&gen, "eos_token_id");
        eos.extend(ids(&cfg, "eos_token_id"));
        let mut seen = std::collections::HashSet::new();
        eos.retain(|e| seen.insert(*e));
        let bos = ids(&gen, "bos_token_id")
            .first()
            .or(ids(&cfg, "bos_token_id").first())
            .copied();
        let add_bos = tk_cfg.get("add_bos_token").and_then(|v| v.as_bool()) == Some(true);
        if add_bos && bos.is_none() {
            return Err(RuntimeError::Tokenizer {
                path: dir.join("tokenizer_config.json"),
                reason: "add_bos_token is true but neither config.json nor generation_config.json names a bos_token_id".into(),
            });
        }
        let chat_template = hf_chat::chat_template(dir, &tk_cfg)?;
        let bos_token = hf_chat::special_token(dir, &tk_cfg, "bos_token")?;
        let eos_token = hf_chat::special_token(dir, &tk_cfg, "eos_token")?;
        Ok(Tokenizer {
            bos_token_id: bos,
            add_bos,
            eos_token_ids: eos,
            inner: Inner::Hf(Box::new(tk)),
            path,
            chat_template,
            bos_token,
            eos_token,
        })
    }

    /// Token ids of a prompt: what `tokenizer.json`'s post-processor adds,
    /// and BOS first when the model asks for it ([`Tokenizer::add_bos`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text`; with `special` false, nothing is added (no BOS,
    /// no post-processor): how transformers tokenizes a rendered chat
    /// template, which writes its own special tokens.
    pub fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(tk) => {
                let mut ids = tk
                    .encode(text, special)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| RuntimeError::Tokenizer {
                        path: self.path.clone(),
                        reason: format!("cannot encode {text:?}: {e}"),
                    })?;
                if let (true, true, Some(bos)) = (special, self.add_bos, self.bos_token_id) {
                    if ids.first() != Some(&bos) {
                        ids.insert(0, bos);
                    }
                }
                Ok(ids)
            }
            Inner::Bytes { vocab } => Ok(text
                .bytes()
                .map(|b| (usize::from(b) % vocab) as u32)
                .collect()),
        }
    }

    /// Text of `ids` (special tokens skipped; invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Hf(tk) => tk.decode(ids, true).map_err(|e| RuntimeError::Tokenizer {
                path: self.path.clone(),
                reason: format!("cannot decode {ids:?}: {e}"),
            }),
            Inner::Bytes { .. } => {
                let bytes: Vec<u8> = ids.iter().map(|&i| (i % 256) as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }
}

/// GPT-2's split (the Hugging Face `ByteLevel` pre-tokenizer's regex).
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama-3's split, as Meta-Llama-3's `tokenizer.json` writes it (llama.cpp
/// spells the case-insensitive contractions `'[sS]|'[tT]|...`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama-3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp splits text before the BPE merges (its `regex_exprs`, each
/// applied in turn to every piece the previous one left, matches and the text
/// between them both kept), then maps bytes to GPT-2's characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SplitFamily {
    /// `LLAMA_VOCAB_PRE_TYPE_DEFAULT` (no `tokenizer.ggml.pre`, or `default`):
    /// punctuation runs, GPT-2's regex, digit runs, then three digits.
    Default,
    /// GPT-2's regex.
    Gpt2,
    /// Llama-3's regex (digits in runs of up to 3).
    Llama3,
    /// Qwen2's regex (single digits).
    Qwen2,
    /// Single digits, then GPT-2's regex (StarCoder, SmolLM).
    Digits,
}

impl SplitFamily {
    fn pre_tokenizer(self) -> tokenizers::Result<PreTokenizerWrapper> {
        let isolated = |re: &str| -> tokenizers::Result<PreTokenizerWrapper> {
            Ok(Split::new(
                SplitPattern::Regex(re.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )?
            .into())
        };
        // Bytes to GPT-2's characters, without a split of its own.
        let bytes = || PreTokenizerWrapper::from(ByteLevel::new(false, true, false));
        let seq = |v: Vec<PreTokenizerWrapper>| PreTokenizerWrapper::from(Sequence::new(v));
        Ok(match self {
            SplitFamily::Gpt2 => ByteLevel::new(false, true, true).into(),
            SplitFamily::Llama3 => seq(vec![isolated(LLAMA3_SPLIT)?, bytes()]),
            SplitFamily::Qwen2 => seq(vec![isolated(QWEN2_SPLIT)?, bytes()]),
            SplitFamily::Digits => seq(vec![
                isolated(r"\p{N}")?,
                ByteLevel::new(false, true, true).into(),
            ]),
            SplitFamily::Default => seq(vec![
                isolated(r"[\p{P}\$\+<=>\^~\|]+")?,
                isolated(GPT2_SPLIT)?,
                isolated(r"\p{N}+")?,
                isolated(r"[0-9][0-9][0-9]")?,
                bytes(),
            ]),
        })
    }
}

/// What a `tokenizer.ggml.pre` value sets in llama.cpp's `llama-vocab.cpp`
/// besides the split: `ignore_merges` (a piece that is itself a token is that
/// token) and the default of `add_bos` (when the file has no
/// `tokenizer.ggml.add_bos_token`).
#[derive(Clone, Copy, Debug)]
struct GgufPre {
    family: SplitFamily,
    ignore_merges: bool,
    add_bos: bool,
}

/// Every `tokenizer.ggml.pre` value kvpr reads, as llama.cpp's
/// `llama-vocab.cpp` maps it; any other value is refused by name. Absent,
/// the key means `default`. Left out although llama.cpp maps them to one of
/// these splits: values that also set `add_sep` or per-token attributes
/// (`jina-v1-en`, `jina-v2-code`, `roberta-bpe`, `jina-v2-de`, `jina-v2-es`,
/// `modern-bert`) or clear the BOS id (`glm4`, `chatglm-bpe`).
const GGUF_PRE_TOKENIZERS: &[&str] = &[
    "default",
    // GPT-2's regex
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "a.x-4.0",
    "mellum",
    "exaone4",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    // Llama-3's regex, ignore_merges, BOS by default
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    // Llama-3's regex
    "dbrx",
    "smaug-bpe",
    // Qwen2's regex
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "stablelm2",
    "hunyuan",
    "solar-open",
    // single digits, then GPT-2's regex
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
];

impl GgufPre {
    /// The pre-tokenizer of a `tokenizer.ggml.pre` value (`None`: absent).
    fn of(value: Option<&str>) -> Option<GgufPre> {
        use SplitFamily::*;
        let (family, ignore_merges, add_bos) = match value.unwrap_or("default") {
            "default" => (Default, false, false),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "a.x-4.0" | "mellum"
            | "exaone4" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => {
                (Gpt2, false, false)
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => (Llama3, true, true),
            "dbrx" | "smaug-bpe" => (Llama3, false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" | "solar-open" => (Qwen2, false, false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => (Digits, false, false),
            _ => return None,
        };
        Some(GgufPre {
            family,
            ignore_merges,
            add_bos,
        })
    }

    /// The values kvpr reads, for messages.
    fn supported() -> String {
        format!("{} (or no key)", GGUF_PRE_TOKENIZERS.join(", "))
    }
}

/// A JSON file beside a checkpoint that may be absent (null then), read
/// with the size limit; present but malformed is an error naming it.
fn optional_json(path: &Path) -> Result<serde_json::Value> {
    if !path.exists() {
        return Ok(serde_json::Value::Null);
    }
    let text = plans::read_text_limited(path, plans::MAX_JSON_BYTES)?;
    serde_json::from_str(&text).map_err(|e| RuntimeError::Tokenizer {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let t = Tokenizer::bytes(256, "preset:x".into());
        let ids = t.encode("The capital of France is").unwrap();
        assert_eq!(ids.len(), 24);
        assert_eq!(t.decode(&ids).unwrap(), "The capital of France is");
    }

    #[test]
    fn every_listed_pre_value_is_read_and_no_other() {
        for v in GGUF_PRE_TOKENIZERS {
            let pre = GgufPre::of(Some(v)).unwrap_or_else(|| panic!("{v}"));
            pre.family.pre_tokenizer().unwrap();
        }
        assert_eq!(GgufPre::of(None).unwrap().family, SplitFamily::Default);
        for v in [
            "gpt2",
            "tekken",
            "gpt-4o",
            "glm4",
            "roberta-bpe",
            "",
            "Qwen2",
        ] {
            assert!(GgufPre::of(Some(v)).is_none(), "{v}");
        }
        let llama3 = GgufPre::of(Some("llama-bpe")).unwrap();
        assert!(llama3.ignore_merges && llama3.add_bos);
    }

    /// GGUF tokenizer metadata (no tensors): four tokens, BOS 0, EOS 1,
    /// and `extra` on top.
    fn gguf_header(extra: &[(&str, plans::GgufValue)]) -> GgufHeader {
        use plans::GgufValue as V;
        let strs = |v: &[&str]| V::Array(v.iter().map(|s| V::String(s.to_string())).collect());
        let mut metadata: std::collections::BTreeMap<String, V> = [
            ("tokenizer.ggml.model", V::String("gpt2".into())),
            (
                "tokenizer.ggml.tokens",
                strs(&["<|im_start|>", "<|im_end|>", "a", "b"]),
            ),
            ("tokenizer.ggml.merges", strs(&[])),
            ("tokenizer.ggml.bos_token_id", V::U32(0)),
            ("tokenizer.ggml.eos_token_id", V::U32(1)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            metadata.insert(k.to_string(), v.clone());
        }
        GgufHeader {
            version: 3,
            metadata,
            tensors: Default::default(),
            data_offset: 0,
            file_len: 0,
        }
    }

    #[test]
    fn gguf_chat_template_and_special_texts() {
        use plans::GgufValue as V;
        let p = Path::new("m.gguf");
        let t = "{% for m in messages %}{{ m.content }}{% endfor %}";
        let tk = Tokenizer::from_gguf_header(
            &gguf_header(&[("tokenizer.chat_template", V::String(t.into()))]),
            p,
        )
        .unwrap();
        assert_eq!(tk.chat_template.as_deref(), Some(t));
        assert_eq!(tk.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(tk.eos_token.as_deref(), Some("<|im_end|>"));

        // Absent: none; an id past the vocabulary has no text (as llama.cpp).
        let tk = Tokenizer::from_gguf_header(
            &gguf_header(&[("tokenizer.ggml.eos_token_id", V::U32(9))]),
            p,
        )
        .unwrap();
        assert_eq!((tk.chat_template, tk.eos_token), (None, None));

        let e =
            Tokenizer::from_gguf_header(&gguf_header(&[("tokenizer.chat_template", V::U32(3))]), p)
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("tokenizer.chat_template") && e.contains("m.gguf"),
            "{e}"
        );
    }

    #[test]
    fn presets_have_no_chat_template() {
        let t = Tokenizer::bytes(256, "preset:x".into());
        assert_eq!(
            (t.chat_template, t.bos_token, t.eos_token),
            (None, None, None)
        );
    }

    fn fixture_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    /// The real SmolLM2 file carries its template, which is the one the
    /// chat fixtures (tests/fixtures/chat/cases.json) were rendered with.
    #[test]
    fn smollm2_gguf_chat_template() {
        let path = match std::env::var_os("KVPR_MODEL") {
            Some(p) => PathBuf::from(p),
            None => match std::env::var_os("HOME") {
                Some(h) => PathBuf::from(h).join(".cache/kvpr/SmolLM2-135M-Instruct.Q4_1.gguf"),
                None => PathBuf::new(),
            },
        };
        if !path.is_file() {
            assert!(
                std::env::var_os("KVPR_REQUIRE_MODEL").is_none(),
                "KVPR_REQUIRE_MODEL is set and {} is missing",
                path.display()
            );
            eprintln!("skipping: {} not found", path.display());
            return;
        }
        let t = Tokenizer::from_gguf(&path).unwrap();
        assert_eq!(t.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(t.eos_token.as_deref(), Some("<|im_end|>"));
        let cases = std::fs::read_to_string(fixture_dir("chat/cases.json")).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&cases).unwrap();
        let want = &cases["templates"]["smollm2"];
        assert_eq!(t.chat_template.as_deref(), want["source"].as_str());
        assert_eq!(t.bos_token.as_deref(), want["bos_token"].as_str());
        assert_eq!(t.eos_token.as_deref(), want["eos_token"].as_str());
    }

    #[test]
    fn gguf_without_tokenizer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00").unwrap();
        let e = Tokenizer::from_gguf(&p).unwrap_err().to_string();
        assert!(e.contains("t.gguf"), "{e}");
    }
}
