//! A bounded reader of a GGUF file's header: magic, version, counts, typed
//! metadata and tensor infos. It reads no tensor data; `runtime` reads that at
//! the offsets checked here.
//!
//! Nothing in the file is trusted before it is checked against the bytes that
//! are left: every count and string length is bounded by the rest of the file
//! before anything is allocated, arrays nest at most [`MAX_DEPTH`] deep, every
//! size is added with checked arithmetic, and every tensor must lie inside the
//! file. A corrupt header is an error, never a panic or a large allocation.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// `"GGUF"` read as a little-endian `u32`.
const MAGIC: [u8; 4] = *b"GGUF";
/// Arrays of arrays deeper than this are refused (no real file nests at all).
pub const MAX_DEPTH: usize = 4;
/// The most memory a header's metadata may take once read (values and the
/// text of strings): a real file's tokenizer arrays take tens of MB, and
/// one value in memory is larger than in the file (a u8 element becomes a
/// 32-byte value), so a bound by the file's size alone is not enough.
pub const MAX_METADATA_MEMORY: u64 = 1 << 30;
/// GGUF's own limit on tensor dimensions.
pub const MAX_DIMS: u32 = 4;
/// The alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// What is wrong with a GGUF header, and where.
#[derive(Debug, thiserror::Error)]
#[error("{path}: corrupt or unsupported GGUF file: {reason}")]
pub struct GgufError {
    pub path: PathBuf,
    pub reason: String,
}

/// A metadata value, as typed in the file.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// A non-negative integer (unsigned, or signed and `>= 0`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer, signed.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A floating-point number (not checked for finiteness).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the header: its data lies at
/// `data_offset + offset .. + n_bytes` of the file (checked on read).
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// Row-major dimensions (GGUF stores them innermost first; reversed here).
    pub dims: Vec<usize>,
    /// The GGML type id (0 = F32, 1 = F16, 3 = Q4_1, ...).
    pub ggml_type: u32,
    /// Offset from the start of the tensor data, bytes.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// The name of the GGML type (candle's spelling: `Q4_1`, `Q6K`, ...).
    pub fn type_name(&self) -> &'static str {
        ggml_type(self.ggml_type).map_or("?", |t| t.0)
    }
}

/// The header of a GGUF file, checked: everything but the tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: BTreeMap<String, GgufTensorInfo>,
    /// Where the tensor data starts, bytes from the start of the file.
    pub data_offset: u64,
    /// The file's length, bytes.
    pub file_len: u64,
}

/// GGML types kvpr can read: id, name, elements per block, bytes per block.
#[rustfmt::skip]
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4), (1, "F16", 1, 2), (30, "BF16", 1, 2),
    (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20), (6, "Q5_0", 32, 22), (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34), (9, "Q8_1", 32, 36),
    (10, "Q2K", 256, 84), (11, "Q3K", 256, 110), (12, "Q4K", 256, 144),
    (13, "Q5K", 256, 176), (14, "Q6K", 256, 210), (15, "Q8K", 256, 292),
];

/// `(name, block elements, block bytes)` of a GGML type id kvpr reads.
fn ggml_type(id: u32) -> Option<(&'static str, u64, u64)> {
    GGML_TYPES
        .iter()
        .find(|t| t.0 == id)
        .map(|t| (t.1, t.2, t.3))
}

impl GgufHeader {
    /// Opens `path` (a regular file) and reads its header; the open file is
    /// returned for reading tensor data at the checked offsets.
    pub fn open(path: &Path) -> Result<(Self, std::fs::File), GgufError> {
        let bad = |reason: String| GgufError {
            path: path.to_path_buf(),
            reason,
        };
        // Non-blocking: a FIFO is refused below instead of waited on.
        let file = crate::io::open_input(path).map_err(|e| bad(e.to_string()))?;
        let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let header = Self::read(BufReader::new(&file), meta.len(), path)?;
        Ok((header, file))
    }

    /// Reads a header from `reader`, the start of a file of `file_len` bytes;
    /// `path` is used in messages only.
    pub fn read(reader: impl Read, file_len: u64, path: &Path) -> Result<Self, GgufError> {
        let mut r = Reader {
            inner: reader,
            pos: 0,
            len: file_len,
            wide: true,
            memory: MAX_METADATA_MEMORY,
        };
        Self::read_from(&mut r, file_len).map_err(|reason| GgufError {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn read_from<R: Read>(r: &mut Reader<R>, file_len: u64) -> Result<Self, String> {
        let magic = r.bytes_array::<4>("magic")?;
        if magic != MAGIC {
            return Err(format!("starts with {magic:02x?}, not the GGUF magic"));
        }
        let version = r.u32("version")?;
        match version {
            1 => r.wide = false,
            2 | 3 => {}
            v => return Err(format!("version {v} is not supported (1, 2 or 3)")),
        }
        let n_tensors = r.size("tensor count")?;
        let n_kv = r.size("metadata count")?;
        // Each metadata entry takes at least a key length, a type and one byte.
        r.bounded(n_kv, r.len_bytes() + 5, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata[{i}] key"))?;
            let ty = r.u32(&format!("metadata {key:?} type"))?;
            let value = r.value(ty, 0, &key)?;
            metadata.insert(key, value);
        }
        // Each tensor info takes at least a name length, n_dims, a type and an offset.
        r.bounded(n_tensors, r.len_bytes() + 16, "tensor count")?;
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor[{i}] name"))?;
            let n_dims = r.u32(&format!("tensor {name:?} n_dims"))?;
            if n_dims > MAX_DIMS {
                return Err(format!(
                    "tensor {name:?} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}"
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.size(&format!("tensor {name:?} dimension"))?);
            }
            dims.reverse();
            let ggml_type = r.u32(&format!("tensor {name:?} type"))?;
            let offset = r.u64(&format!("tensor {name:?} offset"))?;
            infos.push((name, dims, ggml_type, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(format!(
                        "general.alignment is {v:?}; it must be a power of two"
                    ))
                }
            },
        };
        let data_offset = r
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or("tensor data offset overflows")?;
        let mut tensors = BTreeMap::new();
        for (name, dims, ty, offset) in infos {
            let info = tensor_info(&name, dims, ty, offset, alignment, data_offset, file_len)?;
            if tensors.insert(name.clone(), info).is_some() {
                return Err(format!("tensor {name:?} appears twice"));
            }
        }
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            data_offset,
            file_len,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
}

/// Checks one tensor: known type, whole blocks, aligned, inside the file.
fn tensor_info(
    name: &str,
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<GgufTensorInfo, String> {
    let (tname, block, block_bytes) = ggml_type(ty)
        .ok_or_else(|| format!("tensor {name:?} has GGML type {ty}, which kvpr does not read"))?;
    let elems = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .filter(|&e| e <= file_len.saturating_mul(8))
        .ok_or_else(|| format!("tensor {name:?}: {dims:?} elements cannot fit in the file"))?;
    if !elems.is_multiple_of(block) {
        return Err(format!(
            "tensor {name:?}: {elems} elements are not whole {tname} blocks of {block}"
        ));
    }
    let n_bytes = (elems / block)
        .checked_mul(block_bytes)
        .ok_or_else(|| format!("tensor {name:?}: its size overflows"))?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}"
        ));
    }
    let end = data_offset
        .checked_add(offset)
        .and_then(|s| s.checked_add(n_bytes));
    if end.is_none_or(|e| e > file_len) {
        return Err(format!(
            "tensor {name:?}: {n_bytes} bytes at offset {offset} run past the end of the file ({file_len} bytes)"
        ));
    }
    let dims = dims
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("tensor {name:?}: a dimension does not fit this machine"))?;
    Ok(GgufTensorInfo {
        dims,
        ggml_type: ty,
        offset,
        n_bytes,
    })
}

/// Reads little-endian values, counting bytes against the file's length.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
    /// Counts and lengths are `u64` (versions 2, 3) or `u32` (version 1).
    wide: bool,
    /// Memory the metadata read so far may still take.
    memory: u64,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Bytes of a count or length field.
    fn len_bytes(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    /// Refuses `count` items of at least `min_bytes` each if the rest of the file cannot hold them.
    fn bounded(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), String> {
        if count
            .checked_mul(min_bytes)
            .is_none_or(|n| n > self.remaining())
        {
            return Err(format!(
                "{what} {count} cannot fit in the {} bytes left in the file",
                self.remaining()
            ));
        }
        Ok(())
    }

    /// Takes `count` items of `size` bytes each from the memory budget, or
    /// refuses them before anything is allocated.
    fn charge(&mut self, count: u64, size: u64, what: &str) -> Result<(), String> {
        match count.checked_mul(size).filter(|&b| b <= self.memory) {
            Some(b) => {
                self.memory -= b;
                Ok(())
            }
            None => Err(format!(
                "{what}: {count} items would take more than the {} of memory kvpr gives a header's metadata",
                crate::human_bytes(MAX_METADATA_MEMORY)
            )),
        }
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), String> {
        let n = buf.len() as u64;
        if n > self.remaining() {
            return Err(format!("{what}: the file ends at byte {}", self.len));
        }
        self.inner
            .read_exact(buf)
            .map_err(|e| format!("{what}: {e} at byte {}", self.pos))?;
        self.pos += n;
        Ok(())
    }

    fn bytes_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes_array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes_array(what)?))
    }

    /// A count or length (width depends on the version).
    fn size(&mut self, what: &str) -> Result<u64, String> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.size(what)?;
        self.bounded(n, 1, &format!("{what}: length"))?;
        self.charge(n, 1, what)?;
        let mut buf = vec![0u8; n as usize];
        self.fill(&mut buf, what)?;
        String::from_utf8(buf).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// A value of GGUF type `ty` (arrays nested `depth` deep).
    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<GgufValue, String> {
        let what = || format!("metadata {key:?}");
        Ok(match ty {
            0 => GgufValue::U8(self.bytes_array::<1>(&what())?[0]),
            1 => GgufValue::I8(self.bytes_array::<1>(&what())?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.bytes_array(&what())?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.bytes_array(&what())?)),
            4 => GgufValue::U32(self.u32(&what())?),
            5 => GgufValue::I32(i32::from_le_bytes(self.bytes_array(&what())?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.bytes_array(&what())?)),
            7 => match self.bytes_array::<1>(&what())?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("{}: bool byte {b} is neither 0 nor 1", what())),
            },
            8 => GgufValue::String(self.string(&what())?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{}: arrays nest deeper than {MAX_DEPTH}", what()));
                }
                let elem = self.u32(&what())?;
                let n = self.size(&what())?;
                self.bounded(n, min_value_bytes(elem, self.len_bytes())?, &what())?;
                self.charge(n, std::mem::size_of::<GgufValue>() as u64, &what())?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, key)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(&what())?),
            11 => GgufValue::I64(i64::from_le_bytes(self.bytes_array(&what())?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.bytes_array(&what())?)),
            t => return Err(format!("{}: unknown value type {t}", what())),
        })
    }
}

/// The fewest bytes a value of type `ty` takes in the file.
fn min_value_bytes(ty: u32, len_bytes: u64) -> Result<u64, String> {
    Ok(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => len_bytes,
        9 => 4 + len_bytes,
        t => return Err(format!("unknown array element type {t}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
        GgufHeader::read(bytes, bytes.len() as u64, Path::new("t.gguf"))
    }

    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn head(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend(n_tensors.to_le_bytes());
        v.extend(n_kv.to_le_bytes());
        v
    }

    #[test]
    fn alignment_zero_is_an_error_not_a_division_by_zero() {
        // The 57-byte reproducer of the issue.
        let mut f = head(0, 1);
        f.extend(s(b"general.alignment"));
        f.extend(4u32.to_le_bytes());
        f.extend(0u32.to_le_bytes());
        assert_eq!(f.len(), 57);
        let e = read(&f).unwrap_err().to_string();
        assert!(
            e.contains("t.gguf") && e.contains("general.alignment"),
            "{e}"
        );
    }

    #[test]
    fn huge_array_count_fails_before_allocating() {
        let mut f = head(0, 1);
        f.extend(s(b"tokenizer.ggml.tokens"));
        f.extend(9u32.to_le_bytes());
        f.extend(8u32.to_le_bytes());
        f.extend((1u64 << 60).to_le_bytes());
        f.resize(200, 0);
        let e = read(&f).unwrap_err().to_string();
        assert!(e.contains("cannot fit"), "{e}");
    }

    #[test]
    fn huge_string_length_and_counts_are_refused() {
        let mut f = head(0, 1);
        f.extend(u64::MAX.to_le_bytes());
        assert!(read(&f).unwrap_err().to_string().contains("cannot fit"));
        let f = head(u64::MAX, 0);
        assert!(read(&f).unwrap_err().to_string().contains("tensor count"));
    }

    #[test]
    fn tensor_past_the_end_and_overflowing_dims_are_refused() {
        let tensor = |dims: &[u64], offset: u64| {
            let mut f = head(1, 0);
            f.extend(s(b"w"));
            f.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                f.extend(d.to_le_bytes());
            }
            f.extend(0u32.to_le_bytes());
            f.extend(offset.to_le_bytes());
            f
        };
        let mut ok = tensor(&[2, 3], 0);
        ok.resize(ok.len().next_multiple_of(32) + 24, 0);
        let h = read(&ok).unwrap();
        assert_eq!(h.tensors["w"].dims, vec![3, 2]);
        assert_eq!(h.tensors["w"].n_bytes, 24);
        let e = read(&tensor(&[2, 3], 0)).unwrap_err().to_string();
        assert!(e.contains("past the end"), "{e}");
        let e = read(&tensor(&[1 << 40, 1 << 40], 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot fit"), "{e}");
        let e = read(&tensor(&[2], u64::MAX - 7)).unwrap_err().to_string();
        assert!(e.contains("alignment") || e.contains("past the end"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut f = head(0, 1);
        f.extend(s(b"k"));
        f.extend(9u32.to_le_bytes());
        for _ in 0..MAX_DEPTH + 1 {
            f.extend(9u32.to_le_bytes());
            f.extend(1u64.to_le_bytes());
        }
        f.resize(f.len() + 64, 0);
        let e = read(&f).unwrap_err().to_string();
        assert!(e.contains("nest"), "{e}");
    }
}
