//! CUDA backend checks against the CPU backend. Every test skips with a
//! printed reason when `cuda:0` cannot be opened (no driver, no GPU).

use crate::tests::{assert_close, cpu, ref_gemm, Rng};
use crate::*;

fn cuda(dtype: Dtype) -> Option<Backend> {
    match Backend::new(
        DeviceSpec::Cuda(0),
        BackendOptions {
            link_gbps: None,
            dtype: Some(dtype),
        },
    ) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipping: no CUDA driver: {e}");
            None
        }
    }
}

#[test]
fn missing_driver_is_a_typed_error() {
    // SAFETY: the probe only tries to dlopen libcuda.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    let r = Backend::new(DeviceSpec::Cuda(0), BackendOptions::default());
    if present {
        eprintln!(
            "skipping: a CUDA driver is present here ({:?})",
            r.as_ref().map(|b| b.name()).map_err(|e| e.to_string())
        );
        return;
    }
    let e = r.err().expect("no driver, yet Backend::new succeeded");
    assert!(matches!(e, KernelError::NoDriver), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("no CUDA driver found (libcuda.so.1 could not be loaded)"),
        "{msg}"
    );
    assert!(!msg.contains("--"), "a library error names no flag: {msg}");
}

#[test]
fn cuda_gemm_matches_cpu_per_dtype() {
    for (dtype, tol) in [(Dtype::F32, 1e-3), (Dtype::F16, 2e-2), (Dtype::Bf16, 6e-2)] {
        let Some(be) = cuda(dtype) else { return };
        let c = cpu();
        let mut rng = Rng::new(11);
        for &(m, n, k) in &[(1, 7, 5), (3, 64, 128), (65, 192, 576), (128, 256, 64)] {
            let x = rng.vec(m * k + 3);
            let w = rng.vec(n * k + 2);
            let (xb, wb) = (be.upload(&x).unwrap(), be.upload(&w).unwrap());
            let out = be.alloc(m * n + 1).unwrap();
            be.gemm(&xb, 3, &wb, 2, &out, 1, m, n, k).unwrap();
            let got = be.download(&out, 1, m * n).unwrap();
            let want = ref_gemm(&x[3..], &w[2..], m, n, k);
            let scale = (k as f32).sqrt();
            let want_s: Vec<f32> = want.iter().map(|v| v / scale).collect();
            let got_s: Vec<f32> = got.iter().map(|v| v / scale).collect();
            assert_close(
                &got_s,
                &want_s,
                tol,
                &format!("cuda gemm {} {m}x{n}x{k}", dtype.name()),
            );
            // And the CPU backend agrees with the same reference.
            let (cx, cw, co) = (
                c.upload(&x).unwrap(),
                c.upload(&w).unwrap(),
                c.alloc(m * n).unwrap(),
            );
            c.gemm(&cx, 3, &cw, 2, &co, 0, m, n, k).unwrap();
            assert_close(&c.download(&co, 0, m * n).unwrap(), &want, 1e-4, "cpu gemm");
        }
    }
}

#[test]
fn cuda_copies_round_trip_in_order() {
    let Some(be) = cuda(Dtype::F32) else { return };
    let n = 1 << 20;
    let data = Rng::new(12).vec(n);
    for pinned in [true, false] {
        let host = if pinned {
            be.alloc_host(n)
        } else {
            be.alloc_host_pageable(n)
        }
        .unwrap();
        assert_eq!(host.is_pinned(), pinned);
        be.host_write(&host, 0, &data).unwrap();
        let dev = be.alloc(n).unwrap();
        let dev2 = be.alloc(n).unwrap();
        let back = be.alloc_host(n).unwrap();
        let a = be.record(Stream::Copy).unwrap();
        be.copy_h2d(Stream::Copy, &host, 0, &dev, 0, n).unwrap();
        let b = be.record(Stream::Copy).unwrap();
        be.wait(Stream::Compute, &b).unwrap();
        be.copy_d2d(Stream::Compute, &dev, 0, &dev2, 0, n).unwrap();
        let c = be.record(Stream::Compute).unwrap();
        be.wait(Stream::Writeback, &c).unwrap();
        be.copy_d2h(Stream::Writeback, &dev2, 0, &back, 0, n)
            .unwrap();
        assert_eq!(be.host_read(&back, 0, n).unwrap(), data);
        assert!(be.elapsed_us(&a, &b).unwrap() > 0.0);
        be.synchronize().unwrap();
    }
}

#[test]
fn cuda_ranges_and_backends_are_checked() {
    let Some(be) = cuda(Dtype::F16) else { return };
    let x = be.alloc(16).unwrap();
    assert!(matches!(
        be.gemm(&x, 1, &x, 0, &x, 0, 2, 2, 8),
        Err(KernelError::OutOfRange { .. })
    ));
    let c = cpu();
    let cx = c.alloc(4).unwrap();
    assert!(matches!(
        be.download(&cx, 0, 4),
        Err(KernelError::WrongBackend { .. })
    ));
}

/// Every op against its twin, on the GPU (the same check `kvpr selftest` runs).
#[test]
fn cuda_ops_match_their_twins() {
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let Some(be) = cuda(dtype) else { return };
        let rows = crate::selftest::check_ops(&be, 7).unwrap();
        let bad: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
        assert!(bad.is_empty(), "{}: {bad:#?}", dtype.name());
    }
}

/// Every kernel compiles through NVRTC for every arch CI checks (`sm_80`,
/// `sm_90`), through the very function the runtime compiles with, with ptxas
/// warnings (spills, too much shared memory) as errors; every entry point the
/// backend launches is in the PTX. Needs no GPU, only NVRTC
/// (`scripts/fetch-cuda-wheels.sh`, which `make test` runs); skips with a
/// printed reason without it.
#[test]
fn every_kernel_compiles_for_every_arch() {
    // SAFETY: the probe only tries to dlopen libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        // `make test` sets it: there a missing NVRTC fails, not skips.
        assert!(
            std::env::var_os("KVPR_REQUIRE_MODEL").is_none(),
            "KVPR_REQUIRE_MODEL is set and NVRTC (libnvrtc.so.13) is not on LD_LIBRARY_PATH"
        );
        eprintln!(
            "skipping: NVRTC (libnvrtc.so.13) not found; run scripts/fetch-cuda-wheels.sh and put its lib folder on LD_LIBRARY_PATH"
        );
        return;
    }
    // A fresh cache folder: the first call compiles, the second reads it.
    let dir = std::env::temp_dir().join(format!("kvpr-kernel-cache-{}", std::process::id()));
    for arch in KERNEL_ARCHS {
        let k = compile_kernels_in(arch, Some(&dir)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!k.cached, "{arch}: compiled, not read from a cache");
        for name in kernel_names() {
            assert!(
                k.ptx.contains(&format!(".entry {name}(")),
                "{arch}: {name} missing"
            );
        }
        assert!(compile_kernels_in(arch, Some(&dir)).unwrap().cached);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A kernel that does not compile is an error carrying NVRTC's log, not a panic.
#[test]
fn a_bad_arch_is_a_typed_error() {
    for arch in ["sm_", "compute_90; rm", "90"] {
        let e = compile_kernels_in(arch, None).unwrap_err();
        assert!(matches!(e, KernelError::Compile { .. }), "{e}");
    }
}

/// The parallel conversion gives the same bytes as one value at a time, past
/// several pieces, for every dtype; and the parallel fill zeroes every byte.
#[test]
fn host_conversions_and_fills_cover_every_element() {
    let n = 2 * super::HOST_CHUNK + 12_345;
    let data = Rng::new(3).vec(n);
    for d in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let bytes = super::encode(d, &data);
        assert_eq!(bytes.len(), n * d.bytes());
        let back = super::decode(d, &bytes);
        for (i, (b, v)) in back.iter().zip(&data).enumerate() {
            let one = match d {
                Dtype::F32 => *v,
                Dtype::F16 => half::f16::from_f32(*v).to_f32(),
                Dtype::Bf16 => half::bf16::from_f32(*v).to_f32(),
            };
            assert_eq!(*b, one, "{} element {i}", d.name());
        }
        assert_eq!(
            *back.last().unwrap(),
            super::decode(d, &super::encode(d, &data[n - 1..]))[0]
        );
    }
    let len = 16 * super::HOST_CHUNK * 2 + 77;
    let mut buf = vec![0xabu8; len];
    // SAFETY: `buf` is ours and `len` long.
    unsafe { super::zero_host(buf.as_mut_ptr(), len) };
    assert!(buf.iter().all(|&b| b == 0));
}
