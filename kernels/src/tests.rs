//! CPU backend tests: every op against a straightforward scalar reference on
//! random inputs, copy/event ordering, link pacing, and range errors.

use crate::*;

pub(crate) use crate::selftest::Rng;

mod families;

pub(crate) fn cpu() -> Backend {
    Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap()
}

pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

pub(crate) fn ref_gemm(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    twin::gemm(x, w, m, n, k)
}

/// Unscaled RoPE (the table of `theta`) with host positions (uploaded to
/// an id buffer first).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope(
    be: &Backend,
    x: &DeviceBuf,
    off: usize,
    rows: usize,
    row_stride: usize,
    n_heads: usize,
    head_dim: usize,
    pos: &[u32],
    theta: f32,
    interleaved: bool,
) -> Result<()> {
    let p = be.alloc_ids(pos.len())?;
    be.write_ids(&p, 0, pos)?;
    let freqs = be.rope_freqs(&twin::default_inv_freq(theta as f64, head_dim), 1.0)?;
    let r = RopeShape {
        rows,
        row_stride,
        n_heads,
        head_dim,
        interleaved,
    };
    be.rope(x, off, &p, 0, &freqs, r)
}

#[allow(clippy::too_many_arguments)]
fn ref_rope(
    x: &mut [f32],
    off: usize,
    stride: usize,
    n_heads: usize,
    hd: usize,
    pos: &[u32],
    theta: f32,
    interleaved: bool,
) {
    let r = RopeShape {
        rows: pos.len(),
        row_stride: stride,
        n_heads,
        head_dim: hd,
        interleaved,
    };
    let inv_freq = twin::default_inv_freq(theta as f64, hd);
    twin::rope(&mut x[off..], pos, &r, &inv_freq, 1.0);
}

/// Token ids in a fresh id buffer.
pub(crate) fn ids(be: &Backend, v: &[u32]) -> IdBuf {
    let b = be.alloc_ids(v.len()).unwrap();
    be.write_ids(&b, 0, v).unwrap();
    b
}

#[test]
fn device_spec_parses() {
    assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
    assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
    assert_eq!("CUDA:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
    let e = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
    assert!(e.contains("\"tpu\"") && e.contains("cuda:N"), "{e}");
    assert!("cuda:x".parse::<DeviceSpec>().is_err());
}

#[test]
fn gemm_matches_reference() {
    let be = cpu();
    let mut rng = Rng::new(1);
    for &(m, n, k) in &[
        (1, 7, 5),
        (3, 16, 9),
        (17, 33, 64),
        (64, 96, 128),
        (5, 1, 300),
    ] {
        let x = rng.vec(m * k + 3);
        let w = rng.vec(n * k + 2);
        let xb = be.upload(&x).unwrap();
        let wb = be.upload(&w).unwrap();
        let out = be.alloc(m * n + 4).unwrap();
        be.gemm(&xb, 3, &wb, 2, &out, 4, m, n, k).unwrap();
        let got = be.download(&out, 4, m * n).unwrap();
        assert_close(
            &got,
            &ref_gemm(&x[3..], &w[2..], m, n, k),
            1e-4,
            &format!("gemm {m}x{n}x{k}"),
        );
        assert_eq!(
            be.download(&out, 0, 4).unwrap(),
            vec![0.0; 4],
            "gemm wrote before out_off"
        );
    }
}

#[test]
fn rmsnorm_matches_reference_and_may_alias() {
    let be = cpu();
    let mut rng = Rng::new(2);
    for &(rows, dim) in &[(1, 7), (3, 64), (5, 576)] {
        let x = rng.vec(rows * dim);
        let g = rng.vec(dim);
        let (xb, gb, out) = (
            be.upload(&x).unwrap(),
            be.upload(&g).unwrap(),
            be.alloc(rows * dim).unwrap(),
        );
        be.rmsnorm(&xb, &gb, &out, rows, dim, 1e-5).unwrap();
        let want = twin::rmsnorm(&x, &g, dim, 1e-5);
        assert_close(
            &be.download(&out, 0, rows * dim).unwrap(),
            &want,
            1e-5,
            "rmsnorm",
        );
        be.rmsnorm(&xb, &gb, &xb, rows, dim, 1e-5).unwrap();
        assert_close(
            &be.download(&xb, 0, rows * dim).unwrap(),
            &want,
            1e-5,
            "rmsnorm in place",
        );
    }
}

#[test]
fn rope_matches_reference_both_conventions() {
    let be = cpu();
    let mut rng = Rng::new(3);
    for interleaved in [false, true] {
        for &(rows, n_heads, hd, extra) in &[(1, 1, 2, 0), (3, 2, 8, 5), (4, 3, 64, 16)] {
            let stride = n_heads * hd + extra;
            let off = 7;
            let x = rng.vec(off + rows * stride);
            let pos: Vec<u32> = (0..rows as u32).map(|r| r * 37 + 3).collect();
            let xb = be.upload(&x).unwrap();
            rope(
                &be,
                &xb,
                off,
                rows,
                stride,
                n_heads,
                hd,
                &pos,
                10000.0,
                interleaved,
            )
            .unwrap();
            let mut want = x.clone();
            ref_rope(
                &mut want,
                off,
                stride,
                n_heads,
                hd,
                &pos,
                10000.0,
                interleaved,
            );
            let got = be.download(&xb, 0, x.len()).unwrap();
            assert_close(
                &got,
                &want,
                1e-5,
                &format!("rope interleaved={interleaved}"),
            );
        }
    }
    // The two conventions differ on the same input.
    let x = Rng::new(4).vec(8);
    let (a, b) = (be.upload(&x).unwrap(), be.upload(&x).unwrap());
    rope(&be, &a, 0, 1, 8, 1, 8, &[5], 10000.0, true).unwrap();
    rope(&be, &b, 0, 1, 8, 1, 8, &[5], 10000.0, false).unwrap();
    assert_ne!(
        be.download(&a, 0, 8).unwrap(),
        be.download(&b, 0, 8).unwrap()
    );
}

#[test]
fn attention_matches_reference_mha_gqa_prefill_decode() {
    let be = cpu();
    let mut rng = Rng::new(5);
    let cases = [
        // batch, q_len, q_pos0, n_heads, n_kv_heads, head_dim, kv_capacity
        (1, 1, 0, 2, 2, 4, 4),    // decode at position 0
        (2, 1, 9, 4, 4, 16, 12),  // MHA decode
        (2, 5, 0, 4, 4, 8, 8),    // MHA prefill, causal
        (1, 6, 3, 8, 2, 16, 16),  // GQA, q_len > 1 after a cached prefix
        (3, 1, 20, 9, 3, 64, 32), // GQA decode, SmolLM2-like heads
    ];
    for &(batch, q_len, q_pos0, n_heads, n_kv_heads, head_dim, kv_capacity) in &cases {
        let a = AttnShape {
            batch,
            q_len,
            q_pos0,
            n_heads,
            n_kv_heads,
            head_dim,
            kv_capacity,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: 0,
        };
        let q = rng.vec(batch * q_len * n_heads * head_dim);
        let k: Vec<f32> = rng
            .vec(batch * kv_capacity * n_kv_heads * head_dim)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let v = rng.vec(k.len());
        let (qb, kb, vb) = (
            be.upload(&q).unwrap(),
            be.upload(&k).unwrap(),
            be.upload(&v).unwrap(),
        );
        let out = be.alloc(q.len()).unwrap();
        be.attention(&qb, &kb, &vb, &out, a).unwrap();
        let got = be.download(&out, 0, q.len()).unwrap();
        assert_close(
            &got,
            &twin::attention(&q, &k, &v, &a),
            1e-5,
            &format!("attention {a:?}"),
        );
    }
    // Keys beyond the causal limit do not matter.
    let a = AttnShape {
        batch: 1,
        q_len: 2,
        q_pos0: 1,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 4,
        kv_capacity: 6,
        scale: 0.5,
        window: 0,
    };
    let q = rng.vec(8);
    let mut k = rng.vec(24);
    let v = rng.vec(24);
    let run = |k: &[f32]| {
        let (qb, kb, vb) = (
            be.upload(&q).unwrap(),
            be.upload(k).unwrap(),
            be.upload(&v).unwrap(),
        );
        let out = be.alloc(8).unwrap();
        be.attention(&qb, &kb, &vb, &out, a).unwrap();
        be.download(&out, 0, 8).unwrap()
    };
    let before = run(&k);
    k[3 * 4..].iter_mut().for_each(|x| *x = 100.0);
    assert_eq!(before, run(&k));
    // Too short a cache is an error.
    let bad = AttnShape {
        kv_capacity: 2,
        ..a
    };
    let (qb, kb, out) = (
        be.upload(&q).unwrap(),
        be.upload(&k).unwrap(),
        be.alloc(8).unwrap(),
    );
    let e = be
        .attention(&qb, &kb, &kb, &out, bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attention") && e.contains("cache holds 2"),
        "{e}"
    );
}

#[test]
fn elementwise_ops_match_reference() {
    let be = cpu();
    let mut rng = Rng::new(6);
    for &len in &[1usize, 17, 1536] {
        let g = rng.vec(len);
        let u = rng.vec(len);
        let (gb, ub, out) = (
            be.upload(&g).unwrap(),
            be.upload(&u).unwrap(),
            be.alloc(len).unwrap(),
        );
        be.silu_gate(&gb, &ub, &out, len).unwrap();
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        assert_close(
            &be.download(&out, 0, len).unwrap(),
            &want,
            1e-6,
            "silu_gate",
        );
        be.silu_gate(&gb, &ub, &gb, len).unwrap();
        assert_close(
            &be.download(&gb, 0, len).unwrap(),
            &want,
            1e-6,
            "silu_gate in place",
        );

        let want: Vec<f32> = want.iter().zip(&u).map(|(a, b)| a + b).collect();
        be.add(&gb, &ub, &out, len).unwrap();
        assert_close(&be.download(&out, 0, len).unwrap(), &want, 1e-6, "add");
        be.add(&gb, &ub, &gb, len).unwrap();
        assert_close(
            &be.download(&gb, 0, len).unwrap(),
            &want,
            1e-6,
            "add in place",
        );
        be.add(&ub, &gb, &gb, len).unwrap();
        let want2: Vec<f32> = want.iter().zip(&u).map(|(a, b)| a + b).collect();
        assert_close(
            &be.download(&gb, 0, len).unwrap(),
            &want2,
            1e-6,
            "add aliasing b",
        );
    }
}

#[test]
fn embedding_and_argmax() {
    let be = cpu();
    let mut rng = Rng::new(7);
    let (vocab, dim) = (11, 6);
    let table = rng.vec(vocab * dim);
    let tb = be.upload(&table).unwrap();
    let id = [3u32, 0, 10, 3, 11];
    let out = be.alloc(id.len() * dim).unwrap();
    be.embedding(&tb, &ids(&be, &id), 0, &out, id.len(), dim)
        .unwrap();
    let got = be.download(&out, 0, id.len() * dim).unwrap();
    // An id outside the vocabulary gives zeros, on every backend.
    assert_eq!(&got[4 * dim..], &[0.0; 6]);
    for (i, &id) in id.iter().take(4).enumerate() {
        assert_eq!(
            &got[i * dim..(i + 1) * dim],
            &table[id as usize * dim..][..dim]
        );
    }

    let (rows, cols) = (4, 50);
    let mut x = rng.vec(rows * cols);
    x[7] = 5.0;
    x[cols + 49] = 5.0;
    x[2 * cols] = 5.0;
    x[2 * cols + 1] = 5.0; // tie: first wins
    let xb = be.upload(&x).unwrap();
    let want: Vec<u32> = x
        .chunks(cols)
        .map(|r| {
            let mut b = 0;
            for (i, v) in r.iter().enumerate() {
                if *v > r[b] {
                    b = i;
                }
            }
            b as u32
        })
        .collect();
    let o = be.alloc_ids(rows + 1).unwrap();
    be.argmax(&xb, rows, cols, &o, 1).unwrap();
    let got = be.read_ids(&o, 1, rows).unwrap();
    assert_eq!(got, want);
    assert_eq!(&got[..3], &[7, 49, 0]);
}

#[test]
fn copy_then_waiting_compute_sees_the_data() {
    let be = Backend::new(
        DeviceSpec::Cpu,
        BackendOptions {
            link_gbps: Some(0.5),
            dtype: None,
        },
    )
    .unwrap();
    let n = 1 << 18; // 1 MiB: 2 ms at 0.5 GB/s
    let data = Rng::new(8).vec(n);
    let host = be.alloc_host(n).unwrap();
    be.host_write(&host, 0, &data).unwrap();
    let dev = be.alloc(n).unwrap();
    let sum = be.alloc(n).unwrap();
    be.copy_h2d(Stream::Copy, &host, 0, &dev, 0, n).unwrap();
    let ev = be.record(Stream::Copy).unwrap();
    be.wait(Stream::Compute, &ev).unwrap();
    be.add(&dev, &dev, &sum, n).unwrap();
    let got = be.download(&sum, 0, 4).unwrap();
    assert_eq!(got, data[..4].iter().map(|v| v + v).collect::<Vec<_>>());

    // Writeback waits on a compute event, then the copy stream waits on the writeback.
    let back = be.alloc_host(n).unwrap();
    let ev = be.record(Stream::Compute).unwrap();
    be.wait(Stream::Writeback, &ev).unwrap();
    be.copy_d2h(Stream::Writeback, &sum, 0, &back, 0, n)
        .unwrap();
    let wb = be.record(Stream::Writeback).unwrap();
    be.wait(Stream::Copy, &wb).unwrap();
    let dev2 = be.alloc(n).unwrap();
    be.copy_h2d(Stream::Copy, &back, 0, &dev2, 0, n).unwrap();
    let done = be.record(Stream::Copy).unwrap();
    be.wait(Stream::Compute, &done).unwrap();
    assert_eq!(
        be.download(&dev2, n - 2, 2).unwrap(),
        be.download(&sum, n - 2, 2).unwrap()
    );
    assert!(
        be.elapsed_us(&wb, &done).unwrap() > 1500.0,
        "the second copy was not paced"
    );
    be.synchronize().unwrap();
}

fn paced(gbps: f64) -> Backend {
    Backend::new(
        DeviceSpec::Cpu,
        BackendOptions {
            link_gbps: Some(gbps),
            dtype: None,
        },
    )
    .unwrap()
}

/// Pacing measured on the backend's own clock (the stream's events), not the
/// test's: the stream clock follows deadlines, so a busy machine that wakes
/// the worker late does not move it. A first copy keeps the stream busy while
/// the test issues the measured one, so the test thread's own delays do not
/// count either; the window (105 ms) dwarfs the memcpy (well under 1 ms), so
/// the stream time is the window even when a noisy neighbour slows the
/// memcpy many times over.
#[test]
fn paced_copy_takes_its_time_on_the_stream_clock() {
    let be = paced(0.01);
    let n = 1 << 18; // 1 MiB of f32: 104.9 ms at 0.01 GB/s
    let host = be.alloc_host(n).unwrap();
    let dev = be.alloc(n).unwrap();
    let want_us = (n * 4) as f64 / 0.01e9 * 1e6;
    be.copy_h2d(Stream::Copy, &host, 0, &dev, 0, n).unwrap();
    let a = be.record(Stream::Copy).unwrap();
    be.copy_h2d(Stream::Copy, &host, 0, &dev, 0, n).unwrap();
    let b = be.record(Stream::Copy).unwrap();
    be.synchronize().unwrap();
    let us = be.elapsed_us(&a, &b).unwrap();
    // At least bytes / rate by construction: a lower bound, which a loaded
    // machine only lengthens (issue 19: no upper bound on time in a test).
    assert!(
        us >= 0.999 * want_us,
        "1 MiB at 0.01 GB/s took {us} us on the stream clock, want {want_us}"
    );
}

/// Copy and writeback are paced independently (full duplex): on the
/// backend's clock, the two directions' intervals intersect. Both streams
/// first wait for one gate event, so both start at the same stream time
/// however late the test thread issues the copies (within the gate's 33 ms).
#[test]
fn paced_directions_overlap_on_the_stream_clock() {
    let be = paced(1.0);
    let n = 8 << 20; // 32 MiB each way: 33.5 ms at 1 GB/s
    let host = be.alloc_host(n).unwrap();
    let back = be.alloc_host(n).unwrap();
    let dev = be.alloc(2 * n).unwrap();
    // The gate: 33.5 ms on the copy stream while the test issues the rest.
    be.copy_h2d(Stream::Copy, &host, 0, &dev, 0, n).unwrap();
    let gate = be.record(Stream::Copy).unwrap();
    be.wait(Stream::Writeback, &gate).unwrap();
    let c0 = be.record(Stream::Copy).unwrap();
    be.copy_h2d(Stream::Copy, &host, 0, &dev, 0, n).unwrap();
    let c1 = be.record(Stream::Copy).unwrap();
    let w0 = be.record(Stream::Writeback).unwrap();
    be.copy_d2h(Stream::Writeback, &dev, n, &back, 0, n)
        .unwrap();
    let w1 = be.record(Stream::Writeback).unwrap();
    be.synchronize().unwrap();
    let t = |e: &Event| be.elapsed_us(&gate, e).unwrap();
    let (copy, wb) = ((t(&c0), t(&c1)), (t(&w0), t(&w1)));
    assert!(
        copy.0 < wb.1 && wb.0 < copy.1,
        "the two directions did not overlap on the stream clock: copy {copy:?} us, writeback {wb:?} us"
    );
}

/// The paced copy takes its whole window on the stream clock, and
/// `host_read` waits for copies in flight (the contract both backends keep;
/// issue 19: the CPU backend read the old data): what it reads is the
/// copy's.
#[test]
fn paced_copy_takes_its_window_and_host_read_waits_for_it() {
    let be = paced(LINK_GBPS_MIN);
    let n = 1 << 18; // 1 MiB: about a second at 1 MB/s
    let dev = be.upload(&vec![7.0; n]).unwrap();
    let host = be.alloc_host(n).unwrap();
    let start = be.record(Stream::Writeback).unwrap();
    be.copy_d2h(Stream::Writeback, &dev, 0, &host, 0, n)
        .unwrap();
    let done = be.record(Stream::Writeback).unwrap();
    assert!(be.host_read(&host, 0, n).unwrap().iter().all(|&v| v == 7.0));
    // A lower bound on the stream clock: load only lengthens it.
    let window_us = (4 * n) as f64 / (LINK_GBPS_MIN * 1e3);
    let us = be.elapsed_us(&start, &done).unwrap();
    assert!(
        us >= 0.99 * window_us,
        "{us} us for a {window_us} us window"
    );
    // host_write waits too: it lands after a copy from the same buffer.
    let back = be.alloc(n).unwrap();
    be.copy_h2d(Stream::Copy, &host, 0, &back, 0, n).unwrap();
    be.host_write(&host, 0, &vec![1.0; n]).unwrap();
    assert!(be.download(&back, 0, n).unwrap().iter().all(|&v| v == 7.0));
}

/// Runs `f` on a thread and gives its result, or fails the test if it has
/// not returned after a minute: a hang detector, not a timing assertion.
fn no_hang<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[test]
fn a_panicked_worker_fails_its_events_instead_of_hanging() {
    for stream in [Stream::Copy, Stream::Writeback] {
        let e = no_hang("waiting on a panicked stream", move || {
            let be = paced(1.0);
            let x = be.alloc(16).unwrap();
            let h = be.alloc_host(16).unwrap();
            be.inject_panic(stream, "injected for a test").unwrap();
            // Work and an event queued behind the panic.
            match stream {
                Stream::Copy => be.copy_h2d(stream, &h, 0, &x, 0, 16),
                _ => be.copy_d2h(stream, &x, 0, &h, 0, 16),
            }
            .ok();
            let ev = be.record(stream);
            let waited = ev.map(|ev| be.wait(Stream::Compute, &ev));
            let synced = be.synchronize();
            let recorded = be.record(stream).map(|_| ());
            (waited.and_then(|r| r), synced, recorded)
        });
        for r in [e.0, e.1, e.2] {
            let err = r.unwrap_err();
            assert!(
                matches!(err, KernelError::StreamFailed { stream: s, .. } if s == stream.name()),
                "{err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(stream.name()) && msg.contains("injected for a test"),
                "{msg}"
            );
        }
    }
}

#[test]
fn a_stream_waiting_on_a_failed_stream_fails_too() {
    let (waited, synced) = no_hang("a chain of waits on a panicked stream", || {
        let be = paced(1.0);
        be.inject_panic(Stream::Writeback, "writeback down")
            .unwrap();
        let wb = be.record(Stream::Writeback);
        let r = wb.and_then(|wb| be.wait(Stream::Copy, &wb));
        let ev = be.record(Stream::Copy);
        let waited = r.and(ev).and_then(|ev| be.wait(Stream::Compute, &ev));
        (waited, be.synchronize())
    });
    let e = waited.unwrap_err().to_string();
    assert!(e.contains("writeback down"), "{e}");
    assert!(synced.is_err());
}

#[test]
fn elapsed_on_a_failed_stream_is_an_error() {
    let r = no_hang("elapsed_us on a panicked stream", || {
        let be = paced(1.0);
        let a = be.record(Stream::Copy).unwrap();
        be.inject_panic(Stream::Copy, "boom").unwrap();
        let b = be.record(Stream::Copy);
        b.and_then(|b| be.elapsed_us(&a, &b))
    });
    assert!(r.unwrap_err().to_string().contains("boom"));
}

#[test]
fn out_of_range_is_a_typed_error() {
    let be = cpu();
    let x = be.alloc(10).unwrap();
    let w = be.alloc(12).unwrap();
    let out = be.alloc(8).unwrap();
    let e = be.gemm(&x, 1, &w, 0, &out, 0, 2, 4, 5).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::OutOfRange {
                op: "gemm",
                what: "x",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1..11"), "{e}");
    let e = be.gemm(&x, 0, &w, 0, &out, 0, 3, 4, 3).unwrap_err();
    assert!(
        matches!(e, KernelError::OutOfRange { what: "out", .. }),
        "{e}"
    );
    let h = be.alloc_host(4).unwrap();
    assert!(be.copy_h2d(Stream::Copy, &h, 2, &x, 0, 3).is_err());
    assert!(be.copy_d2h(Stream::Writeback, &x, 8, &h, 0, 3).is_err());
    assert!(be.copy_d2d(Stream::Copy, &x, 0, &out, 6, 3).is_err());
    assert!(be.download(&x, 9, 2).is_err());
    assert!(be.host_write(&h, 3, &[1.0, 2.0]).is_err());
    assert!(be.host_read(&h, usize::MAX, 2).is_err());
    assert!(rope(&be, &x, 0, 2, 5, 1, 4, &[0, 1], 1e4, false).is_ok());
    assert!(rope(&be, &x, 0, 2, 7, 1, 4, &[0, 1], 1e4, false).is_err());
    assert!(rope(&be, &x, 0, 2, 5, 1, 3, &[0, 1], 1e4, false).is_err());
    assert!(rope(&be, &x, 0, 2, 5, 1, 4, &[0], 1e4, false).is_err());
    assert!(be.rmsnorm(&x, &w, &out, 2, 5, 1e-5).is_err());
    assert!(be.argmax(&x, 3, 4, &be.alloc_ids(3).unwrap(), 0).is_err());
    assert!(be.argmax(&x, 2, 4, &be.alloc_ids(3).unwrap(), 2).is_err());
    assert!(be.silu_gate(&x, &w, &out, 9).is_err());
    // Nothing was left broken.
    be.synchronize().unwrap();
}

#[test]
fn d2d_copies_within_and_across_buffers() {
    let be = cpu();
    let x = be.upload(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let y = be.alloc(3).unwrap();
    be.copy_d2d(Stream::Copy, &x, 1, &y, 0, 3).unwrap();
    // The compute stream overwrites what the copy stream reads: order them.
    let read = be.record(Stream::Copy).unwrap();
    be.wait(Stream::Compute, &read).unwrap();
    be.copy_d2d(Stream::Compute, &x, 0, &x, 2, 3).unwrap();
    assert_eq!(be.download(&y, 0, 3).unwrap(), vec![2.0, 3.0, 4.0]);
    assert_eq!(
        be.download(&x, 0, 5).unwrap(),
        vec![1.0, 2.0, 1.0, 2.0, 3.0]
    );
}

#[test]
fn cpu_refuses_half_dtypes_and_bad_pacing() {
    let e = Backend::new(
        DeviceSpec::Cpu,
        BackendOptions {
            link_gbps: None,
            dtype: Some(Dtype::F16),
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, KernelError::Unsupported { .. }), "{e}");
}

/// Reliability finding 1: a link of 1e-30 GB/s panicked a worker converting
/// the pacing time to a `Duration`, and the caller waited forever.
#[test]
fn backend_refuses_link_rates_it_cannot_pace() {
    for g in [1e-30, 1e-15, 0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
        let e = Backend::new(
            DeviceSpec::Cpu,
            BackendOptions {
                link_gbps: Some(g),
                dtype: None,
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{g} GB/s was accepted"));
        assert!(matches!(e, KernelError::BadLinkRate { .. }), "{e}");
        assert!(e.to_string().contains(" GB/s cannot be paced"), "{e}");
    }
    for g in [LINK_GBPS_MIN, 1.0, LINK_GBPS_MAX] {
        assert_eq!(paced(g).link_gbps(), Some(g));
    }
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Backend>();
    check::<DeviceBuf>();
    check::<HostBuf>();
    check::<Event>();
    check::<RopeFreqs>();
    check::<KernelError>();
}

/// The CPU backend against every twin, as `kvpr selftest --device cpu` runs it.
#[test]
fn cpu_ops_match_their_twins() {
    let rows = crate::selftest::check_ops(&cpu(), 3).unwrap();
    assert!(rows.len() > 40, "{}", rows.len());
    let bad: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn top_k_1_is_greedy_on_the_backend_and_its_twin() {
    let s = SampleArgs {
        inv_temperature: 1.0,
        top_k: 1,
        top_p: 1.0,
        seed: 0,
        step: 0,
    };
    let row = [0.1, 0.7, 0.3, 0.69];
    // top_k = 1 is greedy.
    assert_eq!(twin::sample_row(&row, 0, &s), 1);
    let be = cpu();
    let x = be.upload(&row).unwrap();
    let o = be.alloc_ids(1).unwrap();
    be.sample(&x, 1, 4, &o, 0, s).unwrap();
    assert_eq!(be.read_ids(&o, 0, 1).unwrap(), vec![1]);
}

#[test]
fn sampling_stays_in_the_top_k_and_the_nucleus_and_draws_every_candidate() {
    let row: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
    let top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
    let mut seen = std::collections::HashSet::new();
    for step in 0..400 {
        let s = SampleArgs {
            inv_temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            seed: 9,
            step,
        };
        let id = twin::sample_row(&row, 0, &s);
        assert!(top5.contains(&id), "{id} outside the top 5");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 5, "every candidate comes up: {seen:?}");
    // A tiny nucleus keeps only the most likely token.
    let s = SampleArgs {
        inv_temperature: 1.0,
        top_k: 0,
        top_p: 1e-6,
        seed: 1,
        step: 3,
    };
    assert_eq!(twin::sample_row(&row, 0, &s), order[0] as u32);
    // The same seed and step repeat; another seed draws differently somewhere.
    let draw = |seed| {
        (0..64)
            .map(|step| {
                let s = SampleArgs {
                    inv_temperature: 1.0,
                    top_k: 0,
                    top_p: 1.0,
                    seed,
                    step,
                };
                twin::sample_row(&row, 0, &s)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(4), draw(4));
    assert_ne!(draw(4), draw(5));
}

#[test]
fn upload_vec_holds_what_upload_holds() {
    let be = Backend::new(DeviceSpec::Cpu, BackendOptions::default()).unwrap();
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
    let a = be.upload(&data).unwrap();
    let b = be.upload_vec(data.clone()).unwrap();
    assert_eq!(b.len(), data.len());
    assert_eq!(
        be.download(&a, 0, 1000).unwrap(),
        be.download(&b, 0, 1000).unwrap()
    );
}
