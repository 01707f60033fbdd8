//! The CUDA kernels run on the CPU, against their twins, in every `make
//! test`: `kernels/cuda/emu/prelude.h` emulates a block's threads as
//! coroutines (barriers and warp shuffles included), the kernel source the
//! runtime compiles with NVRTC is compiled here by the system C++ compiler
//! (its three inline-PTX conversions swapped for host ones), and each kernel is
//! launched with the arguments and grid its contract (`kernels/cuda/README.md`)
//! gives. This checks the kernels' arithmetic, indexing, reductions and
//! tie rules with no GPU; NVRTC's compile test checks they build for the GPU.
//! Skips with a printed reason when no C++ compiler is found.

use std::ffi::c_void;
use std::sync::OnceLock;

use super::nvrtc::{kernel_source, KERNELS, SUFFIXES};
use super::{decode, encode};
use crate::selftest::tolerance;
use crate::{twin, AttnShape, Dtype, RopeShape, Rows, SampleArgs};

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

impl Emu {
    fn launch(
        &self,
        kernel: &str,
        d: Dtype,
        grid: (usize, usize, usize),
        block: usize,
        args: &mut [A],
    ) {
        let name = format!("L_{kernel}_{}\0", suffix(d));
        // SAFETY: every exported launcher has the `Launch` signature.
        let f: libloading::Symbol<Launch> =
            unsafe { self.lib.get(name.as_bytes()) }.expect("an exported launcher");
        let mut ptrs: Vec<*mut c_void> = args
            .iter_mut()
            .map(|a| match a {
                A::P(p) => p as *mut *mut c_void as *mut c_void,
                A::I(v) => v as *mut i32 as *mut c_void,
                A::F(v) => v as *mut f32 as *mut c_void,
                A::U(v) => v as *mut u64 as *mut c_void,
            })
            .collect();
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the arguments follow the kernel's signature in the contract
        // and every buffer pointer covers what the kernel touches.
        unsafe {
            f(
                grid.0 as i32,
                grid.1 as i32,
                grid.2 as i32,
                block as i32,
                ptrs.as_mut_ptr(),
            )
        };
    }
}

fn suffix(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::F16 => "f16",
        Dtype::Bf16 => "bf16",
    }
}

const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

/// xorshift values in [-scale, scale), rounded to `d` (what the device holds).
fn random(n: usize, scale: f32, seed: u64, d: Dtype) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    decode(d, &encode(d, &v))
}

fn ptr(b: &mut [u8]) -> A {
    A::P(b.as_mut_ptr() as *mut c_void)
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
    let Some(emu) = emu() else { return };
    for d in DTYPES {
        let (rows, dim) = (3, 1000);
        let x = random(rows * dim, 3.0, 1, d);
        let w = random(dim, 1.0, 2, d);
        let want = twin::rmsnorm(&x, &w, dim, 1e-5);
        let (mut xb, mut wb, mut ob) = (
            encode(d, &x),
            encode(d, &w),
            encode(d, &vec![f32::NAN; rows * dim]),
        );
        let mut args = [
            ptr(&mut xb),
            ptr(&mut wb),
            ptr(&mut ob),
            A::I(rows as i32),
            A::I(dim as i32),
            A::F(1e-5),
        ];
        emu.launch("rmsnorm", d, (rows, 1, 1), 256, &mut args);
        assert_close(&decode(d, &ob), &want, d, "rmsnorm");
        let n = 70_001;
        let (g, u) = (random(n, 4.0, 3, d), random(n, 1.0, 4, d));
        for (k, want) in [
            ("silu_gate", twin::silu_gate(&g, &u)),
            ("add", twin::add(&g, &u)),
        ] {
            let (mut gb, mut ub) = (encode(d, &g), encode(d, &u));
            let mut args = [
                ptr(&mut gb),
                ptr(&mut ub),
                A::P(std::ptr::null_mut()),
                A::U(n as u64),
            ];
            // Out aliases the first input, as the executor calls them.
            args[2] = ptr(&mut gb);
            emu.launch(k, d, (n.div_ceil(256).min(4096), 1, 1), 256, &mut args);
            assert_close(&decode(d, &gb), &want, d, k);
        }
        let r = Rows {
            rows: 5,
            width: 300,
            src_pitch: 310,
            dst_pitch: 700,
        };
        let src = random(4 * 310 + 300, 1.0, 5, d);
        let mut want = vec![0.5; 4 * 700 + 300];
        let (mut sb, mut db) = (encode(d, &src), encode(d, &want));
        twin::scatter(&src, &mut want, &r);
        let mut args = [
            ptr(&mut sb),
            ptr(&mut db),
            A::I(5),
            A::U(300),
            A::U(310),
            A::U(700),
        ];
        emu.launch("scatter", d, (2, 5, 1), 256, &mut args);
        assert_close(&decode(d, &db), &want, d, "scatter");
    }
}

#[test]
fn rope_matches_its_twin_in_both_conventions() {
    let Some(emu) = emu() else { return };
    for d in DTYPES {
        for interleaved in [false, true] {
            let r = RopeShape {
                rows: 3,
                row_stride: 2 * 64 + 6,
                n_heads: 2,
                head_dim: 64,
                theta: 1e4,
                interleaved,
            };
            let pos = [4000u32, 7, 16_383];
            let x = random(3 * r.row_stride, 1.0, 6, d);
            let mut want = x.clone();
            twin::rope(&mut want, &pos, &r);
            let mut xb = encode(d, &x);
            let mut pb: Vec<u8> = pos.iter().flat_map(|p| p.to_le_bytes()).collect();
            let mut args = [
                ptr(&mut xb),
                ptr(&mut pb),
                A::I(3),
                A::I(r.row_stride as i32),
                A::I(2),
                A::I(64),
                A::F(1e4),
                A::I(interleaved as i32),
            ];
            emu.launch("rope", d, (3, 1, 1), 128, &mut args);
            assert_close(
                &decode(d, &xb),
                &want,
                d,
                &format!("rope interleaved={interleaved}"),
            );
        }
    }
}

#[test]
fn attention_matches_its_twin_over_splits() {
    let Some(emu) = emu() else { return };
    // batch, q_len, q_pos0, n_heads, n_kv_heads, head_dim, kv_capacity
    let cases = [
        (2, 1, 600, 4, 4, 64, 700),
        (1, 6, 250, 4, 2, 32, 300),
        (1, 1, 300, 2, 1, 128, 301),
    ];
    for d in DTYPES {
        for (batch, q_len, q_pos0, n_heads, n_kv_heads, head_dim, kv_capacity) in cases {
            let a = AttnShape {
                batch,
                q_len,
                q_pos0,
                n_heads,
                n_kv_heads,
                head_dim,
                kv_capacity,
                scale: 1.0 / (head_dim as f32).sqrt(),
            };
            let q = random(batch * q_len * n_heads * head_dim, 1.0, 7, d);
            let kv = batch * kv_capacity * n_kv_heads * head_dim;
            let (k, v) = (random(kv, 2.0, 8, d), random(kv, 1.0, 9, d));
            let want = twin::attention(&q, &k, &v, &a);
            let split = 256;
            let n_splits = (q_pos0 + q_len).div_ceil(split);
            let rows = batch * q_len;
            let mut part_o = vec![f32::NAN; rows * n_heads * n_splits * head_dim];
            let mut part_ml = vec![f32::NAN; rows * n_heads * n_splits * 2];
            let (mut qb, mut kb, mut vb) = (encode(d, &q), encode(d, &k), encode(d, &v));
            let mut ob = encode(d, &vec![f32::NAN; q.len()]);
            let i = |v: usize| A::I(v as i32);
            let mut args = [
                ptr(&mut qb),
                ptr(&mut kb),
                ptr(&mut vb),
                A::P(part_o.as_mut_ptr() as *mut c_void),
                A::P(part_ml.as_mut_ptr() as *mut c_void),
                i(batch),
                i(q_len),
                i(q_pos0),
                i(n_heads),
                i(n_kv_heads),
                i(head_dim),
                i(kv_capacity),
                A::F(a.scale),
                i(split),
                i(n_splits),
            ];
            emu.launch("attn_split", d, (n_splits, n_heads, rows), 128, &mut args);
            let mut args = [
                A::P(part_o.as_mut_ptr() as *mut c_void),
                A::P(part_ml.as_mut_ptr() as *mut c_void),
                ptr(&mut ob),
                i(rows),
                i(n_heads),
                i(head_dim),
                i(n_splits),
            ];
            emu.launch("attn_combine", d, (n_heads, rows, 1), 128, &mut args);
            assert_close(&decode(d, &ob), &want, d, &format!("attention {a:?}"));
        }
    }
}

#[test]
fn embedding_argmax_and_sampling_match_their_twins() {
    let Some(emu) = emu() else { return };
    for d in DTYPES {
        let (vocab, dim) = (100, 64);
        let table = random(vocab * dim, 1.0, 10, d);
        let ids = [3u32, 99, 0, 100, 42];
        let mut tb = encode(d, &table);
        let mut ib: Vec<u8> = ids.iter().flat_map(|p| p.to_le_bytes()).collect();
        let mut ob = encode(d, &vec![f32::NAN; ids.len() * dim]);
        let mut args = [
            ptr(&mut tb),
            ptr(&mut ib),
            ptr(&mut ob),
            A::I(5),
            A::I(dim as i32),
            A::I(vocab as i32),
        ];
        emu.launch("embedding", d, (5, 1, 1), 256, &mut args);
        assert_close(
            &decode(d, &ob),
            &twin::embedding(&table, &ids, dim),
            d,
            "embedding",
        );

        let (rows, cols) = (3, 5000);
        let mut x = random(rows * cols, 6.0, 11, d);
        x[cols / 2] = 9.0;
        x[cols / 2 + 1] = 9.0; // a tie: the first wins
        let ids_of = |out: &[u8]| -> Vec<u32> {
            out.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let mut xb = encode(d, &x);
        let mut out = vec![0xffu8; rows * 4];
        let mut args = [
            ptr(&mut xb),
            ptr(&mut out),
            A::I(rows as i32),
            A::I(cols as i32),
        ];
        emu.launch("argmax", d, (rows, 1, 1), 256, &mut args);
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
            let mut work = vec![0f32; rows * cols];
            let mut out = vec![0xffu8; rows * 4];
            let mut args = [
                ptr(&mut xb),
                A::P(work.as_mut_ptr() as *mut c_void),
                ptr(&mut out),
                A::I(rows as i32),
                A::I(cols as i32),
                A::F(s.inv_temperature),
                A::I(top_k as i32),
                A::F(top_p),
                A::U(77),
                A::U(3),
            ];
            emu.launch("sample", d, (rows, 1, 1), 256, &mut args);
            let want: Vec<u32> = x
                .chunks_exact(cols)
                .enumerate()
                .map(|(r, row)| twin::sample_row(row, r, &s))
                .collect();
            assert_eq!(ids_of(&out), want, "sample {} {s:?}", d.name());
        }
    }
}
