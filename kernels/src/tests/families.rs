//! The ops that the Llama-family variants need, on the CPU backend against
//! their twins: RoPE from a frequency table (llama3, linear, YaRN: scaled
//! tables and an attention factor), the bias add (Qwen2), RMSNorm inside a
//! larger buffer (Qwen3's per-head q/k norm) and sliding-window attention
//! (Mistral); and the typed errors of their bad calls.

use crate::tests::{assert_close, cpu, ids, Rng};
use crate::*;

fn rope_shape(
    rows: usize,
    n_heads: usize,
    head_dim: usize,
    extra: usize,
    interleaved: bool,
) -> RopeShape {
    RopeShape {
        rows,
        row_stride: n_heads * head_dim + extra,
        n_heads,
        head_dim,
        interleaved,
    }
}

#[test]
fn default_inv_freq_is_the_unscaled_table() {
    let f = twin::default_inv_freq(10_000.0, 8);
    assert_eq!(f, vec![1.0, 0.1, 0.01, 0.001]);
    let f = twin::default_inv_freq(500_000.0, 128);
    assert_eq!(f.len(), 64);
    for (i, v) in f.iter().enumerate() {
        let want = (1.0 / 500_000f64.powf(2.0 * i as f64 / 128.0)) as f32;
        assert_eq!(*v, want, "frequency {i}");
    }
    assert!(twin::default_inv_freq(1e4, 0).is_empty());
}

/// A llama3-like table (some frequencies divided by 8, some interpolated)
/// with an attention factor, both conventions, odd strides and offsets.
#[test]
fn rope_with_a_scaled_table_and_factor_matches_its_twin() {
    let be = cpu();
    let mut rng = Rng::new(31);
    for (hd, factor) in [(128, 1.2f32), (64, 0.8), (2, 1.0)] {
        let inv_freq = selftest::llama3_like_inv_freq(500_000.0, hd);
        let plain = twin::default_inv_freq(500_000.0, hd);
        if hd == 128 {
            // The table is non-trivial: its lowest frequency is divided by 8.
            assert_eq!(inv_freq[63], plain[63] / 8.0);
            assert_eq!(inv_freq[0], plain[0]);
        }
        let freqs = be.rope_freqs(&inv_freq, factor).unwrap();
        assert_eq!((freqs.len(), freqs.attention_factor()), (hd / 2, factor));
        for interleaved in [false, true] {
            for (rows, heads, extra, off) in [(1, 1, 0, 0), (3, 5, 7, 11), (6, 2, 1, 3)] {
                let r = rope_shape(rows, heads, hd, extra, interleaved);
                let x = rng.vec(off + rows * r.row_stride + 2);
                let pos: Vec<u32> = (0..rows as u32).map(|i| 9000 * i + 5).collect();
                let xb = be.upload(&x).unwrap();
                be.rope(&xb, off, &ids(&be, &pos), 0, &freqs, r).unwrap();
                let mut want = x.clone();
                twin::rope(&mut want[off..], &pos, &r, &inv_freq, factor);
                let got = be.download(&xb, 0, x.len()).unwrap();
                let what = format!("rope hd={hd} x{factor} rows={rows} interleaved={interleaved}");
                assert_close(&got, &want, 1e-6, &what);
            }
        }
    }
}

/// The factor scales cos and sin: a zero frequency turns nothing, so the
/// pair comes out multiplied by the factor; and the same table at factor 1
/// is the unscaled rotation.
#[test]
fn the_attention_factor_scales_cos_and_sin() {
    let be = cpu();
    let x = Rng::new(32).vec(8);
    let r = rope_shape(1, 1, 8, 0, false);
    let zero = be.rope_freqs(&[0.0; 4], 1.5).unwrap();
    let xb = be.upload(&x).unwrap();
    be.rope(&xb, 0, &ids(&be, &[77]), 0, &zero, r).unwrap();
    let want: Vec<f32> = x.iter().map(|v| v * 1.5).collect();
    assert_eq!(be.download(&xb, 0, 8).unwrap(), want);
    let inv = twin::default_inv_freq(1e4, 8);
    let (one, two) = (
        be.rope_freqs(&inv, 1.0).unwrap(),
        be.rope_freqs(&inv, 2.0).unwrap(),
    );
    let run = |f: &RopeFreqs| {
        let xb = be.upload(&x).unwrap();
        be.rope(&xb, 0, &ids(&be, &[300]), 0, f, r).unwrap();
        be.download(&xb, 0, 8).unwrap()
    };
    let doubled: Vec<f32> = run(&one).iter().map(|v| v * 2.0).collect();
    assert_close(&run(&two), &doubled, 1e-6, "factor 2");
}

/// Each table keeps its own cos/sin cache: two tables used in turn on one
/// backend (the second growing its cache past the first's positions) give
/// what each gives alone; a position past 2^22 is refused.
#[test]
fn rope_tables_keep_their_own_caches_and_refuse_absurd_positions() {
    let be = cpu();
    let x = Rng::new(6).vec(8);
    let r = RopeShape {
        rows: 1,
        row_stride: 8,
        n_heads: 1,
        head_dim: 8,
        interleaved: false,
    };
    let a = be.rope_freqs(&twin::default_inv_freq(1e4, 8), 1.0).unwrap();
    let b = be.rope_freqs(&twin::default_inv_freq(5e5, 8), 1.0).unwrap();
    let run = |f: &RopeFreqs, p: u32| {
        let xb = be.upload(&x).unwrap();
        be.rope(&xb, 0, &ids(&be, &[p]), 0, f, r).unwrap();
        be.download(&xb, 0, 8).unwrap()
    };
    let (a1, b1, b2, a1_again) = (run(&a, 300), run(&b, 300), run(&b, 900), run(&a, 300));
    assert_ne!(a1, b1);
    assert_eq!(a1, a1_again);
    let mut want = x.clone();
    twin::rope(&mut want, &[900], &r, &twin::default_inv_freq(5e5, 8), 1.0);
    assert_eq!(b2, want);
    let xb = be.upload(&x).unwrap();
    let e = be
        .rope(&xb, 0, &ids(&be, &[u32::MAX]), 0, &a, r)
        .unwrap_err()
        .to_string();
    assert!(e.contains("position"), "{e}");
}

/// Dynamic NTK: the frequencies of a row are transformers' for the base of
/// its length (`theta * x^(d/(d-2))`, written out here the way
/// `_compute_dynamic_ntk_parameters` does), rows up to `max_pos` keep the
/// plain table, rows before the prompt's end take the prompt's base, and
/// the CPU backend (a cos/sin cache per table) matches the twin.
#[test]
fn dynamic_ntk_rope_turns_each_row_by_the_base_of_its_length() {
    let (theta, hd) = (10_000.0f64, 16);
    let inv = twin::default_inv_freq(theta, hd);
    let d = DynamicNtk {
        factor: 3.0,
        max_pos: 12,
        min_len: 17,
    };
    let hf_inv = |len: f64| -> Vec<f64> {
        let len = len.max(12.0);
        let base = theta * (3.0 * len / 12.0 - 2.0).powf(hd as f64 / (hd as f64 - 2.0));
        (0..hd / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / hd as f64))
            .collect()
    };
    for (p, len) in [(0u32, 17.0), (16, 17.0), (17, 18.0), (40, 41.0)] {
        for (f, want) in hf_inv(len).iter().enumerate() {
            let got = twin::rope_angle(p, f, &inv, Some(&d)) / p.max(1) as f64;
            let want = if p == 0 { 0.0 } else { *want };
            assert!(
                (got - want).abs() <= 1e-7 * want.abs(),
                "p {p} pair {f}: {got} vs transformers' {want}"
            );
        }
    }
    // A prompt within max_pos: rows up to max_pos turn as plain RoPE.
    let short = DynamicNtk { min_len: 5, ..d };
    for p in [0u32, 4, 11] {
        for f in 0..hd / 2 {
            assert_eq!(
                twin::rope_angle(p, f, &inv, Some(&short)),
                twin::rope_angle(p, f, &inv, None)
            );
        }
    }
    assert_ne!(
        twin::rope_angle(12, 3, &inv, Some(&short)),
        twin::rope_angle(12, 3, &inv, None)
    );

    let be = cpu();
    let freqs = be.rope_freqs_dynamic(&inv, 1.0, d).unwrap();
    assert_eq!(freqs.dynamic(), Some(d));
    let mut rng = Rng::new(33);
    for interleaved in [false, true] {
        let r = rope_shape(5, 3, hd, 2, interleaved);
        let x = rng.vec(5 * r.row_stride);
        // Out of order, with a repeat, so the cache is built past and reused.
        let pos = [40u32, 3, 17, 16, 40];
        let xb = be.upload(&x).unwrap();
        be.rope(&xb, 0, &ids(&be, &pos), 0, &freqs, r).unwrap();
        let mut want = x.clone();
        twin::rope_with(&mut want, &pos, &r, &inv, 1.0, Some(&d));
        assert_close(
            &be.download(&xb, 0, x.len()).unwrap(),
            &want,
            1e-6,
            "dynamic",
        );
        let mut plain = x.clone();
        twin::rope(&mut plain, &pos, &r, &inv, 1.0);
        assert!(plain != want, "dynamic NTK changed nothing");
    }
    // Bad scalings are typed errors.
    for (bad, why) in [
        (DynamicNtk { factor: 0.5, ..d }, ">= 1"),
        (
            DynamicNtk {
                factor: f32::NAN,
                ..d
            },
            ">= 1",
        ),
        (DynamicNtk { max_pos: 0, ..d }, "max_pos"),
    ] {
        let e = be.rope_freqs_dynamic(&inv, 1.0, bad).err().unwrap();
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    let e = be.rope_freqs_dynamic(&[1.0], 1.0, d).err().unwrap();
    assert!(e.to_string().contains("head_dim > 2"), "{e}");
}

#[test]
fn rope_freqs_refuses_bad_tables_with_typed_errors() {
    let be = cpu();
    let bad: [(&[f32], f32, &str); 8] = [
        (&[], 1.0, "empty"),
        (&[1.0, f32::NAN], 1.0, "inverse frequency 1 is NaN"),
        (&[f32::INFINITY], 1.0, "inverse frequency 0 is inf"),
        (&[1.0, 0.5, -0.1], 1.0, "inverse frequency 2 is -0.1"),
        (&[1.0], 0.0, "attention factor"),
        (&[1.0], -1.0, "attention factor"),
        (&[1.0], f32::NAN, "attention factor"),
        (&[1.0], f32::INFINITY, "attention factor"),
    ];
    for (inv, factor, why) in bad {
        let e = be.rope_freqs(inv, factor).err().unwrap();
        assert!(
            matches!(
                e,
                KernelError::Shape {
                    op: "rope_freqs",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    // A zero frequency (a dimension that never turns) is valid.
    be.rope_freqs(&[1.0, 0.0], 1.0).unwrap();
}

#[test]
fn rope_refuses_a_table_of_the_wrong_length_or_backend() {
    let be = cpu();
    let x = be.alloc(64).unwrap();
    let pos = ids(&be, &[0, 1]);
    let r = rope_shape(2, 2, 16, 0, false);
    for n in [7, 9] {
        let f = be.rope_freqs(&vec![0.5; n], 1.0).unwrap();
        let e = be.rope(&x, 0, &pos, 0, &f, r).unwrap_err();
        assert!(matches!(e, KernelError::Shape { op: "rope", .. }), "{e}");
        assert!(
            e.to_string().contains(&format!("holds {n} frequencies")),
            "{e}"
        );
    }
    // Even with nothing to turn, a wrong table is a bug.
    let f = be.rope_freqs(&[0.5; 7], 1.0).unwrap();
    let none = RopeShape { rows: 0, ..r };
    assert!(be.rope(&x, 0, &pos, 0, &f, none).is_err());
    // A table made by another backend.
    let mut f = be.rope_freqs(&[0.5; 8], 1.0).unwrap();
    be.rope(&x, 0, &pos, 0, &f, r).unwrap();
    f.owner = Owner {
        spec: DeviceSpec::Cuda(1),
        dtype: Dtype::F16,
    };
    let e = be.rope(&x, 0, &pos, 0, &f, r).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::WrongBackend {
                op: "rope",
                what: "frequency table",
                ..
            }
        ),
        "{e}"
    );
    be.synchronize().unwrap();
}

#[test]
fn add_bias_matches_its_twin_and_touches_nothing_else() {
    let be = cpu();
    let mut rng = Rng::new(33);
    for (rows, dim, off) in [(1, 1, 0), (3, 7, 5), (17, 896, 64), (2, 128, 1)] {
        let x = rng.vec(off + rows * dim + 3);
        let bias = rng.vec(dim + 4); // longer than dim: only dim are used
        let (xb, bb) = (be.upload(&x).unwrap(), be.upload(&bias).unwrap());
        be.add_bias(&xb, off, &bb, rows, dim).unwrap();
        let mut want = x.clone();
        twin::add_bias(&mut want[off..off + rows * dim], &bias[..dim], dim);
        let got = be.download(&xb, 0, x.len()).unwrap();
        assert_eq!(got, want, "add_bias rows={rows} dim={dim} at {off}");
        assert_eq!(&got[..off], &x[..off]);
        assert_eq!(&got[off + rows * dim..], &x[off + rows * dim..]);
    }
}

#[test]
fn add_bias_refuses_a_short_bias_bad_ranges_and_aliasing() {
    let be = cpu();
    let x = be.alloc(40).unwrap();
    let e = be.add_bias(&x, 0, &be.alloc(7).unwrap(), 4, 8).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::OutOfRange {
                op: "add_bias",
                what: "bias",
                end: 8,
                buf_len: 7,
                ..
            }
        ),
        "{e}"
    );
    let bias = be.alloc(8).unwrap();
    let e = be.add_bias(&x, 9, &bias, 4, 8).unwrap_err();
    assert!(
        matches!(e, KernelError::OutOfRange { what: "x", .. }),
        "{e}"
    );
    let e = be.add_bias(&x, 0, &bias, usize::MAX, 8).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    let e = be.add_bias(&x, 8, &x, 4, 8).unwrap_err();
    assert!(
        matches!(e, KernelError::Shape { op: "add_bias", .. }),
        "{e}"
    );
    // Nothing to add is no error.
    be.add_bias(&x, 40, &bias, 0, 8).unwrap();
    be.synchronize().unwrap();
}

/// Qwen3's q/k norm: `tokens * heads` rows of `head_dim` inside the q
/// buffer, in place at a non-zero offset; what lies outside stays.
#[test]
fn rmsnorm_at_an_offset_in_place_leaves_the_rest() {
    let be = cpu();
    let mut rng = Rng::new(34);
    for (rows, dim, off) in [(1, 7, 3), (3 * 4, 64, 64), (5 * 2, 128, 1)] {
        let n = off + rows * dim + 5;
        let x = rng.vec(n);
        let w = rng.vec(dim);
        let (xb, wb) = (be.upload(&x).unwrap(), be.upload(&w).unwrap());
        let normed = twin::rmsnorm(&x[off..off + rows * dim], &w, dim, 1e-6);
        // Into another buffer at an offset.
        let out = be.upload(&vec![9.0; rows * dim + 2]).unwrap();
        be.rmsnorm_at(&xb, off, &wb, &out, 2, rows, dim, 1e-6)
            .unwrap();
        let got = be.download(&out, 0, rows * dim + 2).unwrap();
        assert_eq!(&got[..2], &[9.0, 9.0]);
        assert_close(&got[2..], &normed, 1e-5, "rmsnorm_at into another buffer");
        // In place.
        be.rmsnorm_at(&xb, off, &wb, &xb, off, rows, dim, 1e-6)
            .unwrap();
        let got = be.download(&xb, 0, n).unwrap();
        assert_eq!(&got[..off], &x[..off], "before the range");
        assert_eq!(&got[off + rows * dim..], &x[off + rows * dim..], "after it");
        assert_close(&got[off..off + rows * dim], &normed, 1e-5, "in place");
    }
    // Two ranges of one buffer that do not overlap, either way round.
    let x = rng.vec(40);
    let w = rng.vec(8);
    let wb = be.upload(&w).unwrap();
    let want = twin::rmsnorm(&x[4..20], &w, 8, 1e-5);
    for (from, to) in [(4, 20), (20, 0)] {
        let xb = be.upload(&x).unwrap();
        let src = be.upload(&x).unwrap();
        be.copy_d2d(Stream::Compute, &src, 4, &xb, from, 16)
            .unwrap();
        be.rmsnorm_at(&xb, from, &wb, &xb, to, 2, 8, 1e-5).unwrap();
        let got = be.download(&xb, to, 16).unwrap();
        assert_close(&got, &want, 1e-5, &format!("{from} -> {to}"));
    }
    // `rmsnorm` is `rmsnorm_at` at offset 0.
    let xb = be.upload(&x[..32]).unwrap();
    let (a, b) = (be.alloc(32).unwrap(), be.alloc(32).unwrap());
    be.rmsnorm(&xb, &wb, &a, 4, 8, 1e-5).unwrap();
    be.rmsnorm_at(&xb, 0, &wb, &b, 0, 4, 8, 1e-5).unwrap();
    assert_eq!(
        be.download(&a, 0, 32).unwrap(),
        be.download(&b, 0, 32).unwrap()
    );
}

#[test]
fn rmsnorm_at_refuses_overlaps_aliased_weights_and_bad_ranges() {
    let be = cpu();
    let x = be.alloc(64).unwrap();
    let w = be.alloc(8).unwrap();
    // The same buffer at overlapping, different offsets.
    let e = be.rmsnorm_at(&x, 0, &w, &x, 8, 2, 8, 1e-5).unwrap_err();
    assert!(matches!(e, KernelError::Shape { op: "rmsnorm", .. }), "{e}");
    assert!(e.to_string().contains("same offset"), "{e}");
    let e = be.rmsnorm_at(&x, 0, &x, &x, 0, 2, 8, 1e-5).unwrap_err();
    assert!(e.to_string().contains("weights"), "{e}");
    let e = be.rmsnorm_at(&x, 57, &w, &x, 57, 1, 8, 1e-5).unwrap_err();
    assert!(
        matches!(e, KernelError::OutOfRange { what: "x", .. }),
        "{e}"
    );
    let out = be.alloc(16).unwrap();
    let e = be.rmsnorm_at(&x, 0, &w, &out, 1, 2, 8, 1e-5).unwrap_err();
    assert!(
        matches!(e, KernelError::OutOfRange { what: "out", .. }),
        "{e}"
    );
    let e = be.rmsnorm_at(&x, 0, &w, &out, 0, 1, 9, 1e-5).unwrap_err();
    assert!(
        matches!(e, KernelError::OutOfRange { what: "weight", .. }),
        "{e}"
    );
    be.synchronize().unwrap();
}

/// Transformers' Mistral mask: key `t` is visible to a query at `p` iff
/// `p - W < t <= p`.
#[test]
fn visible_keys_follow_the_mistral_rule() {
    for p in 0..12usize {
        for w in 0..15usize {
            let r = twin::visible_keys(p, w);
            for t in 0..20usize {
                let want = t <= p && (w == 0 || (t as i64) > p as i64 - w as i64);
                assert_eq!(r.contains(&t), want, "p={p} w={w} t={t}");
            }
        }
    }
}

fn attn(
    batch: usize,
    q_len: usize,
    q_pos0: usize,
    heads: (usize, usize),
    hd: usize,
    cap: usize,
    window: usize,
) -> AttnShape {
    AttnShape {
        batch,
        q_len,
        q_pos0,
        n_heads: heads.0,
        n_kv_heads: heads.1,
        head_dim: hd,
        kv_capacity: cap,
        scale: 1.0 / (hd as f32).sqrt(),
        window,
    }
}

/// Runs `Backend::attention` on the CPU backend.
fn run_attention(be: &Backend, q: &[f32], k: &[f32], v: &[f32], a: AttnShape) -> Vec<f32> {
    let (qb, kb, vb) = (
        be.upload(q).unwrap(),
        be.upload(k).unwrap(),
        be.upload(v).unwrap(),
    );
    let out = be.upload(&vec![f32::NAN; q.len()]).unwrap();
    be.attention(&qb, &kb, &vb, &out, a).unwrap();
    be.download(&out, 0, q.len()).unwrap()
}

#[test]
fn windowed_attention_matches_its_twin() {
    let be = cpu();
    let mut rng = Rng::new(35);
    let cases = [
        attn(2, 1, 40, (4, 4), 16, 48, 9),  // decode
        attn(1, 12, 0, (8, 2), 16, 16, 5),  // prefill, window < q_len, GQA
        attn(2, 7, 20, (6, 3), 8, 30, 1),   // window 1, after a cached prefix
        attn(1, 5, 3, (2, 1), 32, 9, 8),    // window exactly the context
        attn(3, 3, 11, (9, 3), 64, 17, 13), // odd sizes
    ];
    for a in cases {
        let q = rng.vec(a.batch * a.q_len * a.n_heads * a.head_dim);
        let k = rng.vec(a.batch * a.kv_capacity * a.n_kv_heads * a.head_dim);
        let v = rng.vec(k.len());
        let got = run_attention(&be, &q, &k, &v, a);
        assert_close(
            &got,
            &twin::attention(&q, &k, &v, &a),
            1e-5,
            &format!("{a:?}"),
        );
    }
}

/// Window 0, a window as long as the cache and any longer one give the same
/// attention; keys before a query's window are never read (NaN there
/// changes nothing); window 1 returns each query's own value.
#[test]
fn windows_hide_exactly_the_keys_before_them() {
    let be = cpu();
    let mut rng = Rng::new(36);
    let a = attn(2, 6, 4, (4, 2), 8, 12, 0);
    let q = rng.vec(2 * 6 * 4 * 8);
    let mut k = rng.vec(2 * 12 * 2 * 8);
    let mut v = rng.vec(k.len());
    let none = run_attention(&be, &q, &k, &v, a);
    for w in [10, 12, 13, usize::MAX] {
        let got = run_attention(&be, &q, &k, &v, AttnShape { window: w, ..a });
        assert_eq!(got, none, "window {w}");
    }
    // Window 3: the first query (position 4) sees keys 2..=4, the last
    // (position 9) keys 7..=9; keys 0 and 1 of every row are never visible.
    let w3 = AttnShape { window: 3, ..a };
    let before = run_attention(&be, &q, &k, &v, w3);
    assert_close(&before, &twin::attention(&q, &k, &v, &w3), 1e-5, "window 3");
    for b in 0..2 {
        for t in 0..2 {
            let at = (b * 12 + t) * 16;
            k[at..at + 16].fill(f32::NAN);
            v[at..at + 16].fill(f32::NAN);
        }
    }
    assert_eq!(run_attention(&be, &q, &k, &v, w3), before);
    // Window 1: softmax over one key is 1, so out = v at the query's position.
    let w1 = AttnShape { window: 1, ..a };
    let got = run_attention(&be, &q, &k, &v, w1);
    for b in 0..2 {
        for j in 0..6 {
            for h in 0..4 {
                let o = &got[((b * 6 + j) * 4 + h) * 8..][..8];
                let vt = &v[(b * 12 + 4 + j) * 16 + (h / 2) * 8..][..8];
                assert_eq!(o, vt, "row {b} query {j} head {h}");
            }
        }
    }
}

/// Each windowed ragged row equals its sequence attended alone at its last
/// position with the same window; a length past the cache is clamped first.
#[test]
fn windowed_ragged_rows_equal_their_sequences_alone() {
    let be = cpu();
    let mut rng = Rng::new(37);
    let (heads, hd, cap) = ((8, 2), 16, 40);
    let lens = [1u32, 40, 0, 17, 1000, 6];
    for window in [1, 5, 16, 40, 100] {
        let a = attn(lens.len(), 1, 0, heads, hd, cap, window);
        let (qd, kvd) = (heads.0 * hd, heads.1 * hd);
        let q = rng.vec(lens.len() * qd);
        let k = rng.vec(lens.len() * cap * kvd);
        let v = rng.vec(k.len());
        let (qb, kb, vb) = (
            be.upload(&q).unwrap(),
            be.upload(&k).unwrap(),
            be.upload(&v).unwrap(),
        );
        let out = be.upload(&vec![f32::NAN; q.len()]).unwrap();
        be.attention_ragged(&qb, &kb, &vb, &out, a, &ids(&be, &lens), 0)
            .unwrap();
        let got = be.download(&out, 0, q.len()).unwrap();
        let want = twin::attention_ragged(&q, &k, &v, &a, &lens);
        assert_close(&got, &want, 1e-5, &format!("window {window}"));
        for (b, &len) in lens.iter().enumerate() {
            let n = (len as usize).min(cap);
            let row = &got[b * qd..][..qd];
            if n == 0 {
                assert!(row.iter().all(|&x| x == 0.0));
                continue;
            }
            let one = AttnShape {
                batch: 1,
                q_pos0: n - 1,
                ..a
            };
            let kv = b * cap * kvd..(b + 1) * cap * kvd;
            let alone = run_attention(&be, &q[b * qd..][..qd], &k[kv.clone()], &v[kv], one);
            assert_close(row, &alone, 1e-6, &format!("window {window} row {b}"));
        }
    }
}

/// No window value is invalid (0 and >= the context mean none); a shape
/// whose positions overflow is a typed error, not a panic.
#[test]
fn attention_shapes_with_windows_are_checked_without_panics() {
    let be = cpu();
    let (q, kv) = (be.alloc(64).unwrap(), be.alloc(256).unwrap());
    let a = attn(1, 2, 0, (4, 2), 8, 16, usize::MAX);
    be.attention(&q, &kv, &kv, &q, a).unwrap();
    let e = be
        .attention(
            &q,
            &kv,
            &kv,
            &q,
            AttnShape {
                q_pos0: usize::MAX,
                ..a
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::Shape {
                op: "attention",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("cache holds 16"), "{e}");
    let e = be
        .attention(
            &q,
            &kv,
            &kv,
            &q,
            AttnShape {
                q_pos0: 15,
                window: 4,
                ..a
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("cache holds 16"), "{e}");
    let e = be.attention(&q, &kv, &kv, &kv, a).unwrap_err();
    assert!(e.to_string().contains("out must not alias k or v"), "{e}");
    be.synchronize().unwrap();
}

/// `kvpr selftest` checks every new op and variant.
#[test]
fn selftest_checks_the_new_ops_and_variants() {
    let rows = selftest::check_ops(&cpu(), 5).unwrap();
    let has = |op: &str, part: &str| rows.iter().any(|r| r.op == op && r.shape.contains(part));
    assert!(has("rope", "llama3-like"));
    assert!(has("add_bias", "the rest untouched"));
    assert!(has("rmsnorm_at", "in place at"));
    assert!(has("attention", "window=5"));
    assert!(has("attention", "window=1"));
    assert!(has("attention_ragged", "window=280"));
    let bad: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Issue 19, finding 7: every buffer carries the device and dtype it was
/// made for, and every op refuses another's (a host buffer of an f16 CUDA
/// backend used by an f32 one would be addressed with the wrong element
/// size). Here `b`'s buffers are marked as an f16 CUDA backend's: each op of
/// `a` is handed one in turn. Two CPU backends share their buffers, as
/// candle's CPU devices do.
#[test]
fn buffers_of_another_backend_are_refused_by_every_op() {
    let (a, b) = (cpu(), cpu());
    let other = Owner {
        spec: DeviceSpec::Cuda(0),
        dtype: Dtype::F16,
    };
    let wrong = |e: KernelError, what: &str| {
        assert!(matches!(e, KernelError::WrongBackend { .. }), "{what}: {e}");
    };
    let (x, mut y) = (a.alloc(64).unwrap(), b.alloc(64).unwrap());
    let (ia, mut ib) = (ids(&a, &[0, 1]), ids(&b, &[0, 1]));
    let (ha, mut hb) = (a.alloc_host(64).unwrap(), b.alloc_host(64).unwrap());
    // Another CPU backend's buffers are this one's too.
    a.add(&x, &y, &x, 8).unwrap();
    (y.owner, ib.owner, hb.owner) = (other, other, other);
    wrong(a.gemm(&x, 0, &y, 0, &x, 0, 2, 2, 2).unwrap_err(), "gemm w");
    wrong(a.rmsnorm(&y, &x, &x, 2, 8, 1e-5).unwrap_err(), "rmsnorm x");
    wrong(a.add(&x, &y, &x, 8).unwrap_err(), "add");
    wrong(a.silu_gate(&x, &x, &y, 8).unwrap_err(), "silu_gate out");
    wrong(a.add_bias(&x, 0, &y, 2, 8).unwrap_err(), "add_bias");
    wrong(
        a.gather_rows(&y, &ia, 0, &x, 0, 2, 8).unwrap_err(),
        "embedding table",
    );
    wrong(
        a.gather_rows(&x, &ib, 0, &x, 0, 2, 8).unwrap_err(),
        "embedding ids",
    );
    wrong(a.argmax(&x, 2, 8, &ib, 0).unwrap_err(), "argmax out");
    wrong(a.download(&y, 0, 4).unwrap_err(), "download");
    wrong(a.write_ids(&ib, 0, &[1]).unwrap_err(), "write_ids");
    wrong(a.host_read(&hb, 0, 4).unwrap_err(), "host_read");
    wrong(a.host_write(&hb, 0, &[1.0]).unwrap_err(), "host_write");
    wrong(
        a.copy_d2d(Stream::Compute, &x, 0, &y, 0, 4).unwrap_err(),
        "copy_d2d",
    );
    let r = Rows {
        rows: 1,
        width: 4,
        src_pitch: 4,
        dst_pitch: 4,
    };
    wrong(
        a.copy_h2d_rows(Stream::Copy, &hb, 0, &x, 0, r).unwrap_err(),
        "copy_h2d",
    );
    wrong(
        a.copy_d2h_rows(Stream::Writeback, &x, 0, &hb, 0, r)
            .unwrap_err(),
        "copy_d2h",
    );
    let shape = AttnShape {
        batch: 1,
        q_len: 1,
        q_pos0: 0,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 8,
        kv_capacity: 1,
        scale: 1.0,
        window: 0,
    };
    wrong(
        a.attention(&x, &y, &x, &x, shape).unwrap_err(),
        "attention k",
    );
    // Each backend's own buffers still work.
    a.copy_h2d_rows(Stream::Copy, &ha, 0, &x, 0, r).unwrap();
    a.synchronize().unwrap();
}
