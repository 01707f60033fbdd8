#!/usr/bin/env python3
"""Generate tiny random-weight Hugging Face checkpoints and transformers' reference outputs.

Usage (from the repository root):

    python3 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install -r scripts/hf-fixtures/requirements.txt
    /tmp/hfvenv/bin/python scripts/hf-fixtures/make_fixtures.py --out tests/fixtures/hf

Each fixture directory `<out>/<name>/` holds a checkpoint exactly as transformers writes
it (`config.json`, `model.safetensors` or shards + `model.safetensors.index.json`,
`generation_config.json`), one shared byte-level BPE `tokenizer.json` plus a
`tokenizer_config.json`, and `expected.json` with the reference greedy decode.

How the reference is computed (this is what the Rust side must reproduce):

* The checkpoint is written to disk first and the model is loaded BACK from disk with
  `from_pretrained(dir, dtype=torch.float32, attn_implementation="eager")`, so the
  reference is exactly a function of the files (16-bit stored weights are upcast to f32).
  Everything runs in float32 on the CPU with one thread, `model.eval()`, `torch.no_grad()`.
* Greedy decoding is a manual loop over the model's plain forward WITH the KV cache,
  the way `generate` does it and the way kvpr decodes: one forward over the whole prompt
  (prefill, `use_cache=True`), then one forward per new token that feeds only that token
  and the cache. Token i is the argmax of logits row i; row 0 is the logits of the last
  prompt position, row i (i >= 1) the logits after feeding token i-1. EOS does not stop the
  loop (exactly `max_new_tokens` tokens come out, as with `eos_token_id=None`); the
  fixtures are also chosen so that no special token is ever generated.
* The loop is cross-checked against `model.generate(do_sample=False, output_logits=True)`
  on a fresh load (tokens equal, logits equal to 1e-5) and against a cache-free forward over
  prompt + tokens (equal except for `dynamic` RoPE, whose frequencies depend on the length
  of each forward call: that difference is recorded as `nocache_max_abs_diff`).
* Every model is reloaded fresh for every run, because transformers' dynamic-RoPE module
  is stateful (it keeps the largest frequencies it has grown to across calls).
* For every fixture that tests a feature, the same weights are also run with the feature
  removed (teacher-forced on the reference tokens) and the script asserts that the
  logits move by more than 1e-2 relative (max |a-b| / max |a|): an implementation that
  ignores the feature cannot match. The figure is stored as `feature_effect`.

Logits are stored rounded to 7 significant digits. The script is deterministic: running
it twice gives byte-identical files. `check_fixtures_numpy.py` beside it re-implements the
models in numpy (no torch) and checks every fixture against expected.json.

The BOS rule is kvpr's: prompt_ids = [bos] if tokenizer_config.json says add_bos_token, then
tokenizer.json's encode(prompt, add_special_tokens=False). (transformers 5 itself ignores
add_bos_token when a tokenizer.json exists; the script asserts the plain encodings agree.)
"""

import argparse
import copy
import json
import os
import shutil

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

MAX_NEW_TOKENS = 16
VOCAB_SIZE = 304
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_end|>"]
PAD, BOS, EOS, IM_END = 0, 1, 2, 3
PROMPT = "Every layer reads the cache."

# A fixed training text (kept in the script so that regenerating never depends on the repo's docs).
CORPUS = """\
kvpr runs language model decoding when the key and value cache does not fit on the GPU and
lives in host memory. For every layer of every decode step the GPU recomputes the keys and
values of part of the context from stored activations, while the keys and values of the rest
are transferred on another stream, so fewer bytes cross the link and the link and the GPU work
at the same time. The planner solves, for every context length of a run, how many tokens stay
resident, how many are recomputed and how many are transferred, and writes a plan with its
predictions. The simulator replays one decode step of a plan as a two stream timeline. The
runtime decodes with the cache in host memory exactly as the plan says and reports what it
measured against what was predicted.
A model is a stack of layers. Each layer normalises its input, projects it to queries, keys and
values, rotates the queries and keys by their position, attends over the cache, projects the
result back and adds it to the residual stream. Then it normalises again and runs a gated
feed forward block. The last norm and the output head turn the final hidden state into one
logit for every token of the vocabulary, and greedy decoding picks the largest.
The tokenizer splits text into bytes and merges the most frequent pairs. The prompt is encoded
once, the whole prompt is run through the model in one prefill step that fills the cache, and
then every decode step feeds one new token, appends its key and value to the cache and reads
the logits of that single position. Rotary position embeddings turn each pair of dimensions of
a query or key by an angle that grows with the position; scaled variants stretch the slow
frequencies so that a model trained on short texts can read long ones. A sliding window limits
how far back a query may look. Grouped query attention shares one key and value head between
several query heads, which makes the cache smaller and the transfer cheaper.
The profile records the link bandwidth, the throughput of matrix products, the cost of
attention and the launch overhead of the machine. The cost model adds up the time of the
transfer stream and of the compute stream and takes the larger, and the solver moves the split
point until both streams finish together. When the link is fast the planner transfers more;
when the link is slow it recomputes more. The benchmark measures every schedule beside its
prediction, and the self test checks every backend operation against a scalar twin.
"""

# ---------------------------------------------------------------------------------------------
# Fixture specifications
# ---------------------------------------------------------------------------------------------

BASE = dict(hidden=32, heads=4, kv_heads=2, head_dim=None, inter=64, layers=2, theta=10000.0,
            max_pos=256, tied=False, dtype="bfloat16", eps=1e-5, prompt=PROMPT, bos=True,
            attention_bias=False, mlp_bias=False, rope=None, sliding_window=None, shard=None,
            eos=EOS, gen_eos=EOS, family="llama", out_scale=0.5)


def spec(name, seed, what, **kw):
    s = dict(BASE)
    s.update(kw)
    s["name"], s["seed"], s["what"] = name, seed, what
    return s


FIXTURES = [
    spec("llama-mha", 1, "Plain Llama with multi-head attention (4 KV heads = 4 query heads, "
         "head_dim = hidden/heads = 8), untied lm_head, f32 weights, default RoPE.",
         kv_heads=4, dtype="float32"),
    spec("llama-gqa-tied", 2, "Llama with grouped-query attention (4 query heads share 2 KV heads), "
         "3 layers, tie_word_embeddings (no lm_head.weight in the file: the output head is "
         "model.embed_tokens.weight), f16 weights.",
         tied=True, layers=3, dtype="float16"),
    spec("llama3-rope", 5, "Llama GQA with Llama-3.1 RoPE scaling (rope_type llama3, factor 8, "
         "low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 32 with "
         "theta 10000 and head_dim 16, so the 8 frequency pairs fall in all three bands: pair 0 "
         "untouched, pair 1 smoothed, pairs 2..7 divided by 8), bf16 weights, tied embeddings.",
         head_dim=16, tied=True, max_pos=256,
         rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    spec("yarn-rope", 5, "Llama GQA with YaRN RoPE (factor 4, original_max_position_embeddings 64, "
         "beta_fast 32, beta_slow 1, theta 10000, head_dim 16, truncate defaulting to true so the "
         "ramp runs from pair 0 to pair 3; attention_factor defaults to 0.1*ln(4)+1 = 1.138629 and "
         "multiplies both cos and sin, i.e. q and k), f16 weights, untied.",
         head_dim=16, dtype="float16",
         rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
               "beta_fast": 32.0, "beta_slow": 1.0}),
    spec("yarn-rope-attn-factor", 6, "Llama GQA with YaRN RoPE whose attention factor comes from "
         "mscale 1.0 / mscale_all_dim 0.5: attention_factor = (0.1*1.0*ln4+1)/(0.1*0.5*ln4+1) = "
         "1.064822 (it multiplies cos and sin); truncate false, so the correction range low/high is "
         "NOT floored/ceiled (ramp over pairs from 0 to 2.095); factor 4, "
         "original_max_position_embeddings 32, theta 500, head_dim 16, bf16, tied.",
         head_dim=16, tied=True, theta=500.0, max_pos=128,
         rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
               "mscale": 1.0, "mscale_all_dim": 0.5, "truncate": False}),
    spec("linear-rope", 7, "Llama GQA with linear RoPE scaling (factor 2: every inverse frequency "
         "is divided by 2, i.e. positions are halved), head_dim 16, bf16, tied.",
         head_dim=16, tied=True, rope={"rope_type": "linear", "factor": 2.0}),
    spec("dynamic-rope", 8, "DYNAMIC_WHAT", head_dim=16, tied=True, max_pos=12,
         rope={"rope_type": "dynamic", "factor": 3.0}),
    spec("llama-attn-bias", 10, "Llama GQA with attention_bias true: q_proj, k_proj, v_proj AND "
         "o_proj all carry non-zero biases (the q/k biases are added before RoPE), bf16, tied.", tied=True,
         attention_bias=True),
    spec("llama-mlp-bias", 20, "Llama GQA with mlp_bias true: gate_proj, up_proj and down_proj "
         "carry non-zero biases, f16, tied.", mlp_bias=True, dtype="float16", tied=True),
    spec("qwen2", 13, "Qwen2 (q/k/v projections have biases, o_proj has none), bf16, sharded into "
         "several model-0000N-of-0000M.safetensors files with model.safetensors.index.json, "
         "tied embeddings (like Qwen2/2.5 0.5B-3B), tokenizer without BOS (add_bos_token false), "
         "generation_config eos_token_id is a list of two ids [3, 2] while config.json has 2.",
         family="qwen2", eps=1e-6, bos=False, shard="40KB", tied=True, gen_eos=[IM_END, EOS], theta=1000000.0),
    spec("qwen3", 12, "Qwen3: per-head RMSNorm q_norm/k_norm (weight shape [head_dim], eps = "
         "rms_norm_eps) applied to q and k after the projection and BEFORE RoPE; explicit head_dim "
         "16 != hidden/heads = 8, so q_proj is [64, 32] and o_proj [32, 64]; no biases, bf16, "
         "tied, no BOS.", tied=True,
         family="qwen3", head_dim=16, eps=1e-6, bos=False, gen_eos=[IM_END, EOS]),
    spec("mistral-window", 30, "Mistral with sliding_window 6 (smaller than the prompt): "
         "the query at position p attends only to keys at positions p-5..p (kv > p - 6), both in "
         "prefill and in every decode step; f16 weights.",
         family="mistral", sliding_window=6, dtype="float16"),
]

DYNAMIC_WHAT = (
    "Llama with dynamic NTK RoPE (factor 3, max_position_embeddings 12, theta 10000, head_dim 16). "
    "transformers recomputes inv_freq once per forward call from seq_len = max(position_ids)+1 of "
    "THAT call, only when seq_len exceeds the largest seq_len seen so far (initially "
    "max_position_embeddings; no change while seq_len <= max_position_embeddings): base' = theta * (factor*seq_len/max_pos - (factor-1))^(dim/(dim-2)), "
    "inv_freq = base'^(-2i/dim). At prefill the whole prompt is rotated with base'(prompt length) "
    "(here 17 > 12); each decode step rotates its single new q/k with "
    "base'(position+1); keys already in the cache keep the rotation they were given when they were "
    "computed (they are never re-rotated). So a cache-free forward over the same tokens gives "
    "different logits.")
for _s in FIXTURES:
    if _s["what"] == "DYNAMIC_WHAT":
        _s["what"] = DYNAMIC_WHAT


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, t in enumerate(SPECIALS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def tokenizer_config(add_bos):
    return {
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


# ---------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------

def make_config(s):
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=s["hidden"],
        intermediate_size=s["inter"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        max_position_embeddings=s["max_pos"],
        rms_norm_eps=s["eps"],
        tie_word_embeddings=s["tied"],
        bos_token_id=BOS,
        eos_token_id=s["eos"],
        pad_token_id=PAD,
        hidden_act="silu",
    )
    if s["head_dim"] is not None:
        common["head_dim"] = s["head_dim"]
    rope = {"rope_type": "default", "rope_theta": s["theta"]}
    if s["rope"] is not None:
        rope = dict(s["rope"])
        rope["rope_theta"] = s["theta"]
    common["rope_parameters"] = rope
    fam = s["family"]
    if fam == "llama":
        return LlamaConfig(attention_bias=s["attention_bias"], mlp_bias=s["mlp_bias"], **common)
    if fam == "qwen2":
        return Qwen2Config(**common)
    if fam == "qwen3":
        return Qwen3Config(attention_bias=False, **common)
    if fam == "mistral":
        return MistralConfig(sliding_window=s["sliding_window"], **common)
    raise ValueError(fam)


def reinit(model, s):
    """Re-initialise every parameter with a wide spread so greedy decisions are not near-ties."""
    g = torch.Generator().manual_seed(s["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            if name.endswith("norm.weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.25 * torch.randn(p.shape, generator=g)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                v = 0.25 * s["out_scale"] * torch.randn(p.shape, generator=g)
            else:
                v = 0.25 * torch.randn(p.shape, generator=g)
            p.copy_(v)


def load(d, config=None):
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if config is not None:
        kw["config"] = config
    m = AutoModelForCausalLM.from_pretrained(d, **kw)
    m.eval()
    return m


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def _cache_of(out):
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


@torch.no_grad()
def greedy(model, prompt_ids, n, forced=None, stepwise_prefill=False):
    """Prefill the prompt, then one token per step with the KV cache. Returns (tokens, [n, V] logits).

    stepwise_prefill feeds the prompt one token at a time (only used to show what dynamic RoPE does
    differently when the prompt is not prefilled in one call)."""
    if stepwise_prefill:
        cache = None
        for t in prompt_ids:
            out = model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
            cache = _cache_of(out)
    else:
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        cache = _cache_of(out)
    logits = out.logits[0, -1].float().clone()
    toks, rows = [], []
    for i in range(n):
        rows.append(logits)
        t = int(torch.argmax(logits)) if forced is None else int(forced[i])
        toks.append(t)
        if i == n - 1:
            break
        out = model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
        cache = _cache_of(out)
        logits = out.logits[0, -1].float().clone()
    return toks, torch.stack(rows)


@torch.no_grad()
def nocache_logits(model, prompt_ids, toks):
    ids = list(prompt_ids) + list(toks[:-1])
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0, len(prompt_ids) - 1:].float()


@torch.no_grad()
def recompute_each_step(model, prompt_ids, toks):
    """Row i from a fresh cache-free forward over prompt + toks[:i] (no KV cache at all)."""
    rows = []
    for i in range(len(toks)):
        ids = list(prompt_ids) + list(toks[:i])
        rows.append(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float())
    return torch.stack(rows)


@torch.no_grad()
def generate_check(model, prompt_ids, n):
    gc = GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=PAD,
                          eos_token_id=None, bos_token_id=BOS)
    res = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                         generation_config=gc, output_logits=True, return_dict_in_generate=True)
    toks = res.sequences[0, len(prompt_ids):].tolist()
    logits = torch.stack([l[0].float() for l in res.logits])
    return toks, logits


def rel_diff(a, b):
    return float((a - b).abs().max() / a.abs().max())


def sig7(x):
    return float(f"{x:.7g}")


# ---------------------------------------------------------------------------------------------
# Feature ablations: each returns a float32 model with the feature removed
# ---------------------------------------------------------------------------------------------

def ablations(s, d):
    """[(label, loader)] where loader() returns a model with one feature removed."""
    out = []
    cfg = transformers.AutoConfig.from_pretrained(d)
    if s["rope"] is not None:
        def no_scaling():
            c = copy.deepcopy(cfg)
            c.rope_parameters = {"rope_type": "default", "rope_theta": s["theta"]}
            return load(d, c)
        out.append(("rope scaling dropped (default RoPE, same theta)", no_scaling))
        rt = s["rope"]["rope_type"]
        if rt == "yarn":
            def default_attn_factor():
                c = copy.deepcopy(cfg)
                rp = dict(c.rope_parameters)
                for k in ("attention_factor", "mscale", "mscale_all_dim"):
                    rp.pop(k, None)
                c.rope_parameters = rp
                return load(d, c)
            if any(k in s["rope"] for k in ("attention_factor", "mscale", "mscale_all_dim")):
                out.append(("attention_factor left at its default 0.1*ln(factor)+1", default_attn_factor))

            def unit_attn_factor():
                c = copy.deepcopy(cfg)
                rp = dict(c.rope_parameters)
                rp.pop("mscale", None)
                rp.pop("mscale_all_dim", None)
                rp["attention_factor"] = 1.0
                c.rope_parameters = rp
                return load(d, c)
            out.append(("attention_factor forced to 1.0 (cos/sin not scaled)", unit_attn_factor))
            if s["rope"].get("truncate") is False:
                def truncated():
                    c = copy.deepcopy(cfg)
                    rp = dict(c.rope_parameters)
                    rp["truncate"] = True
                    c.rope_parameters = rp
                    return load(d, c)
                out.append(("truncate true instead of false", truncated))
    if s["rope"] is not None and s["rope"]["rope_type"] == "dynamic":
        out.append(("prompt prefilled one token at a time (base'(p+1) per prompt position)",
                    lambda: (load(d), "stepwise")))
        out.append(("cached keys re-rotated with the newest base every step (no KV cache)",
                    lambda: (load(d), "recompute")))
    if s["attention_bias"]:
        def no_attn_bias():
            m = load(d)
            with torch.no_grad():
                for n_, p in m.named_parameters():
                    if n_.endswith("_proj.bias") and ".self_attn." in n_:
                        p.zero_()
            return m
        out.append(("q/k/v/o biases zeroed", no_attn_bias))

        def no_o_bias():
            m = load(d)
            with torch.no_grad():
                for n_, p in m.named_parameters():
                    if n_.endswith("o_proj.bias"):
                        p.zero_()
            return m
        out.append(("only o_proj bias zeroed", no_o_bias))
    if s["mlp_bias"]:
        def no_mlp_bias():
            m = load(d)
            with torch.no_grad():
                for n_, p in m.named_parameters():
                    if ".mlp." in n_ and n_.endswith(".bias"):
                        p.zero_()
            return m
        out.append(("gate/up/down biases zeroed", no_mlp_bias))
    if s["family"] == "qwen2":
        def no_qkv_bias():
            m = load(d)
            with torch.no_grad():
                for n_, p in m.named_parameters():
                    if n_.endswith("_proj.bias"):
                        p.zero_()
            return m
        out.append(("q/k/v biases zeroed", no_qkv_bias))
    if s["family"] == "qwen3":
        def no_qk_norm():
            m = load(d)
            for layer in m.model.layers:
                layer.self_attn.q_norm = torch.nn.Identity()
                layer.self_attn.k_norm = torch.nn.Identity()
            return m
        out.append(("q_norm/k_norm removed", no_qk_norm))

        def qk_norm_after_rope():
            # The same q_norm/k_norm, applied after RoPE instead of before it.
            import transformers.models.qwen3.modeling_qwen3 as q3
            m = load(d)
            orig = q3.apply_rotary_pos_emb
            current = {}

            def late_rope(q, k, cos, sin, unsqueeze_dim=1):
                q, k = orig(q, k, cos, sin, unsqueeze_dim)
                return current["q"](q), current["k"](k)

            for layer in m.model.layers:
                att = layer.self_attn
                qn, kn = att.q_norm, att.k_norm
                att.q_norm, att.k_norm = torch.nn.Identity(), torch.nn.Identity()

                def hook(_mod, _args, qn=qn, kn=kn):
                    current["q"], current["k"] = qn, kn
                att.register_forward_pre_hook(hook)
            q3.apply_rotary_pos_emb = late_rope

            def restore():
                q3.apply_rotary_pos_emb = orig
            m._restore = restore
            return m
        out.append(("q_norm/k_norm applied after RoPE instead of before", qk_norm_after_rope))

    if s["sliding_window"] is not None:
        def no_window():
            c = copy.deepcopy(cfg)
            c.sliding_window = None
            return load(d, c)
        out.append(("sliding window removed (full causal attention)", no_window))

        def window_plus_one():
            c = copy.deepcopy(cfg)
            c.sliding_window = s["sliding_window"] + 1
            return load(d, c)
        out.append(("window one larger (p-W..p instead of p-W+1..p)", window_plus_one))
    return out


# ---------------------------------------------------------------------------------------------
# Config facts for humans / the Rust loader
# ---------------------------------------------------------------------------------------------

def config_facts(s, cfg, d):
    hd = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads
    f = {
        "model_type": cfg.model_type,
        "architectures": cfg.architectures,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": hd,
        "head_dim_explicit_and_not_hidden_over_heads": hd != cfg.hidden_size // cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "stored_dtype": s["dtype"],
        "rope_parameters": cfg.rope_parameters,
        "attention_scale": f"1/sqrt(head_dim) = {hd ** -0.5:.7g}",
        "rmsnorm": "x * rsqrt(mean(x^2) + eps) * weight (weight used as is, no +1)",
        "mlp": "down(silu(gate(x)) * up(x))",
        "rope_layout": "rotate_half (NeoX style): pair i is (x[i], x[i + head_dim/2]); "
                       "cos/sin = cat(freqs, freqs) * attention_scaling",
        "max_position_embeddings": cfg.max_position_embeddings,
        "add_bos_token": s["bos"],
        "generation_config_eos_token_id": s["gen_eos"],
        "config_eos_token_id": cfg.eos_token_id,
    }
    if s["family"] == "qwen2":
        f["biases"] = "q_proj/k_proj/v_proj have biases (always, not a config key); o_proj and MLP have none"
        f["sliding_window_in_config"] = cfg.sliding_window
        f["use_sliding_window"] = cfg.use_sliding_window
    if s["family"] == "qwen3":
        f["qk_norm"] = ("q = q_norm(q_proj(x).view(heads, head_dim)); k = k_norm(k_proj(x).view(kv_heads, head_dim)); "
                        "RMSNorm over head_dim with eps = rms_norm_eps, weights self_attn.q_norm.weight / "
                        "self_attn.k_norm.weight of shape [head_dim], shared by all heads; then RoPE")
        f["use_sliding_window"] = cfg.use_sliding_window
        f["sliding_window_in_config"] = cfg.sliding_window
    if s["family"] == "mistral":
        f["sliding_window"] = cfg.sliding_window
        f["window_rule"] = "query at position p sees key positions k with p - sliding_window < k <= p"
    if s["family"] == "llama":
        f["attention_bias"] = cfg.attention_bias
        f["mlp_bias"] = cfg.mlp_bias
    files = sorted(os.listdir(d))
    f["weight_files"] = [x for x in files if x.endswith(".safetensors")]
    if s["rope"] is not None:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        inv, att = ROPE_INIT_FUNCTIONS[s["rope"]["rope_type"]](cfg, "cpu")
        f["inv_freq"] = [sig7(x) for x in inv.tolist()]
        f["attention_scaling"] = sig7(att)
        base = 1.0 / (s["theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        f["inv_freq_unscaled"] = [sig7(x) for x in base.tolist()]
        if s["rope"]["rope_type"] == "dynamic":
            f["inv_freq_note"] = "inv_freq above is at seq_len = max_position_embeddings (= unscaled)"
    return f


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def build_fixture(s, out_root, tok):
    name = s["name"]
    d = os.path.join(out_root, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    torch.manual_seed(s["seed"])
    cfg = make_config(s)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    reinit(model, s)
    model = model.to(getattr(torch, s["dtype"]))
    save_kw = {}
    if s["shard"]:
        save_kw["max_shard_size"] = s["shard"]
    model.save_pretrained(d, safe_serialization=True, **save_kw)
    GenerationConfig(bos_token_id=BOS, eos_token_id=s["gen_eos"], pad_token_id=PAD).save_pretrained(d)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as fh:
        json.dump(tokenizer_config(s["bos"]), fh, indent=2)
        fh.write("\n")
    del model

    # Prompt ids exactly as the Rust side encodes them.
    prompt_ids = ([BOS] if s["bos"] else []) + tok.encode(s["prompt"], add_special_tokens=False).ids
    # transformers' own tokenizer must give the same ids for the text. (transformers 5 drops
    # add_bos_token from tokenizer_config.json when a tokenizer.json exists, so it never adds BOS
    # here; the BOS rule above is kvpr's: prepend bos_token when add_bos_token is true.)
    hf_tok = AutoTokenizer.from_pretrained(d)
    hf_ids = hf_tok(s["prompt"], add_special_tokens=False)["input_ids"]
    assert hf_ids == prompt_ids[1 if s["bos"] else 0:], (hf_ids, prompt_ids)
    assert hf_tok.decode(hf_ids) == s["prompt"]
    assert len(set(prompt_ids)) > 1 and 12 <= len(prompt_ids) <= 24, len(prompt_ids)

    # Reference: fresh load from disk, f32, KV-cached greedy loop.
    ref_model = load(d)
    assert ref_model.config.vocab_size == tok.get_vocab_size()
    toks, logits = greedy(ref_model, prompt_ids, MAX_NEW_TOKENS)
    assert not any(t in range(len(SPECIALS)) for t in toks), (name, "special token generated", toks)
    nocache = nocache_logits(load(d), prompt_ids, toks)
    g_toks, g_logits = generate_check(load(d), prompt_ids, MAX_NEW_TOKENS)
    assert g_toks == toks, (g_toks, toks)
    assert float((g_logits - logits).abs().max()) < 1e-5
    nocache_diff = float((nocache - logits).abs().max())
    if s["rope"] is None or s["rope"]["rope_type"] != "dynamic":
        assert nocache_diff < 1e-4, (name, nocache_diff)
    else:
        assert nocache_diff > 1e-3, (name, nocache_diff)
    top2 = torch.topk(logits, 2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    assert margin > 5e-3, (name, "near-tie", margin)
    assert len(set(toks)) >= 6, (name, "degenerate", toks)

    effects = {}
    for label, loader in ablations(s, d):
        m = loader()
        mode = None
        if isinstance(m, tuple):
            m, mode = m
        if mode == "recompute":
            alt = recompute_each_step(m, prompt_ids, toks)
        else:
            _, alt = greedy(m, prompt_ids, MAX_NEW_TOKENS, forced=toks, stepwise_prefill=(mode == "stepwise"))
        if hasattr(m, "_restore"):
            m._restore()
        effects[label] = sig7(rel_diff(logits, alt))
    feature_effect = None
    if effects:
        first = next(iter(effects))
        feature_effect = effects[first]
        assert all(v > 1e-2 for v in effects.values()), (name, effects)

    cfg_disk = transformers.AutoConfig.from_pretrained(d)
    exp = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "family": s["family"],
        "what": s["what"],
        "prompt": s["prompt"],
        "prompt_ids": prompt_ids,
        "max_new_tokens": MAX_NEW_TOKENS,
        "tokens": toks,
        "text": tok.decode(toks, skip_special_tokens=False),
    }
    if feature_effect is not None:
        exp["feature_effect"] = feature_effect
        exp["feature_effect_definition"] = (
            "max |L - L'| / max |L| over all 16 x vocab logits, L' = same weights with the feature "
            "removed (first entry of feature_effects), teacher-forced on `tokens`")
        exp["feature_effects"] = effects
    exp["min_top2_margin"] = sig7(margin)
    exp["nocache_max_abs_diff"] = sig7(nocache_diff)
    exp["config_facts"] = config_facts(s, cfg_disk, d)
    exp["logits"] = [[sig7(x) for x in row.tolist()] for row in logits]
    with open(os.path.join(d, "expected.json"), "w") as fh:
        json.dump(exp, fh, separators=(",", ":"))
        fh.write("\n")
    for x in os.listdir(d):
        os.chmod(os.path.join(d, x), 0o644)  # save_pretrained writes the weights 0600
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    return {"name": name, "size": size, "feature_effect": feature_effect, "effects": effects,
            "margin": margin, "tokens": toks, "prompt_len": len(prompt_ids), "nocache": nocache_diff}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder, e.g. tests/fixtures/hf")
    ap.add_argument("--only", nargs="*", help="build only these fixtures")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    os.makedirs(args.out, exist_ok=True)
    tok = train_tokenizer()
    rows = []
    for s in FIXTURES:
        if args.only and s["name"] not in args.only:
            continue
        r = build_fixture(s, args.out, tok)
        rows.append(r)
        eff = "" if r["feature_effect"] is None else f" feature_effect={r['feature_effect']:.4g}"
        print(f"{r['name']:24s} {r['size']:8d} B  prompt={r['prompt_len']:2d} margin={r['margin']:.3g}"
              f" nocache={r['nocache']:.2g}{eff}", flush=True)
        for k, v in r["effects"].items():
            print(f"    {v:.4g}  {k}")
    total = 0
    for root, _, files in os.walk(args.out):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(f"total size of {args.out}: {total} bytes ({total / 1e6:.3f} MB)")


if __name__ == "__main__":
    main()
