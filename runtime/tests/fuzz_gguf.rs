//! Mutation property tests over GGUF headers and tokenizer files. A small GGUF
//! with the real structure (header, typed metadata with a GPT-2 tokenizer,
//! tensor infos, aligned data) is written here; when the real SmolLM2 file is
//! present its header is mutated too. Each case truncates, flips bytes, or sets
//! counts, lengths and types to huge values, then reads the header, the model
//! shape and the tokenizer. Nothing may panic, and no single allocation may
//! exceed what the file's size justifies (a counting global allocator checks).
//!
//! Cases: `KVPR_FUZZ_CASES` (default 2,000; `make fuzz` runs 100,000).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;
use std::path::Path;

use plans::{GgufHeader, ModelSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use runtime::Tokenizer;

/// Records, per thread, the largest single allocation since the last reset.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let out = f();
    (out, LARGEST.with(|c| c.get()))
}

fn cases() -> u32 {
    std::env::var("KVPR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A GGUF being written, remembering where its counts, lengths and types are.
#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
    /// Offsets of 4- and 8-byte fields worth mutating.
    fields: Vec<(usize, usize)>,
}

impl Writer {
    fn u32(&mut self, v: u32) {
        self.fields.push((self.bytes.len(), 4));
        self.bytes.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.fields.push((self.bytes.len(), 8));
        self.bytes.extend(v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes.extend(s.as_bytes());
    }
    fn kv_u32(&mut self, k: &str, v: u32) {
        self.str(k);
        self.u32(4);
        self.u32(v);
    }
    fn kv_f32(&mut self, k: &str, v: f32) {
        self.str(k);
        self.u32(6);
        self.bytes.extend(v.to_le_bytes());
    }
    fn kv_str(&mut self, k: &str, v: &str) {
        self.str(k);
        self.u32(8);
        self.str(v);
    }
    fn kv_strs(&mut self, k: &str, v: &[String]) {
        self.str(k);
        self.u32(9);
        self.u32(8);
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
    fn kv_i32s(&mut self, k: &str, v: &[i32]) {
        self.str(k);
        self.u32(9);
        self.u32(5);
        self.u64(v.len() as u64);
        for x in v {
            self.bytes.extend(x.to_le_bytes());
        }
    }
}

/// A tokenizer small enough to build thousands of times: the real model's first
/// tokens and the merges among them when the model is present, else ASCII.
fn small_vocab() -> (Vec<String>, Vec<String>) {
    if let Some(path) = common::smollm2() {
        let (h, _) = GgufHeader::open(&path).unwrap();
        let strs = |k: &str| -> Vec<String> {
            h.get(k)
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let tokens: Vec<String> = strs("tokenizer.ggml.tokens")
            .into_iter()
            .take(400)
            .collect();
        let known: std::collections::HashSet<&String> = tokens.iter().collect();
        let merges = strs("tokenizer.ggml.merges")
            .into_iter()
            .filter(|m| {
                m.split_once(' ').is_some_and(|(a, b)| {
                    known.contains(&a.to_string())
                        && known.contains(&b.to_string())
                        && known.contains(&format!("{a}{b}"))
                })
            })
            .collect();
        return (tokens, merges);
    }
    let mut tokens: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    tokens.extend(["th", "he", "the", "<|im_start|>"].map(String::from));
    (tokens, vec!["t h".into(), "h e".into(), "t he".into()])
}

/// The fixture: a llama GGUF (v3) with a tokenizer and two F32 tensors.
fn small_gguf() -> Writer {
    let (tokens, merges) = small_vocab();
    let mut w = Writer::default();
    w.bytes.extend(b"GGUF");
    w.u32(3);
    w.u64(2);
    w.u64(15);
    w.kv_str("general.architecture", "llama");
    w.kv_str("general.name", "fuzz");
    w.kv_u32("general.alignment", 32);
    for (k, v) in [
        ("embedding_length", 8),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
        ("block_count", 1),
        ("feed_forward_length", 16),
        ("context_length", 64),
    ] {
        w.kv_u32(&format!("llama.{k}"), v);
    }
    w.kv_f32("llama.rope.freq_base", 1e4);
    w.kv_str("tokenizer.ggml.model", "gpt2");
    let types: Vec<i32> = tokens
        .iter()
        .map(|t| if t.starts_with("<|") { 3 } else { 1 })
        .collect();
    w.kv_strs("tokenizer.ggml.tokens", &tokens);
    w.kv_strs("tokenizer.ggml.merges", &merges);
    w.kv_i32s("tokenizer.ggml.token_type", &types);
    w.kv_u32("tokenizer.ggml.eos_token_id", 1);
    let vocab = tokens.len() as u64;
    for (name, dims, offset) in [
        ("token_embd.weight", vec![8u64, vocab], 0u64),
        (
            "output_norm.weight",
            vec![8],
            (8 * vocab * 4).next_multiple_of(32),
        ),
    ] {
        w.str(name);
        w.u32(dims.len() as u32);
        for d in dims {
            w.u64(d);
        }
        w.u32(0);
        w.u64(offset);
    }
    let data = w.bytes.len().next_multiple_of(32);
    let end = data + (8 * vocab as usize * 4).next_multiple_of(32) + 32;
    w.bytes.resize(end, 0x3c);
    w
}

/// One edit of a binary file.
#[derive(Clone, Debug)]
enum Edit {
    /// Overwrite the `i`-th recorded field (mod the count) with a hostile value.
    Field(usize, u64),
    Flip(usize, u8),
    Truncate(usize),
}

const HOSTILE: &[u64] = &[
    0,
    1,
    3,
    8,
    9,
    12,
    13,
    255,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1 << 60,
    u64::MAX,
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), proptest::sample::select(HOSTILE)).prop_map(|(i, v)| Edit::Field(i, v)),
        3 => (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(w: &Writer, edits: &[Edit]) -> Vec<u8> {
    let mut b = w.bytes.clone();
    for e in edits {
        match *e {
            Edit::Field(i, v) if !w.fields.is_empty() => {
                let (at, n) = w.fields[i % w.fields.len()];
                if at + n <= b.len() {
                    b[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
                }
            }
            Edit::Flip(i, bits) if !b.is_empty() => {
                let n = b.len();
                b[i % n] ^= bits;
            }
            Edit::Truncate(i) if !b.is_empty() => {
                let n = b.len();
                b.truncate(i % n);
            }
            _ => {}
        }
    }
    b
}

/// Reads everything kvpr reads from a header; returns the largest allocation.
fn read_all(bytes: &[u8], file_len: u64) -> usize {
    let path = Path::new("fuzz.gguf");
    let (header, largest) = largest_allocation(|| GgufHeader::read(bytes, file_len, path));
    let bound = 40 * file_len as usize + (64 << 10);
    assert!(
        largest <= bound,
        "reading a {}-byte header of a {file_len}-byte file allocated {largest} bytes at once",
        bytes.len()
    );
    if let Ok(h) = header {
        let _ = ModelSpec::from_gguf_header(&h, path);
        if let Ok(tk) = Tokenizer::from_gguf_header(&h, path) {
            if let Ok(ids) = tk.encode("the theme <|im_start|>") {
                let _ = tk.decode(&ids);
            }
        }
    }
    largest
}

#[test]
fn the_fixture_is_a_readable_model_header_and_tokenizer() {
    let w = small_gguf();
    let h = GgufHeader::read(&w.bytes[..], w.bytes.len() as u64, Path::new("f.gguf")).unwrap();
    let spec = ModelSpec::from_gguf_header(&h, Path::new("f.gguf")).unwrap();
    assert_eq!((spec.hidden_size, spec.n_kv_heads), (8, 1));
    let tk = Tokenizer::from_gguf_header(&h, Path::new("f.gguf")).unwrap();
    let ids = tk.encode("the").unwrap();
    assert_eq!(tk.decode(&ids).unwrap(), "the");
}

#[test]
fn mutated_gguf_headers_and_tokenizers_never_panic_or_overallocate() {
    let w = small_gguf();
    runner(cases())
        .run(&proptest::collection::vec(edit(), 1..4), |edits| {
            let bytes = apply(&w, &edits);
            read_all(&bytes, bytes.len() as u64);
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_real_smollm2_headers_never_panic_or_overallocate() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let (h, mut f) = GgufHeader::open(&path).unwrap();
    let mut head = vec![0u8; h.data_offset as usize];
    use std::io::Seek;
    f.rewind().unwrap();
    f.read_exact(&mut head).unwrap();
    let w = Writer {
        bytes: head,
        // The fixed fields: version, tensor count, metadata count.
        fields: vec![(4, 4), (8, 8), (16, 8)],
    };
    // A whole real header takes a while to tokenize: fewer cases.
    let n = (cases() / 50).max(10);
    runner(n)
        .run(&proptest::collection::vec(edit(), 1..3), |edits| {
            let bytes = apply(&w, &edits);
            read_all(&bytes, h.file_len);
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_200_byte_file_claiming_a_2_pow_60_element_array_fails_fast() {
    let mut w = Writer::default();
    w.bytes.extend(b"GGUF");
    w.u32(3);
    w.u64(0);
    w.u64(1);
    w.str("tokenizer.ggml.tokens");
    w.u32(9);
    w.u32(8);
    w.u64(1 << 60);
    w.bytes.resize(200, 0);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.gguf");
    std::fs::write(&p, &w.bytes).unwrap();
    let (e, largest) = largest_allocation(|| {
        runtime::Weights::load(&runtime::ModelSource::Gguf(p.clone())).unwrap_err()
    });
    let e = e.to_string();
    assert!(e.contains("huge.gguf") && e.contains("cannot fit"), "{e}");
    assert!(largest < 1 << 20, "allocated {largest} bytes at once");
}

/// Issue 19, finding 2: an array of 140M u8 in a sparse 140 MB file fits the
/// file, but not memory once each element is a value (32 bytes: 4.5 GB);
/// it is refused by the metadata's memory budget before any allocation.
#[test]
fn an_array_that_fits_the_file_but_not_memory_is_refused_before_allocating() {
    let n: u64 = 140_000_000;
    let mut w = Writer::default();
    w.bytes.extend(b"GGUF");
    w.u32(3);
    w.u64(0);
    w.u64(1);
    w.str("tokenizer.ggml.token_type");
    w.u32(9);
    w.u32(0);
    w.u64(n);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.gguf");
    std::fs::write(&p, &w.bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(w.bytes.len() as u64 + n).unwrap();
    drop(f);
    let (e, largest) = largest_allocation(|| {
        runtime::Weights::load(&runtime::ModelSource::Gguf(p.clone())).unwrap_err()
    });
    let e = e.to_string();
    assert!(e.contains("sparse.gguf") && e.contains("of memory"), "{e}");
    assert!(largest < 1 << 20, "allocated {largest} bytes at once");
}

/// A `tokenizer.json` of the small vocabulary, as the tokenizers crate writes it.
fn small_tokenizer_json(dir: &Path) -> Vec<u8> {
    let (tokens, merges) = small_vocab();
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().cloned().zip(0..).collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.into(), b.into())))
        .collect();
    let bpe = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true),
    ));
    tk.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::new(
        false, true, true,
    )));
    std::fs::write(
        dir.join("config.json"),
        br#"{"bos_token_id": 0, "eos_token_id": [1]}"#,
    )
    .unwrap();
    tk.to_string(false).unwrap().into_bytes()
}

#[test]
fn mutated_tokenizer_json_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_tokenizer_json(dir.path());
    Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    std::fs::write(dir.path().join("tokenizer.json"), &text).unwrap();
    let tk = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tk.decode(&tk.encode("the").unwrap()).unwrap(), "the");
    // Mutate the JSON's digit runs into huge numbers, flip bytes, truncate.
    let digits: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut i = 0;
        while i < text.len() {
            if text[i].is_ascii_digit() {
                let s = i;
                while i < text.len() && text[i].is_ascii_digit() {
                    i += 1;
                }
                v.push((s, i));
            } else {
                i += 1;
            }
        }
        v
    };
    let strategy =
        proptest::collection::vec((any::<usize>(), any::<usize>(), 0..3u8, 1..=255u8), 1..4);
    runner(cases() / 4)
        .run(&strategy, |edits| {
            let mut b = text.clone();
            for (i, j, kind, bits) in edits {
                match kind {
                    0 if !digits.is_empty() => {
                        let (s, e) = digits[i % digits.len()];
                        if e <= b.len() {
                            let v = ["18446744073709551615", "4294967296", "0", "99999999"];
                            b.splice(s..e, v[j % v.len()].bytes());
                        }
                    }
                    1 if !b.is_empty() => {
                        let n = b.len();
                        b[i % n] ^= bits;
                    }
                    _ if !b.is_empty() => {
                        let n = b.len();
                        b.truncate(i % n);
                    }
                    _ => {}
                }
            }
            std::fs::write(dir.path().join("tokenizer.json"), &b).unwrap();
            if let Ok(tk) = Tokenizer::from_hf_dir(dir.path()) {
                if let Ok(ids) = tk.encode("the theme") {
                    let _ = tk.decode(&ids);
                }
            }
            Ok(())
        })
        .unwrap();
}
