//! The plain f32 Llama forward on the host, with its whole KV cache in memory:
//! the oracle the plan-following executor and candle-transformers are checked
//! against. Its cache is preallocated and written at an offset.

use crate::ops::{self, AttnShape, Linear};
use crate::source::Config;
use crate::weights::Weights;
use crate::{Result, RuntimeError};

struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// `[batch, capacity, kv_dim]`
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

/// A Llama model with a host KV cache for `batch` sequences of up to `capacity` tokens.
pub struct Reference {
    cfg: Config,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Linear,
    batch: usize,
    capacity: usize,
}

impl Reference {
    pub fn new(w: &Weights, batch: usize, capacity: usize) -> Result<Self> {
        let s = &w.config.spec;
        let (h, q, kv, f) = (s.hidden_size, s.q_dim(), s.kv_dim(), s.intermediate_size);
        let layers = w
            .layers
            .iter()
            .map(|b| {
                Ok(Layer {
                    attn_norm: b.input_layernorm.clone(),
                    q: Linear::new(&b.self_attn.q_proj, q, h, "q_proj")?,
                    k: Linear::new(&b.self_attn.k_proj, kv, h, "k_proj")?,
                    v: Linear::new(&b.self_attn.v_proj, kv, h, "v_proj")?,
                    o: Linear::new(&b.self_attn.o_proj, h, q, "o_proj")?,
                    mlp_norm: b.post_attention_layernorm.clone(),
                    gate: Linear::new(&b.mlp.gate_proj, f, h, "gate_proj")?,
                    up: Linear::new(&b.mlp.up_proj, f, h, "up_proj")?,
                    down: Linear::new(&b.mlp.down_proj, h, f, "down_proj")?,
                    k_cache: vec![0.0; batch * capacity * kv],
                    v_cache: vec![0.0; batch * capacity * kv],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Reference {
            cfg: w.config.clone(),
            embed: w.embed_tokens.clone(),
            layers,
            norm: w.norm.clone(),
            lm_head: Linear::new(w.lm_head(), s.vocab_size, h, "lm_head")?,
            batch,
            capacity,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Runs `tokens` (`[batch, q_len]`, row-major) at positions
    /// `pos0 .. pos0 + q_len` and returns the last position's logits `[batch, vocab]`.
    pub fn forward(&mut self, tokens: &[u32], pos0: usize) -> Result<Vec<f32>> {
        let s = &self.cfg.spec;
        let (h, qd, kvd, vocab) = (s.hidden_size, s.q_dim(), s.kv_dim(), s.vocab_size);
        let (b, cap) = (self.batch, self.capacity);
        if tokens.is_empty() || tokens.len().checked_rem(b) != Some(0) {
            return Err(RuntimeError::Request {
                what: "tokens".into(),
                reason: format!("{} ids do not make {b} equal rows", tokens.len()),
            });
        }
        let t = tokens.len() / b;
        if pos0 + t > cap {
            return Err(RuntimeError::Request {
                what: "context".into(),
                reason: format!("{} positions exceed the cache of {cap}", pos0 + t),
            });
        }
        let rows = b * t;
        let eps = s.norm_eps as f32;
        let mut x = vec![0f32; rows * h];
        for (r, &id) in tokens.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(RuntimeError::Request {
                    what: "tokens".into(),
                    reason: format!("id {id} is outside the vocabulary of {vocab}"),
                });
            }
            x[r * h..(r + 1) * h].copy_from_slice(&self.embed[id * h..(id + 1) * h]);
        }
        let positions: Vec<u32> = (0..rows).map(|r| (pos0 + r % t) as u32).collect();
        let shape = AttnShape {
            batch: b,
            q_len: t,
            q_pos0: pos0,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            kv_capacity: cap,
            scale: 1.0 / (s.head_dim as f32).sqrt(),
        };
        let (theta, inter) = (s.rope_theta as f32, self.cfg.rope.interleaved());
        let mut xn = vec![0f32; rows * h];
        let mut att = vec![0f32; rows * qd];
        for (li, l) in self.layers.iter_mut().enumerate() {
            ops::rmsnorm(&x, &l.attn_norm, &mut xn, h, eps);
            let mut q = l.q.forward(&xn, rows, Some(li))?;
            let mut k = l.k.forward(&xn, rows, Some(li))?;
            let v = l.v.forward(&xn, rows, Some(li))?;
            ops::rope(&mut q, qd, s.n_heads, s.head_dim, &positions, theta, inter);
            ops::rope(
                &mut k,
                kvd,
                s.n_kv_heads,
                s.head_dim,
                &positions,
                theta,
                inter,
            );
            for r in 0..rows {
                let dst = ((r / t) * cap + pos0 + r % t) * kvd;
                l.k_cache[dst..dst + kvd].copy_from_slice(&k[r * kvd..(r + 1) * kvd]);
                l.v_cache[dst..dst + kvd].copy_from_slice(&v[r * kvd..(r + 1) * kvd]);
            }
            ops::attention(&q, &l.k_cache, &l.v_cache, &mut att, shape);
            let o = l.o.forward(&att, rows, Some(li))?;
            ops::add_assign(&mut x, &o);
            ops::rmsnorm(&x, &l.mlp_norm, &mut xn, h, eps);
            let mut g = l.gate.forward(&xn, rows, Some(li))?;
            let u = l.up.forward(&xn, rows, Some(li))?;
            let gc = g.clone();
            ops::silu_gate(&gc, &u, &mut g);
            let d = l.down.forward(&g, rows, Some(li))?;
            ops::add_assign(&mut x, &d);
        }
        // Only the last position of each sequence goes through the head.
        let mut last = vec![0f32; b * h];
        for i in 0..b {
            let r = i * t + t - 1;
            ops::rmsnorm(
                &x[r * h..(r + 1) * h],
                &self.norm,
                &mut last[i * h..(i + 1) * h],
                h,
                eps,
            );
        }
        self.lm_head.forward(&last, b, None)
    }

    /// Greedy ids of the rows of `logits` (`[batch, vocab]`).
    pub fn argmax(&self, logits: &[f32]) -> Vec<u32> {
        ops::argmax(logits, self.cfg.spec.vocab_size)
    }
}
