//! The CUDA kernels run on the CPU, against their twins, in every `make
//! test`: `kernels/cuda/emu/prelude.h` emulates a block's threads as
//! coroutines (barriers and warp shuffles included), the kernel source the
//! runtime compiles with NVRTC is compiled here by the system C++ compiler
//! (its three inline-PTX conversions swapped for host ones), and each kernel is
//! launched through the very code the CUDA backend launches with (`ops.rs`,
//! here with the emulator as its [`Launcher`]). This checks the kernels'
//! arithmetic, indexing, reductions and tie rules, and the launch code's
//! arguments, grids and scratch layout, with no GPU; NVRTC's compile test
//! checks they build for the GPU.
//! Skips with a printed reason when no C++ compiler is found.

use std::ffi::c_void;
use std::sync::OnceLock;

use super::nvrtc::{kernel_source, KERNELS, SUFFIXES};
use super::ops::{self, Arg, Launcher, ScratchKind};
use super::{decode, encode};
use crate::selftest::{tolerance, Rng};
use crate::{twin, AttnShape, Dtype, Result, RopeShape, Rows, SampleArgs};

struct Emu {
    lib: libloading::Library,
    /// The emulator keeps its state in globals: one launch at a time.
    lock: std::sync::Mutex<()>,
}

type Launch = unsafe extern "C" fn(i32, i32, i32, i32, *mut *mut c_void);

/// One kernel argument, as the kernel declares it.
enum A {
    P(*mut c_void),
    I(i32),
    F(f32),
    U(u64),
}

/// The kernel source with the inline-PTX conversions replaced by the
/// emulator's host functions, and one exported launcher per kernel.
fn emulated_source() -> String {
    let mut src = kernel_source();
    while let Some(start) = src.find("asm(\"") {
        let end = start
            + src[start..]
                .find(");")
                .expect("an asm statement ends with );")
            + 2;
        let stmt = &src[start..end];
        let instr = stmt[5..].split(' ').next().unwrap_or_default();
        let vars: Vec<&str> = stmt
            .split(':')
            .skip(1)
            .filter_map(|part| Some(part.split_once('(')?.1.split_once(')')?.0))
            .collect();
        let func = match instr {
            "cvt.f32.f16" => "emu_h2f",
            "cvt.rn.f16.f32" => "emu_f2h",
            "cvt.rn.bf16.f32" => "emu_f2bf",
            other => panic!("the emulator has no host version of {other}"),
        };
        let line = format!("{} = {func}({});", vars[0], vars[1]);
        src.replace_range(start..end, &line);
    }
    let mut out = String::from("#include \"prelude.h\"\n");
    out.push_str(&src);
    for k in KERNELS {
        for d in SUFFIXES {
            out.push_str(&format!(
                "extern \"C\" void L_{k}_{d}(int gx, int gy, int gz, int bx, void** a) {{ emu_launch({k}_{d}, gx, gy, gz, bx, a); }}\n"
            ));
        }
    }
    out
}

/// Builds the emulator once per test process (None: no C++ compiler here).
fn emu() -> Option<&'static Emu> {
    static EMU: OnceLock<Option<Emu>> = OnceLock::new();
    EMU.get_or_init(|| {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let dir = std::env::temp_dir().join(format!("kvpr-cuda-emu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let (cpp, so) = (dir.join("emu.cpp"), dir.join("emu.so"));
        std::fs::write(&cpp, emulated_source()).expect("writing the emulator's source");
        let prelude = concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/emu");
        let out = std::process::Command::new(&cxx)
            .args(["-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-I", prelude])
            .arg(&cpp)
            .arg("-o")
            .arg(&so)
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // `make test` sets it: there the emulator must run.
                assert!(
                    std::env::var_os("KVPR_REQUIRE_MODEL").is_none(),
                    "KVPR_REQUIRE_MODEL is set and there is no C++ compiler ({cxx}: {e}) to build the CUDA emulator"
                );
                eprintln!("skipping: no C++ compiler ({cxx}: {e}) to build the CUDA emulator");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "the kernels do not build for the emulator:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: the library was just built from our own source; loading it
        // runs no initialisers beyond the C++ runtime's.
        let lib = unsafe { libloading::Library::new(&so) }.expect("loading the emulator");
        Some(Emu {
            lib,
            lock: std::sync::Mutex::new(()),
        })
    })
    .as_ref()
}

/// The emulator as a [`Launcher`]: the launches the CUDA backend makes
/// (`ops.rs`), run on host memory; addresses are host pointers.
struct EmuLauncher {
    emu: &'static Emu,
    dtype: Dtype,
    /// Attention's scratch limit: small in a test that makes the launch code
    /// slice the queries, as it does on a GPU for a long prefill.
    attn_limit: usize,
    scratch: std::sync::Mutex<[Vec<f32>; 2]>,
}

impl EmuLauncher {
    fn new(dtype: Dtype) -> Option<EmuLauncher> {
        Some(EmuLauncher {
            emu: emu()?,
            dtype,
            attn_limit: 64 << 20,
            scratch: std::sync::Mutex::new([Vec::new(), Vec::new()]),
        })
    }
}

impl Launcher for EmuLauncher {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn device(&self) -> String {
        "emulated cuda".into()
    }

    fn launch(
        &self,
        kernel: &'static str,
        grid: (usize, usize, usize),
        block: u32,
        args: &[Arg],
    ) -> Result<()> {
        let name = format!("L_{kernel}_{}\0", self.dtype.name());
        // SAFETY: every exported launcher has the `Launch` signature.
        let f: libloading::Symbol<Launch> =
            unsafe { self.emu.lib.get(name.as_bytes()) }.expect("an exported launcher");
        let mut vals: Vec<A> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => A::P(p as usize as *mut c_void),
                Arg::I32(v) => A::I(v),
                Arg::F32(v) => A::F(v),
                Arg::U64(v) => A::U(v),
            })
            .collect();
        let mut ptrs: Vec<*mut c_void> = vals
            .iter_mut()
            .map(|a| match a {
                A::P(p) => p as *mut *mut c_void as *mut c_void,
                A::I(v) => v as *mut i32 as *mut c_void,
                A::F(v) => v as *mut f32 as *mut c_void,
                A::U(v) => v as *mut u64 as *mut c_void,
            })
            .collect();
        let _one = self.emu.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `ops` passes the arguments of the kernel's signature, and the
        // tests' host buffers cover what each kernel touches.
        unsafe {
            f(
                grid.0 as i32,
                grid.1 as i32,
                grid.2 as i32,
                block as i32,
                ptrs.as_mut_ptr(),
            )
        };
        Ok(())
    }

    fn attention_scratch_limit(&self) -> usize {
        self.attn_limit
    }

    fn scratch(&self, kind: ScratchKind, floats: usize) -> Result<u64> {
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let v = &mut s[(kind == ScratchKind::Sampler) as usize];
        if v.len() < floats {
            *v = vec![f32::NAN; floats];
        }
        Ok(v.as_mut_ptr() as usize as u64)
    }
}

const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

/// Seeded values in [-scale, scale), rounded to `d` (what the device holds).
fn random(n: usize, scale: f32, seed: u64, d: Dtype) -> Vec<f32> {
    let v: Vec<f32> = Rng::new(seed).vec(n).iter().map(|x| x * scale).collect();
    decode(d, &encode(d, &v))
}

/// A host buffer's address, as the ops take device addresses.
fn addr<T>(b: &mut [T]) -> u64 {
    b.as_mut_ptr() as usize as u64
}

fn ids_bytes(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn ids_of(out: &[u8]) -> Vec<u32> {
    out.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], d: Dtype, what: &str) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) as f64;
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (*g as f64 - *w as f64).abs() / scale;
        assert!(
            e <= tolerance(d),
            "{what} {}: element {i}: got {g}, want {w}",
            d.name()
        );
    }
}

#[test]
fn rmsnorm_and_elementwise_match_their_twins() {
    for d in DTYPES {
        let Some(l) = EmuLauncher::new(d) else { return };
        let (rows, dim) = (3, 1000);
        let x = random(rows * dim, 3.0, 1, d);
        let w = random(dim, 1.0, 2, d);
        let want = twin::rmsnorm(&x, &w, dim, 1e-5);
        let (mut xb, mut wb) = (encode(d, &x), encode(d, &w));
        // In place, as the executor calls it.
        ops::rmsnorm(
            &l,
            addr(&mut xb),
            addr(&mut wb),
            addr(&mut xb),
            rows,
            dim,
            1e-5,
        )
        .unwrap();
        assert_close(&decode(d, &xb), &want, d, "rmsnorm");
        let n = 70_001;
        let (g, u) = (random(n, 4.0, 3, d), random(n, 1.0, 4, d));
        for (k, want) in [
            ("silu_gate", twin::silu_gate(&g, &u)),
            ("add", twin::add(&g, &u)),
        ] {
            let (mut gb, mut ub) = (encode(d, &g), encode(d, &u));
            let (ga, ua) = (addr(&mut gb), addr(&mut ub));
            ops::binary(&l, k, ga, ua, ga, n).unwrap();
            assert_close(&decode(d, &gb), &want, d, k);
        }
        let r = Rows {
            rows: 5,
            width: 300,
            src_pitch: 310,
            dst_pitch: 700,
        };
        let src = random(4 * 310 + 300, 1.0, 5, d);
        let mut want = vec![0.5; 4 * 700 + 300 + 9];
        let (mut sb, mut db) = (encode(d, &src), encode(d, &want));
        twin::scatter(&src, &mut want[9..], &r);
        let esz = d.bytes() as u64;
        ops::scatter(&l, addr(&mut sb), addr(&mut db) + 9 * esz, r).unwrap();
        assert_close(&decode(d, &db), &want, d, "scatter");
    }
}

/// Qwen3's per-head norm (rmsnorm in place at an offset inside a larger
/// buffer, as `CudaBackend::rmsnorm` launches it) and Qwen2's bias add, at
/// odd sizes: the elements around the range keep their values.
#[test]
fn rmsnorm_at_an_offset_and_add_bias_match_their_twins() {
    for d in DTYPES {
        let Some(l) = EmuLauncher::new(d) else { return };
        let esz = d.bytes() as u64;
        // rows (tokens * heads), dim (head_dim), offset
        for (rows, dim, off) in [(3 * 4, 64, 7), (5, 129, 0), (2 * 16, 128, 128)] {
            let n = off + rows * dim + 5;
            let x = random(n, 3.0, 21, d);
            let w = random(dim, 1.0, 22, d);
            let mut want = x.clone();
            let normed = twin::rmsnorm(&x[off..off + rows * dim], &w, dim, 1e-6);
            want[off..off + rows * dim].copy_from_slice(&normed);
            let (mut xb, mut wb) = (encode(d, &x), encode(d, &w));
            let at = addr(&mut xb) + off as u64 * esz;
            ops::rmsnorm(&l, at, addr(&mut wb), at, rows, dim, 1e-6).unwrap();
            let what = format!("rmsnorm in place rows={rows} dim={dim} at {off}");
            assert_close(&decode(d, &xb), &want, d, &what);
        }
        // rows, dim (odd sizes, a row wider than a block), offset
        for (rows, dim, off) in [(1, 64, 0), (7, 300, 3), (70_000, 3, 1)] {
            let n = off + rows * dim + 4;
            let x = random(n, 1.0, 23, d);
            let bias = random(dim, 0.5, 24, d);
            let mut want = x.clone();
            twin::add_bias(&mut want[off..off + rows * dim], &bias, dim);
            let (mut xb, mut bb) = (encode(d, &x), encode(d, &bias));
            let at = addr(&mut xb) + off as u64 * esz;
            ops::add_bias(&l, at, addr(&mut bb), rows, dim).unwrap();
            let what = format!("add_bias rows={rows} dim={dim} at {off}");
            assert_close(&decode(d, &xb), &want, d, &what);
        }
    }
}

#[test]
fn rope_matches_its_twin_in_both_conventions_and_with_scaled_tables() {
    for d in DTYPES {
        let Some(l) = EmuLauncher::new(d) else { return };
        // Unscaled; a llama3-like table (low frequencies / 8) with a factor
        // (YaRN's attention factor); head_dim 128 with few heads (one angle
        // per thread) and 32 (threads share out heads).
        let tables = [
            (64, twin::default_inv_freq(1e4, 64), 1.0),
            (128, crate::selftest::llama3_like_inv_freq(5e5, 128), 1.25),
            (32, twin::default_inv_freq(1e6, 32), 0.75),
        ];
        for (hd, inv_freq, factor) in tables {
            for interleaved in [false, true] {
                let r = RopeShape {
                    rows: 3,
                    row_stride: 5 * hd + 6,
                    n_heads: 5,
                    head_dim: hd,
                    interleaved,
                };
                let pos = [4000u32, 7, 131_071];
                let x = random(3 * r.row_stride, 1.0, 6, d);
                let mut want = x.clone();
                twin::rope(&mut want, &pos, &r, &inv_freq, factor);
                let (mut xb, mut pb) = (encode(d, &x), ids_bytes(&pos));
                let mut fb: Vec<u8> = inv_freq.iter().flat_map(|f| f.to_le_bytes()).collect();
                let (xa, pa, fa) = (addr(&mut xb), addr(&mut pb), addr(&mut fb));
                ops::rope(&l, xa, pa, fa, factor, None, r).unwrap();
                let what = format!("rope hd={hd} x{factor} interleaved={interleaved}");
                assert_close(&decode(d, &xb), &want, d, &what);
            }
        }
    }
}

/// Dynamic NTK: the kernel's per-row rescaling, rows before and after the
/// prompt's end and within `max_pos`, against the twin.
#[test]
fn rope_with_dynamic_ntk_matches_its_twin() {
    use crate::DynamicNtk;
    for d in DTYPES {
        let Some(l) = EmuLauncher::new(d) else { return };
        let hd = 64;
        let inv_freq = twin::default_inv_freq(1e4, hd);
        let ntk = DynamicNtk {
            factor: 4.0,
            max_pos: 4096,
            min_len: 5000,
        };
        for interleaved in [false, true] {
            let r = RopeShape {
                rows: 4,
                row_stride: 3 * hd,
                n_heads: 3,
                head_dim: hd,
                interleaved,
            };
            let pos = [7u32, 4999, 5000, 131_071];
            let x = random(4 * r.row_stride, 1.0, 8, d);
            let mut want = x.clone();
            twin::rope_with(&mut want, &pos, &r, &inv_freq, 1.0, Some(&ntk));
            let (mut xb, mut pb) = (encode(d, &x), ids_bytes(&pos));
            let mut fb: Vec<u8> = inv_freq.iter().flat_map(|f| f.to_le_bytes()).collect();
            let (xa, pa, fa) = (addr(&mut xb), addr(&mut pb), addr(&mut fb));
            ops::rope(&l, xa, pa, fa, 1.0, Some(ntk), r).unwrap();
            let what = format!("rope dynamic NTK interleaved={interleaved}");
            assert_close(&decode(d, &xb), &want, d, &what);
        }
    }
}

#[test]
fn attention_matches_its_twin_over_splits() {
    // batch, q_len, q_pos0, n_heads, n_kv_heads, head_dim, kv_capacity, window
    let cases = [
        (2, 1, 600, 4, 4, 64, 700, 0),
        (1, 6, 250, 4, 2, 32, 300, 0),
        (1, 1, 300, 2, 1, 128, 301, 0),
        (3, 1, 0, 3, 3, 16, 4, 0),
        // Sliding windows: decode whose window starts inside the third
        // split (two splits not launched, the third masked); a window
        // reaching back exactly to a split's start; window 1; prefill
        // across a split edge with a window shorter than the prompt, GQA;
        // a window as long as the cache (no window).
        (2, 1, 600, 4, 4, 64, 700, 77),
        (1, 1, 700, 4, 2, 32, 800, 189),
        (1, 6, 250, 4, 2, 32, 300, 1),
        (2, 20, 245, 4, 2, 32, 300, 7),
        (1, 6, 250, 2, 1, 16, 300, 300),
        (2, 20, 0, 4, 2, 32, 300, 0),
        (2, 20, 0, 4, 2, 32, 300, 0),
        (2, 20, 250, 4, 2, 32, 300, 9),
    ];
    for d in DTYPES {
        let Some(mut l) = EmuLauncher::new(d) else {
            return;
        };
        for (i, (batch, q_len, q_pos0, n_heads, n_kv_heads, head_dim, kv_capacity, window)) in
            cases.into_iter().enumerate()
        {
            // The last two cases again with room for 7 query rows' partials
            // per launch: one sequence and a slice of its queries at a time
            // (with a window, each slice starts at its own first split).
            l.attn_limit = if i >= cases.len() - 2 {
                7 * n_heads * 2 * (head_dim + 2)
            } else {
                64 << 20
            };
            let a = AttnShape {
                batch,
                q_len,
                q_pos0,
                n_heads,
                n_kv_heads,
                head_dim,
                kv_capacity,
                scale: 1.0 / (head_dim as f32).sqrt(),
                window,
            };
            let q = random(batch * q_len * n_heads * head_dim, 1.0, 7, d);
            let kv = batch * kv_capacity * n_kv_heads * head_dim;
            let (k, v) = (random(kv, 2.0, 8, d), random(kv, 1.0, 9, d));
            let want = twin::attention(&q, &k, &v, &a);
            let (mut qb, mut kb, mut vb) = (encode(d, &q), encode(d, &k), encode(d, &v));
            let mut ob = encode(d, &vec![f32::NAN; q.len()]);
            let (qa, ka, va, oa) = (addr(&mut qb), addr(&mut kb), addr(&mut vb), addr(&mut ob));
            ops::attention(&l, qa, ka, va, oa, a, None).unwrap();
            assert_close(&decode(d, &ob), &want, d, &format!("attention {a:?}"));
        }
    }
}

#[test]
fn ragged_attention_matches_its_twin_with_empty_splits() {
    // n_heads, n_kv_heads, head_dim, kv_capacity, lengths (0, 1, the whole
    // cache, past it; rows shorter than the cache leave splits empty),
    // window (rows longer than it leave the splits before it empty).
    type Case = (usize, usize, usize, usize, &'static [u32], usize);
    let cases: [Case; 6] = [
        (4, 4, 64, 700, &[600, 1, 0, 700, 5000], 0),
        (4, 2, 32, 300, &[257, 256, 3], 0),
        (2, 1, 128, 301, &[301], 0),
        (4, 4, 64, 700, &[600, 1, 0, 700, 5000, 513, 256], 257),
        (4, 2, 32, 300, &[257, 256, 3, 1], 1),
        (4, 2, 32, 300, &[0, 290, 17, 300], 20),
    ];
    for d in DTYPES {
        let Some(mut l) = EmuLauncher::new(d) else {
            return;
        };
        for (i, (n_heads, n_kv_heads, head_dim, kv_capacity, lens, window)) in
            cases.into_iter().enumerate()
        {
            // The last case with room for one row's partials per launch: one
            // sequence at a time, each with its own length.
            l.attn_limit = if i == cases.len() - 1 {
                n_heads * 2 * (head_dim + 2)
            } else {
                64 << 20
            };
            let batch = lens.len();
            let a = AttnShape {
                batch,
                q_len: 1,
                q_pos0: 0,
                n_heads,
                n_kv_heads,
                head_dim,
                kv_capacity,
                scale: 1.0 / (head_dim as f32).sqrt(),
                window,
            };
            let q = random(batch * n_heads * head_dim, 1.0, 12, d);
            let kv = batch * kv_capacity * n_kv_heads * head_dim;
            let (k, v) = (random(kv, 2.0, 13, d), random(kv, 1.0, 14, d));
            let want = twin::attention_ragged(&q, &k, &v, &a, lens);
            let (mut qb, mut kb, mut vb) = (encode(d, &q), encode(d, &k), encode(d, &v));
            let mut ob = encode(d, &vec![f32::NAN; q.len()]);
            let mut lb = ids_bytes(lens);
            let (qa, ka, va, oa) = (addr(&mut qb), addr(&mut kb), addr(&mut vb), addr(&mut ob));
            ops::attention(&l, qa, ka, va, oa, a, Some(addr(&mut lb))).unwrap();
            let what = format!("attention_ragged {lens:?} {a:?}");
            assert_close(&decode(d, &ob), &want, d, &what);
        }
    }
}

#[test]
fn scatter_rows_matches_its_twin_and_skips_the_outside() {
    for d in DTYPES {
        let Some(l) = EmuLauncher::new(d) else { return };
        // A permutation; indices past the destination (one row short of a
        // whole row at its end, and far past it); a row wider than a block.
        for (dst_rows, width, idx) in [
            (5, 64, vec![3u32, 0, 4, 1, 2]),
            (7, 300, vec![6, 7, u32::MAX, 0, 2]),
        ] {
            let rows = idx.len();
            let src = random(rows * width, 1.0, 15, d);
            let dst_len = dst_rows * width + width / 2;
            let mut want = random(dst_len, 1.0, 16, d);
            let (mut sb, mut db, mut ib) = (encode(d, &src), encode(d, &want), ids_bytes(&idx));
            let (sa, da, ia) = (addr(&mut sb), addr(&mut db), addr(&mut ib));
            ops::scatter_rows(&l, sa, da, dst_len, ia, rows, width).unwrap();
            twin::scatter_rows(&src, &mut want, &idx, width);
            assert_close(&decode(d, &db), &want, d, &format!("scatter_rows {idx:?}"));
        }
    }
}

#[test]
fn embedding_argmax_and_sampling_match_their_twins() {
    for d in DTYPES {
        let Some(l) = EmuLauncher::new(d) else { return };
        let (vocab, dim) = (100, 64);
        let table = random(vocab * dim, 1.0, 10, d);
        let ids = [3u32, 99, 0, 100, 42];
        let (mut tb, mut ib) = (encode(d, &table), ids_bytes(&ids));
        let mut ob = encode(d, &vec![f32::NAN; ids.len() * dim]);
        let (ta, ia, oa) = (addr(&mut tb), addr(&mut ib), addr(&mut ob));
        ops::embedding(&l, ta, table.len(), ia, oa, ids.len(), dim).unwrap();
        let want = twin::embedding(&table, &ids, dim);
        assert_close(&decode(d, &ob), &want, d, "embedding");
        // A gather of long rows (a block of K/V) with a skipped slot.
        let (rows, width) = (3, 5 * 256 + 3);
        let pool = random(4 * width, 1.0, 12, d);
        let ids = [2u32, crate::SKIP_ROW, 0];
        let (mut pb, mut ib) = (encode(d, &pool), ids_bytes(&ids));
        let mut ob = encode(d, &vec![7.0; rows * width]);
        let (pa, ia, oa) = (addr(&mut pb), addr(&mut ib), addr(&mut ob));
        ops::embedding(&l, pa, pool.len(), ia, oa, rows, width).unwrap();
        let mut want = vec![7.0; rows * width];
        twin::gather_rows(&pool, &ids, width, &mut want);
        assert_close(&decode(d, &ob), &want, d, "gather_rows");

        let (rows, cols) = (3, 5000);
        let mut x = random(rows * cols, 6.0, 11, d);
        x[cols / 2] = 9.0;
        x[cols / 2 + 1] = 9.0; // a tie: the first wins
        let mut xb = encode(d, &x);
        let mut out = vec![0xffu8; rows * 4];
        ops::argmax(&l, addr(&mut xb), addr(&mut out), rows, cols).unwrap();
        let want: Vec<u32> = x.chunks_exact(cols).map(twin::argmax_row).collect();
        assert_eq!(ids_of(&out), want, "argmax {}", d.name());
        for (t, top_k, top_p) in [(1.0, 0, 1.0), (0.8, 40, 0.9), (1.5, 0, 0.5), (0.7, 1, 1.0)] {
            let s = SampleArgs {
                inv_temperature: 1.0 / t,
                top_k,
                top_p,
                seed: 77,
                step: 3,
            };
            let mut out = vec![0xffu8; rows * 4];
            ops::sample(&l, addr(&mut xb), addr(&mut out), rows, cols, s).unwrap();
            let want: Vec<u32> = x
                .chunks_exact(cols)
                .enumerate()
                .map(|(r, row)| twin::sample_row(row, r, &s))
                .collect();
            assert_eq!(ids_of(&out), want, "sample {} {s:?}", d.name());
        }
    }
}
