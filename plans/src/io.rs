//! Reading and writing the JSON formats: schema check first, then a typed parse
//! whose errors carry file, line, column and field; writes are atomic.

use std::io::{Read, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{PlansError, Result};

/// The largest JSON file kvpr reads (profiles, plans, model configs).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads a whole regular file of at most `limit` bytes. Anything else (a
/// directory, a device such as `/dev/zero`, a FIFO, a larger file) is refused
/// before it is read, and the read stops at the limit even if the file grows.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let io = |source| PlansError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(PlansError::invalid(
            path,
            ".",
            "is not a regular file; give the path of a file",
        ));
    }
    let too_big = || {
        PlansError::invalid(
            path,
            ".",
            format!(
                "is larger than {}, more than any file kvpr reads here",
                crate::human_bytes(limit)
            ),
        )
    };
    if meta.len() > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// [`read_limited`], as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_limited(path, limit)?)
        .map_err(|_| PlansError::invalid(path, ".", "is not UTF-8 text"))
}

/// Reads `path` (at most [`MAX_JSON_BYTES`]), checks its `schema` field equals
/// `schema`, and parses it as `T`.
pub fn load_json<T: DeserializeOwned>(path: &Path, schema: &'static str) -> Result<T> {
    let text = read_text_limited(path, MAX_JSON_BYTES)?;
    parse_json(path, &text, schema)
}

/// Parses `text` (read from `path`, used only in messages) as a `T` of `schema`.
pub(crate) fn parse_json<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    schema: &'static str,
) -> Result<T> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| PlansError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        field: ".".into(),
        message: e.to_string(),
    })?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(s) if s == schema => {}
        Some(s) => {
            return Err(PlansError::Schema {
                path: path.to_path_buf(),
                found: s.to_string(),
                expected: schema,
            })
        }
        None => {
            return Err(PlansError::Schema {
                path: path.to_path_buf(),
                found: "(missing)".into(),
                expected: schema,
            })
        }
    }
    // Parse again from text (not the Value) so errors carry line and column.
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        PlansError::Json {
            path: path.to_path_buf(),
            line: inner.line(),
            column: inner.column(),
            field,
            message: strip_position(&inner.to_string()),
        }
    })
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename, so a reader sees the old file or the whole new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| PlansError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A short, stable fingerprint (16 hex digits of SHA-256) of some bytes.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        schema: String,
        inner: Inner,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: u32,
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let err = parse_json::<Doc>(Path::new("f.json"), "{\n  \"schema\": ,\n}", "s/v1")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.json:2:"), "{err}");
    }

    #[test]
    fn wrong_schema_is_refused_by_name() {
        let err = parse_json::<Doc>(Path::new("f.json"), r#"{"schema": "s/v9"}"#, "s/v1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"s/v9\"") && err.contains("\"s/v1\""),
            "{err}"
        );
    }

    #[test]
    fn bad_field_is_named_with_its_path() {
        let text = "{\"schema\": \"s/v1\",\n \"inner\": {\"x\": \"seven\"}}";
        let err = parse_json::<Doc>(Path::new("f.json"), text, "s/v1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.json:2:") && err.contains("inner.x"),
            "{err}"
        );
    }

    #[test]
    fn devices_directories_and_large_files_are_refused_before_reading() {
        let e = load_json::<Doc>(Path::new("/dev/zero"), "s/v1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("not a regular file"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = load_json::<Doc>(dir.path(), "s/v1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let p = dir.path().join("big.json");
        std::fs::write(&p, vec![b' '; 2048]).unwrap();
        let e = read_limited(&p, 1024).unwrap_err().to_string();
        assert!(
            e.contains("big.json") && e.contains("larger than 1.00 KiB"),
            "{e}"
        );
        assert_eq!(read_limited(&p, 2048).unwrap().len(), 2048);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
