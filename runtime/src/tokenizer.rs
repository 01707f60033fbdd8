//! Tokenizers: GPT-2-style byte-level BPE built from GGUF metadata, a Hugging
//! Face `tokenizer.json`, or (for synthetic presets) bytes modulo the vocabulary.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::{Result, RuntimeError};
use plans::{GgufHeader, ModelSource};

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
    /// End-of-sequence id: generation of a sequence stops there.
    pub eos_token_id: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
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
            eos_token_id: None,
        }
    }

    /// From a GGUF file's metadata (`tokenizer.ggml.*`, model `gpt2`).
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
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| bad(format!("cannot build BPE: {e}")))?;
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tk.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
        // Control tokens (type 3, e.g. <|im_start|>) are matched whole and
        // skipped when decoding.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, t)| **t == 3)
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        tk.add_special_tokens(&special);
        Ok(Tokenizer {
            inner: Inner::Hf(Box::new(tk)),
            path: path.to_path_buf(),
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_id: id("tokenizer.ggml.eos_token_id"),
        })
    }

    /// From a Hugging Face directory's `tokenizer.json` (ids of BOS/EOS from `config.json`).
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
        let cfg: serde_json::Value =
            plans::read_text_limited(&dir.join("config.json"), plans::MAX_JSON_BYTES)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(serde_json::Value::Null);
        let id = |key: &str| {
            let v = cfg.get(key)?;
            v.as_u64()
                .or_else(|| {
                    v.as_array()
                        .and_then(|a| a.first())
                        .and_then(|x| x.as_u64())
                })
                .and_then(|x| u32::try_from(x).ok())
        };
        Ok(Tokenizer {
            bos_token_id: id("bos_token_id"),
            eos_token_id: id("eos_token_id"),
            inner: Inner::Hf(Box::new(tk)),
            path,
        })
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(tk) => tk
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| RuntimeError::Tokenizer {
                    path: self.path.clone(),
                    reason: format!("cannot encode {text:?}: {e}"),
                }),
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
    fn gguf_without_tokenizer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00").unwrap();
        let e = Tokenizer::from_gguf(&p).unwrap_err().to_string();
        assert!(e.contains("t.gguf"), "{e}");
    }
}
