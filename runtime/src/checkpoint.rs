//! A Hugging Face checkpoint's safetensors, memory-mapped and read one
//! tensor at a time: the files a `model.safetensors.index.json` names (a
//! sharded checkpoint), else every `*.safetensors` file of the directory.
//!
//! Each tensor is handed over as its mapped bytes, for the backend to take
//! in one pass (`kernels::Backend::upload_stored`: converted to f32 on the
//! CPU, copied as they are to a device of the same dtype), and its pages are
//! then given back to the kernel, so the resident set while loading is the
//! model the backend holds plus one tensor, not the model plus the whole
//! mapped file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, SafeTensors};

use crate::{Result, RuntimeError};

/// One tensor's place: its file, dtype, shape and byte range in the map.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// The mapped files of a checkpoint and where each tensor lies.
pub(crate) struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

fn bad(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Safetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Checkpoint {
    /// Maps the directory's safetensors and reads their headers.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (i, path) in shard_files(dir)?.into_iter().enumerate() {
            let file = plans::open_input(&path).map_err(|source| RuntimeError::Io {
                path: path.clone(),
                source,
            })?;
            // A FIFO or a device would block or fail inside the mapping.
            let meta = file.metadata().map_err(|source| RuntimeError::Io {
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(bad(&path, "not a regular file"));
            }
            // SAFETY: the map is read-only and private; like every
            // memory-mapped reader (transformers, candle), kvpr assumes no
            // other process truncates or rewrites a checkpoint while it loads.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| RuntimeError::Io {
                path: path.clone(),
                source,
            })?;
            let (n, md) =
                SafeTensors::read_metadata(&map).map_err(|e| bad(&path, e.to_string()))?;
            let start = 8 + n;
            for (name, info) in md.tensors() {
                let (a, b) = info.data_offsets;
                let range = (start + a, start + b);
                if range.1 > map.len() || range.0 > range.1 {
                    return Err(bad(&path, format!("tensor {name}: data outside the file")));
                }
                let entry = Entry {
                    file: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(bad(&path, format!("tensor {name} is in two files")));
                }
            }
            files.push((path, map));
        }
        Ok(Checkpoint { files, entries })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Calls `f` with tensor `name`'s stored bytes (its pages faulted in
    /// with one call), their dtype and the tensor's shape, then hands the
    /// pages back to the kernel (they are read again from the file if
    /// anything touches them), so loading holds one tensor of the file at a
    /// time. `None` when the tensor is not there. F32, F16 and BF16 are
    /// read; other dtypes are an error naming them.
    pub fn with_tensor<R>(
        &self,
        name: &str,
        f: impl FnOnce(&[u8], kernels::Dtype, &[usize]) -> Result<R>,
    ) -> Result<Option<R>> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        let (path, map) = &self.files[e.file];
        let bytes = &map[e.range.0..e.range.1];
        let dtype = match e.dtype {
            Dtype::F32 => kernels::Dtype::F32,
            Dtype::F16 => kernels::Dtype::F16,
            Dtype::BF16 => kernels::Dtype::Bf16,
            other => {
                return Err(RuntimeError::Dtype {
                    path: path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    reason: "kvpr reads safetensors in F32, F16 and BF16".into(),
                })
            }
        };
        let n: usize = e.shape.iter().product();
        if n.checked_mul(dtype.bytes()) != Some(bytes.len()) {
            return Err(bad(
                path,
                format!(
                    "tensor {name}: {} bytes of {:?} for shape {:?}",
                    bytes.len(),
                    e.dtype,
                    e.shape
                ),
            ));
        }
        // Fault the range in with one call instead of a page fault per 4 KiB
        // (expensive in a VM); where the kernel lacks it, pages fault as usual.
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(Advice::PopulateRead, e.range.0, bytes.len());
        #[cfg(not(target_os = "linux"))]
        let _ = map.advise_range(Advice::WillNeed, e.range.0, bytes.len());
        let out = f(bytes, dtype, &e.shape);
        // SAFETY: a private read-only file map: dropping its pages loses
        // nothing, and `f`, which had the only reference into the range,
        // has returned.
        let _ = unsafe {
            map.unchecked_advise_range(UncheckedAdvice::DontNeed, e.range.0, bytes.len())
        };
        out.map(Some)
    }
}

/// The files of a checkpoint: those `model.safetensors.index.json` names, else
/// every `*.safetensors` in the directory, sorted.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.exists() {
        let text = plans::read_text_limited(&index, plans::MAX_JSON_BYTES)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(&index, e.to_string()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad(&index, "no weight_map object"))?;
        let mut names: Vec<&str> = Vec::with_capacity(map.len());
        for (tensor, file) in map {
            let file = file
                .as_str()
                .filter(|f| !f.contains('/') && !f.contains('\\') && f.ends_with(".safetensors"))
                .ok_or_else(|| {
                    bad(
                        &index,
                        format!(
                            "weight_map.{tensor}: not a .safetensors file name in this directory"
                        ),
                    )
                })?;
            names.push(file);
        }
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(|f| dir.join(f)).collect()
    } else {
        let entries = std::fs::read_dir(dir).map_err(|source| RuntimeError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect()
    };
    files.sort();
    if files.is_empty() {
        return Err(bad(dir, "no *.safetensors file in the directory"));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// Every stored dtype converts to the f32 candle gives, on one thread and
    /// on several (a tensor past 2^21 values is split across the cores).
    #[test]
    fn tensors_convert_as_candle_converts_them_on_any_number_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let n = (3 << 20) + 7;
        let data: Vec<f32> = (0..n)
            .map(|i| ((i % 1000) as f32 - 500.0) * 0.013)
            .collect();
        let t = Tensor::from_vec(data, n, &Device::Cpu).unwrap();
        let mut tensors = std::collections::HashMap::new();
        for (name, dt) in [
            ("a.f32", DType::F32),
            ("a.f16", DType::F16),
            ("a.bf16", DType::BF16),
        ] {
            tensors.insert(name.to_string(), t.to_dtype(dt).unwrap());
        }
        tensors.insert(
            "small".into(),
            Tensor::new(&[1.5f32, -2.0], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        );
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        let read = |name: &str| {
            ck.with_tensor(name, |bytes, dtype, shape| {
                Ok((kernels::stored::to_f32(bytes, dtype), shape.to_vec()))
            })
        };
        for (name, want) in &tensors {
            let (got, shape) = read(name).unwrap().unwrap();
            assert_eq!(shape, want.dims(), "{name}");
            let want: Vec<f32> = want.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "{name}");
        }
        assert!(read("missing").unwrap().is_none());
        assert_eq!(ck.names().count(), 4);
    }
}
