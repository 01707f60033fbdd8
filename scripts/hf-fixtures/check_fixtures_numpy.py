#!/usr/bin/env python3
"""Independent re-implementation (numpy only, no torch/transformers) that checks every fixture.

    python3 scripts/hf-fixtures/check_fixtures_numpy.py tests/fixtures/hf

It reads config.json, the safetensors files (f32/f16/bf16, single file or sharded) and
tokenizer_config.json, decodes greedily with a KV cache (prefill in one call, then one token
per call) and compares tokens and logits with expected.json. It is the executable statement of
the semantics the README describes (RoPE variants, dynamic NTK state, sliding window, biases,
Qwen3 q/k norms), written from that description rather than from transformers' code.
"""

import json
import math
import os
import struct
import sys

import numpy as np

DT = np.float64


def read_safetensors(path):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        dt = info["dtype"]
        if dt == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(dt)
        out[name] = arr.reshape(info["shape"]).astype(DT)
    return out


def load_weights(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as fh:
            wm = json.load(fh)["weight_map"]
        w = {}
        for f in sorted(set(wm.values())):
            w.update(read_safetensors(os.path.join(d, f)))
        assert set(w) == set(wm), "index and shards disagree"
        return w
    return read_safetensors(os.path.join(d, "model.safetensors"))


class Rope:
    """inv_freq and attention scaling per rope_type; dynamic keeps transformers' grow-only state."""

    def __init__(self, cfg, head_dim):
        rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        self.theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
        self.type = rp.get("rope_type", rp.get("type", "default"))
        self.rp = rp
        self.dim = head_dim
        self.max_pos = cfg["max_position_embeddings"]
        self.cached = self.max_pos  # dynamic: largest seq_len seen so far
        self.inv_freq, self.scale = self.compute(self.max_pos)

    def base_inv(self, theta):
        return 1.0 / theta ** (np.arange(0, self.dim, 2, dtype=DT) / self.dim)

    def compute(self, seq_len):
        rp, dim, t = self.rp, self.dim, self.type
        inv = self.base_inv(self.theta)
        if t == "default":
            return inv, 1.0
        if t == "linear":
            return inv / rp["factor"], 1.0
        if t == "dynamic":
            f = rp["factor"]
            seq_len = max(seq_len, self.max_pos)
            base = self.theta * ((f * seq_len / self.max_pos) - (f - 1)) ** (dim / (dim - 2))
            return self.base_inv(base), 1.0
        if t == "llama3":
            f, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
            old = rp["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv
            out = np.where(wavelen > old / lo, inv / f, inv)
            smooth = (old / wavelen - lo) / (hi - lo)
            mid = (wavelen >= old / hi) & (wavelen <= old / lo)
            return np.where(mid, (1 - smooth) * out / f + smooth * out, out), 1.0
        if t == "yarn":
            f = rp["factor"]
            omp = rp["original_max_position_embeddings"]

            def get_mscale(scale, m=1.0):
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            att = rp.get("attention_factor")
            if att is None:
                if rp.get("mscale") and rp.get("mscale_all_dim"):
                    att = get_mscale(f, rp["mscale"]) / get_mscale(f, rp["mscale_all_dim"])
                else:
                    att = get_mscale(f)
            bf = rp.get("beta_fast") or 32
            bs = rp.get("beta_slow") or 1

            def corr_dim(rot):
                return dim * math.log(omp / (rot * 2 * math.pi)) / (2 * math.log(self.theta))
            low, high = corr_dim(bf), corr_dim(bs)
            if rp.get("truncate", True):
                low, high = math.floor(low), math.ceil(high)
            low, high = max(low, 0), min(high, dim - 1)
            if low == high:
                high += 0.001
            ramp = np.clip((np.arange(dim // 2, dtype=DT) - low) / (high - low), 0, 1)
            # ramp 0 -> original frequency (extrapolation), 1 -> frequency / factor (interpolation)
            return (inv / f) * ramp + inv * (1 - ramp), att
        raise ValueError(t)

    def cos_sin(self, positions):
        if self.type == "dynamic":
            seq_len = int(max(positions)) + 1
            if seq_len > self.cached:
                self.inv_freq, self.scale = self.compute(seq_len)
                self.cached = seq_len
        ang = np.asarray(positions, dtype=DT)[:, None] * self.inv_freq[None, :]
        ang = np.concatenate([ang, ang], axis=-1)
        return np.cos(ang) * self.scale, np.sin(ang) * self.scale


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rot_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def silu(x):
    return x / (1 + np.exp(-x))


class Model:
    def __init__(self, d):
        with open(os.path.join(d, "config.json")) as fh:
            self.cfg = cfg = json.load(fh)
        self.w = load_weights(d)
        self.mt = cfg["model_type"]
        self.H = cfg["num_attention_heads"]
        self.KV = cfg.get("num_key_value_heads") or self.H
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // self.H
        self.eps = cfg["rms_norm_eps"]
        self.L = cfg["num_hidden_layers"]
        self.window = None
        if self.mt == "mistral":
            self.window = cfg.get("sliding_window")
        elif self.mt in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
            raise NotImplementedError("qwen sliding window layers")
        self.rope = Rope(cfg, self.hd)
        tied = cfg.get("tie_word_embeddings", False)
        self.head = self.w["model.embed_tokens.weight"] if tied else self.w["lm_head.weight"]
        if tied:
            assert "lm_head.weight" not in self.w
        self.k = [np.zeros((self.KV, 0, self.hd)) for _ in range(self.L)]
        self.v = [np.zeros((self.KV, 0, self.hd)) for _ in range(self.L)]
        self.pos = 0

    def lin(self, x, name):
        y = x @ self.w[name + ".weight"].T
        b = self.w.get(name + ".bias")
        return y if b is None else y + b

    def forward(self, ids):
        w, n = self.w, len(ids)
        positions = list(range(self.pos, self.pos + n))
        cos, sin = self.rope.cos_sin(positions)
        x = w["model.embed_tokens.weight"][ids]
        for i in range(self.L):
            p = f"model.layers.{i}."
            h = rmsnorm(x, w[p + "input_layernorm.weight"], self.eps)
            q = self.lin(h, p + "self_attn.q_proj").reshape(n, self.H, self.hd)
            k = self.lin(h, p + "self_attn.k_proj").reshape(n, self.KV, self.hd)
            v = self.lin(h, p + "self_attn.v_proj").reshape(n, self.KV, self.hd)
            if self.mt == "qwen3":
                q = rmsnorm(q, w[p + "self_attn.q_norm.weight"], self.eps)
                k = rmsnorm(k, w[p + "self_attn.k_norm.weight"], self.eps)
            q = q * cos[:, None] + rot_half(q) * sin[:, None]
            k = k * cos[:, None] + rot_half(k) * sin[:, None]
            self.k[i] = np.concatenate([self.k[i], k.transpose(1, 0, 2)], axis=1)
            self.v[i] = np.concatenate([self.v[i], v.transpose(1, 0, 2)], axis=1)
            T = self.k[i].shape[1]
            kpos = np.arange(T)[None, :]
            qpos = np.asarray(positions)[:, None]
            allowed = kpos <= qpos
            if self.window is not None:
                allowed &= kpos > qpos - self.window
            rep = self.H // self.KV
            out = np.zeros((n, self.H, self.hd))
            for hh in range(self.H):
                kk, vv = self.k[i][hh // rep], self.v[i][hh // rep]
                s = (q[:, hh] @ kk.T) * self.hd ** -0.5
                s = np.where(allowed, s, -np.inf)
                s = np.exp(s - s.max(-1, keepdims=True))
                s /= s.sum(-1, keepdims=True)
                out[:, hh] = s @ vv
            x = x + self.lin(out.reshape(n, -1), p + "self_attn.o_proj")
            h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], self.eps)
            g = self.lin(h, p + "mlp.gate_proj")
            u = self.lin(h, p + "mlp.up_proj")
            x = x + self.lin(silu(g) * u, p + "mlp.down_proj")
        self.pos += n
        x = rmsnorm(x, w["model.norm.weight"], self.eps)
        return x[-1] @ self.head.T


def check(d):
    with open(os.path.join(d, "expected.json")) as fh:
        exp = json.load(fh)
    with open(os.path.join(d, "tokenizer_config.json")) as fh:
        tc = json.load(fh)
    m = Model(d)
    ids = exp["prompt_ids"]
    bos = tc["add_bos_token"]
    assert (ids[0] == m.cfg["bos_token_id"]) == bos, "BOS rule"
    logits = m.forward(ids)
    toks, rows = [], []
    for i in range(exp["max_new_tokens"]):
        rows.append(logits)
        t = int(np.argmax(logits))
        toks.append(t)
        if i + 1 < exp["max_new_tokens"]:
            logits = m.forward([t])
    ref = np.asarray(exp["logits"])
    err = float(np.abs(np.stack(rows) - ref).max())
    ok = toks == exp["tokens"] and err < 1e-4
    return ok, err, toks == exp["tokens"]


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf"
    bad = 0
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isfile(os.path.join(d, "expected.json")):
            continue
        ok, err, tok_ok = check(d)
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:24s} max|logit err| {err:.2e} tokens {'equal' if tok_ok else 'DIFFER'}")
    print(f"{'all fixtures match' if not bad else f'{bad} fixture(s) differ'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
