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
fn cuda_unported_ops_are_typed_errors_and_ranges_are_checked() {
    let Some(be) = cuda(Dtype::F16) else { return };
    let x = be.alloc(16).unwrap();
    let e = be.rmsnorm(&x, &x, &x, 1, 16, 1e-5).unwrap_err();
    assert!(
        matches!(e, KernelError::Unsupported { op: "rmsnorm", .. }),
        "{e}"
    );
    assert!(matches!(
        be.argmax(&x, 1, 16),
        Err(KernelError::Unsupported { .. })
    ));
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
