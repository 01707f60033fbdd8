//! Where a model comes from: the one rule that reads a model argument, for
//! every command that takes one.

use std::path::{Path, PathBuf};

use crate::{ModelSpec, PlansError, Result, PRESETS};

/// A model argument, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A named preset (see [`PRESETS`]) with seeded random weights.
    Preset { name: String, seed: u64 },
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face directory holding `config.json` (and, to run it,
    /// `*.safetensors` and `tokenizer.json`).
    HfDir(PathBuf),
}

impl ModelSource {
    /// The rule: `preset:NAME` is a preset; an existing directory is a Hugging
    /// Face model, and so is a file named `config.json` (its directory); any
    /// other existing file is GGUF; a path that does not exist may be a bare
    /// preset name. Presets get seed 0.
    pub fn parse(arg: &str) -> Result<Self> {
        let preset = |name: &str| -> Result<Self> {
            if PRESETS.iter().any(|r| r.0 == name) {
                Ok(ModelSource::Preset {
                    name: name.to_string(),
                    seed: 0,
                })
            } else {
                Err(PlansError::UnknownPreset {
                    name: name.to_string(),
                    known: known_presets(),
                })
            }
        };
        if let Some(name) = arg.strip_prefix("preset:") {
            return preset(name);
        }
        let path = Path::new(arg);
        if path.is_dir() {
            return Ok(ModelSource::HfDir(path.to_path_buf()));
        }
        if path.is_file() {
            if path.file_name().is_some_and(|n| n == "config.json") {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                return Ok(ModelSource::HfDir(dir));
            }
            return Ok(ModelSource::Gguf(path.to_path_buf()));
        }
        if path.exists() {
            return Err(PlansError::Model {
                path: path.to_path_buf(),
                reason: "neither a regular file nor a directory".into(),
            });
        }
        if PRESETS.iter().any(|r| r.0 == arg) {
            return preset(arg);
        }
        Err(PlansError::Model {
            path: path.to_path_buf(),
            reason: format!(
                "no such file or directory, and not a preset (known presets: {})",
                known_presets()
            ),
        })
    }

    /// A label for messages: the path, or `preset:NAME`.
    pub fn label(&self) -> PathBuf {
        match self {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p.clone(),
            ModelSource::Preset { name, .. } => PathBuf::from(format!("preset:{name}")),
        }
    }

    /// The model's shape, read from the source's metadata (a GGUF header is read,
    /// not its tensors).
    pub fn spec(&self) -> Result<ModelSpec> {
        match self {
            ModelSource::Preset { name, .. } => ModelSpec::preset(name),
            ModelSource::HfDir(dir) => ModelSpec::from_hf_config(&dir.join("config.json")),
            #[cfg(feature = "gguf")]
            ModelSource::Gguf(path) => ModelSpec::from_gguf(path),
            #[cfg(not(feature = "gguf"))]
            ModelSource::Gguf(path) => Err(PlansError::Model {
                path: path.clone(),
                reason: "this build of the plans crate reads no GGUF (its `gguf` feature is off)"
                    .into(),
            }),
        }
    }
}

fn known_presets() -> String {
    PRESETS.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_with_and_without_prefix_are_one_rule() {
        let want = ModelSource::Preset {
            name: "tiny-mha".into(),
            seed: 0,
        };
        assert_eq!(ModelSource::parse("preset:tiny-mha").unwrap(), want);
        assert_eq!(ModelSource::parse("tiny-mha").unwrap(), want);
        let e = ModelSource::parse("preset:gpt-5").unwrap_err().to_string();
        assert!(e.contains("gpt-5") && e.contains("llama-2-7b"), "{e}");
    }

    #[test]
    fn a_file_named_like_a_preset_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny-mha");
        std::fs::write(&p, b"x").unwrap();
        let arg = p.to_str().unwrap();
        assert_eq!(
            ModelSource::parse(arg).unwrap(),
            ModelSource::Gguf(p.clone())
        );
    }

    #[test]
    fn directories_and_config_json_are_hf() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        assert_eq!(
            ModelSource::parse(d.to_str().unwrap()).unwrap(),
            ModelSource::HfDir(d.clone())
        );
        let cfg = d.join("config.json");
        std::fs::write(&cfg, b"{}").unwrap();
        assert_eq!(
            ModelSource::parse(cfg.to_str().unwrap()).unwrap(),
            ModelSource::HfDir(d)
        );
    }

    #[test]
    fn unknown_path_is_named_with_the_presets() {
        let e = ModelSource::parse("/no/such/model.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/no/such/model.gguf") && e.contains("tiny-mha"),
            "{e}"
        );
    }
}
