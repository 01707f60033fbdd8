//! The ragged ops on the CPU backend: each row of a ragged attention is the
//! batch-1 causal attention the engine ran per sequence before, the scatter
//! lands every row at its index and nothing else, and bad calls are typed
//! errors that name the op.

use crate::tests::{assert_close, cpu, ids, Rng};
use crate::*;

fn shape(batch: usize, n_heads: usize, n_kv_heads: usize, hd: usize, cap: usize) -> AttnShape {
    AttnShape {
        batch,
        q_len: 1,
        q_pos0: 0,
        n_heads,
        n_kv_heads,
        head_dim: hd,
        kv_capacity: cap,
        scale: 1.0 / (hd as f32).sqrt(),
        window: 0,
    }
}

#[test]
fn each_ragged_row_equals_its_sequence_attended_alone() {
    let be = cpu();
    let mut rng = Rng::new(21);
    for (n_heads, n_kv_heads) in [(4, 4), (8, 2)] {
        let (hd, cap) = (16, 40);
        // 1, the whole cache, none, some, and past the cache (clamped).
        let lens = [1u32, 40, 0, 17, 1000];
        let a = shape(lens.len(), n_heads, n_kv_heads, hd, cap);
        let (qd, kvd) = (n_heads * hd, n_kv_heads * hd);
        let q = rng.vec(lens.len() * qd);
        let (k, v) = (
            rng.vec(lens.len() * cap * kvd),
            rng.vec(lens.len() * cap * kvd),
        );
        let (qb, kb, vb) = (
            be.upload(&q).unwrap(),
            be.upload(&k).unwrap(),
            be.upload(&v).unwrap(),
        );
        let out = be.upload(&vec![f32::NAN; q.len()]).unwrap();
        // The lengths at an offset in a longer id buffer.
        let lb = ids(&be, &[7, 7, 1, 40, 0, 17, 1000]);
        be.attention_ragged(&qb, &kb, &vb, &out, a, &lb, 2).unwrap();
        let got = be.download(&out, 0, q.len()).unwrap();
        let what = format!("heads {n_heads}/{n_kv_heads}");
        assert_close(
            &got,
            &twin::attention_ragged(&q, &k, &v, &a, &lens),
            1e-5,
            &what,
        );
        for (b, &len) in lens.iter().enumerate() {
            let row = &got[b * qd..][..qd];
            let len = (len as usize).min(cap);
            if len == 0 {
                assert!(row.iter().all(|&x| x == 0.0), "{what}: row {b} of no key");
                continue;
            }
            // What the engine ran per sequence: batch 1, its last position.
            let one = AttnShape {
                batch: 1,
                q_pos0: len - 1,
                ..a
            };
            let kv = b * cap * kvd..(b + 1) * cap * kvd;
            let q1 = be.upload(&q[b * qd..][..qd]).unwrap();
            let k1 = be.upload(&k[kv.clone()]).unwrap();
            let v1 = be.upload(&v[kv]).unwrap();
            let o1 = be.alloc(qd).unwrap();
            be.attention(&q1, &k1, &v1, &o1, one).unwrap();
            let want = be.download(&o1, 0, qd).unwrap();
            assert_close(row, &want, 1e-6, &format!("{what}: row {b} (len {len})"));
        }
    }
}

#[test]
fn ragged_attention_may_write_over_q() {
    let be = cpu();
    let mut rng = Rng::new(22);
    let a = shape(2, 2, 1, 8, 6);
    let q = rng.vec(2 * 16);
    let (k, v) = (rng.vec(2 * 6 * 8), rng.vec(2 * 6 * 8));
    let (qb, kb, vb) = (
        be.upload(&q).unwrap(),
        be.upload(&k).unwrap(),
        be.upload(&v).unwrap(),
    );
    let lb = ids(&be, &[3, 6]);
    be.attention_ragged(&qb, &kb, &vb, &qb, a, &lb, 0).unwrap();
    let want = twin::attention_ragged(&q, &k, &v, &a, &[3, 6]);
    assert_close(
        &be.download(&qb, 0, q.len()).unwrap(),
        &want,
        1e-5,
        "in place",
    );
}

#[test]
fn ragged_attention_refuses_bad_shapes_ranges_and_aliasing() {
    let be = cpu();
    let a = shape(2, 4, 2, 8, 10);
    let (q, kv) = (be.alloc(2 * 32).unwrap(), 2 * 10 * 16);
    let (k, v) = (be.alloc(kv).unwrap(), be.alloc(kv).unwrap());
    let out = be.alloc(2 * 32).unwrap();
    let lens = ids(&be, &[3, 10, 5]);
    // q_pos0 is ignored, even far past the cache.
    let far = AttnShape { q_pos0: 99, ..a };
    be.attention_ragged(&q, &k, &v, &out, far, &lens, 1)
        .unwrap();

    let e = be
        .attention_ragged(&q, &k, &v, &out, AttnShape { q_len: 2, ..a }, &lens, 0)
        .unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::Shape {
                op: "attention_ragged",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("q_len must be 1"), "{e}");
    let e = be
        .attention_ragged(&q, &k, &v, &out, AttnShape { q_len: 0, ..a }, &lens, 0)
        .unwrap_err();
    assert!(matches!(e, KernelError::Shape { .. }), "{e}");
    let gqa = AttnShape { n_kv_heads: 3, ..a };
    let e = be
        .attention_ragged(&q, &k, &v, &out, gqa, &lens, 0)
        .unwrap_err();
    assert!(e.to_string().contains("multiple of n_kv_heads"), "{e}");

    let e = be
        .attention_ragged(&q, &k, &v, &out, a, &lens, 2)
        .unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::OutOfRange {
                op: "attention_ragged",
                what: "lens",
                off: 2,
                end: 4,
                buf_len: 3,
                ..
            }
        ),
        "{e}"
    );
    let big = AttnShape { batch: 3, ..a };
    for what in ["q", "k", "v", "out"] {
        let e = match what {
            "q" => be.attention_ragged(&q, &k, &v, &q, big, &lens, 0),
            "k" => be.attention_ragged(&be.alloc(96).unwrap(), &k, &v, &out, big, &lens, 0),
            "v" => {
                let k3 = be.alloc(3 * 160).unwrap();
                be.attention_ragged(&be.alloc(96).unwrap(), &k3, &v, &out, big, &lens, 0)
            }
            _ => {
                let (k3, v3) = (be.alloc(3 * 160).unwrap(), be.alloc(3 * 160).unwrap());
                be.attention_ragged(&be.alloc(96).unwrap(), &k3, &v3, &out, big, &lens, 0)
            }
        }
        .unwrap_err();
        assert!(
            matches!(e, KernelError::OutOfRange { what: w, .. } if w == what),
            "{what}: {e}"
        );
    }
    for alias in [&k, &v] {
        let e = be
            .attention_ragged(&q, &k, &v, alias, a, &lens, 0)
            .unwrap_err();
        assert!(e.to_string().contains("out must not alias k or v"), "{e}");
    }
    be.synchronize().unwrap();
}

#[test]
fn scatter_rows_lands_each_row_at_its_index_and_skips_the_outside() {
    let be = cpu();
    let width = 5;
    let src: Vec<f32> = (0..40).map(|i| i as f32).collect();
    let sb = be.upload(&src).unwrap();
    let dst_rows = 6;
    let base: Vec<f32> = vec![-1.0; dst_rows * width + 3];
    let db = be.upload(&base).unwrap();
    // A permutation of some rows, one index just past dst's last whole row
    // (its tail of 3 elements must stay), one far past it.
    let idx = [4u32, 0, 6, 2, u32::MAX, 5, 1];
    let ib = ids(
        &be,
        &[9, 9, 9].iter().chain(&idx).copied().collect::<Vec<u32>>(),
    );
    be.scatter_rows(&sb, 3, &db, &ib, 3, idx.len(), width)
        .unwrap();
    let got = be.download(&db, 0, base.len()).unwrap();
    let mut want = base.clone();
    twin::scatter_rows(&src[3..], &mut want, &idx, width);
    assert_eq!(got, want);
    // Row 3 was not an index: untouched. Row 4 holds source row 0.
    assert!(got[3 * width..4 * width].iter().all(|&x| x == -1.0));
    assert_eq!(&got[4 * width..5 * width], &src[3..3 + width]);
    assert!(got[dst_rows * width..].iter().all(|&x| x == -1.0));
}

#[test]
fn scatter_rows_refuses_aliasing_and_bad_ranges() {
    let be = cpu();
    let (a, b) = (be.alloc(20).unwrap(), be.alloc(20).unwrap());
    let idx = ids(&be, &[0, 1, 2]);
    let e = be.scatter_rows(&a, 0, &a, &idx, 0, 2, 4).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::Shape {
                op: "scatter_rows",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("different buffers"), "{e}");
    let e = be.scatter_rows(&a, 5, &b, &idx, 0, 4, 4).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::OutOfRange {
                what: "source",
                off: 5,
                end: 21,
                ..
            }
        ),
        "{e}"
    );
    let e = be.scatter_rows(&a, 0, &b, &idx, 2, 2, 4).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::OutOfRange {
                what: "indices",
                ..
            }
        ),
        "{e}"
    );
    let e = be
        .scatter_rows(&a, 0, &b, &idx, 0, usize::MAX, 4)
        .unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    // Nothing to move is no error, aliasing or not.
    be.scatter_rows(&a, 0, &a, &idx, 3, 0, 4).unwrap();
    be.synchronize().unwrap();
}
