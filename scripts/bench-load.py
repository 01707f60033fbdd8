#!/usr/bin/env python3
"""Load benchmark: kvpr loading a random checkpoint of a 1B shape stored in bf16.

    python3 scripts/bench-load.py --kvpr target/release/kvpr --out target/bench-load [--device cpu|cuda:0] [--cache DIR]

Writes (once, cached under --out) a Hugging Face directory with Llama-3.2-1B's
shape (hidden 2048, 16 layers, 32 heads / 8 KV heads, FFN 8192, vocab 128256,
tied embeddings, llama3 RoPE) and random bf16 weights in two safetensors
shards with an index; no numpy, no torch: the format is written by hand. Then:

* the floor: a plain sequential read of the same files from the page cache
  (read twice, the second timed), GB/s;
* kvpr: `kvpr run --max-new-tokens 1` on the directory, its load time (from
  its own `loaded ... in X s` line) and the peak RSS of the process (the
  largest resident set of the child, from getrusage);
* the ratios the issue sets targets for: the load rate over the plain read
  rate (target >= 0.7) and the peak RSS over the checkpoint's size (target
  <= 1.3 when loading for a 16-bit device). On the CPU backend the device is
  host memory in f32, twice the checkpoint, so its RSS is also shown over the
  f32 copy the device must hold.

Prints a markdown table and writes results.json under --out.
"""

import argparse
import json
import os
import random
import re
import resource
import struct
import subprocess
import sys
import time

SHAPE = dict(hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, ffn=8192, vocab=128256)


def tensors(s):
    """(name, shape) of every tensor, in checkpoint order."""
    h, q, kv, f, v = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["ffn"], s["vocab"]
    out = [("model.embed_tokens.weight", [v, h])]
    for i in range(s["layers"]):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", [h]),
            (f"{p}.self_attn.q_proj.weight", [q, h]),
            (f"{p}.self_attn.k_proj.weight", [kv, h]),
            (f"{p}.self_attn.v_proj.weight", [kv, h]),
            (f"{p}.self_attn.o_proj.weight", [h, q]),
            (f"{p}.post_attention_layernorm.weight", [h]),
            (f"{p}.mlp.gate_proj.weight", [f, h]),
            (f"{p}.mlp.up_proj.weight", [f, h]),
            (f"{p}.mlp.down_proj.weight", [h, f]),
        ]
    out.append(("model.norm.weight", [h]))
    return out


def bf16_block(n, rng):
    """n random bf16 values (0.008 <= |x| < 0.06, a weight's scale) as bytes: a 1 MiB
    pattern of random values repeated, so writing 2.5 GB takes seconds."""
    pattern = bytes(
        b
        for _ in range(1 << 19)
        for b in struct.pack("<H", (0x3C00 + rng.randrange(0x0180)) | (rng.randrange(2) << 15))
    )
    reps, rest = divmod(2 * n, len(pattern))
    return pattern * reps + pattern[:rest]


def write_checkpoint(d):
    os.makedirs(d, exist_ok=True)
    s = SHAPE
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": s["hidden"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "head_dim": s["head_dim"],
        "intermediate_size": s["ffn"],
        "vocab_size": s["vocab"],
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "torch_dtype": "bfloat16",
    }
    rng = random.Random(0)
    block = bf16_block(1 << 20, rng)
    names = tensors(s)
    half = len(names) // 2
    weight_map = {}
    for k, part in enumerate([names[:half], names[half:]]):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        header, off = {}, 0
        for name, shape in part:
            n = 1
            for x in shape:
                n *= x
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + 2 * n]}
            off += 2 * n
            weight_map[name] = fname
        hjson = json.dumps(header, separators=(",", ":")).encode()
        hjson += b" " * (-len(hjson) % 8)
        with open(os.path.join(d, fname), "wb") as f:
            f.write(struct.pack("<Q", len(hjson)))
            f.write(hjson)
            for name, shape in part:
                n = 2 * header[name]["shape"][0] * (header[name]["shape"][1] if len(shape) > 1 else 1)
                while n > 0:
                    chunk = block[: min(n, len(block))]
                    f.write(chunk)
                    n -= len(chunk)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    # A tokenizer: the small byte-level BPE of the test fixtures (its ids are
    # all inside the vocabulary).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.join(root, "tests", "fixtures", "hf", "llama-mha", "tokenizer.json")
    with open(src, "rb") as a, open(os.path.join(d, "tokenizer.json"), "wb") as b:
        b.write(a.read())


def files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))


def plain_read(paths):
    """Seconds to read every file sequentially (1 MiB reads), warm."""
    def once():
        t = time.perf_counter()
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass
        return time.perf_counter() - t
    once()
    return min(once(), once())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvpr", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hardware", default=None, help="profile for the run's on-the-fly plan")
    ap.add_argument("--cache", default=None, help="where the checkpoint is written (default: --out)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    d = os.path.join(a.cache or a.out, "llama-1b-bf16")
    if not os.path.exists(os.path.join(d, "config.json")):
        print(f"writing a random 1B-shape bf16 checkpoint to {d} ...", file=sys.stderr)
        write_checkpoint(d)
    paths = files(d)
    size = sum(os.path.getsize(p) for p in paths)
    read_s = plain_read(paths)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hw = a.hardware or os.path.join(root, "plans", "hardware", "cpu-reference.json")
    cmd = [a.kvpr, "run", "--model", d, "--device", a.device, "--hardware", hw,
           "--prompt", "hello", "--max-new-tokens", "1"]
    if a.device != "cpu":
        cmd += ["--dtype", "bf16"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if p.returncode != 0:
        print(p.stderr, file=sys.stderr)
        sys.exit(f"kvpr run failed (exit {p.returncode})")
    m = re.search(r"loaded .* in ([0-9.]+) s", p.stderr)
    load_s = float(m.group(1)) if m else float("nan")
    n_params = size / 2
    device_bytes = n_params * (4 if a.device == "cpu" else 2)
    r = {
        "device": a.device,
        "checkpoint_bytes": size,
        "plain_read_s": read_s,
        "plain_read_gbps": size / read_s / 1e9,
        "kvpr_load_s": load_s,
        "kvpr_load_gbps": size / load_s / 1e9,
        "load_over_plain_read": (size / load_s) / (size / read_s),
        "kvpr_run_wall_s": wall,
        "peak_rss_bytes": rss,
        "peak_rss_over_checkpoint": rss / size,
        "device_copy_bytes": device_bytes,
        "peak_rss_over_device_copy": rss / device_bytes,
        "command": " ".join(cmd),
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(r, f, indent=1)
    gb = lambda b: f"{b / 1e9:.2f} GB"
    print(f"| figure | value | floor / target | ratio |")
    print(f"|---|---:|---:|---:|")
    print(f"| load rate ({a.device}) | {r['kvpr_load_gbps']:.2f} GB/s ({load_s:.2f} s) | plain read {r['plain_read_gbps']:.2f} GB/s ({read_s:.2f} s) | {r['load_over_plain_read']:.2f} (target >= 0.70) |")
    print(f"| peak RSS | {gb(rss)} | checkpoint {gb(size)} | {r['peak_rss_over_checkpoint']:.2f} (target <= 1.30 for a 16-bit device) |")
    if a.device == "cpu":
        print(f"| peak RSS | {gb(rss)} | the CPU backend's f32 copy {gb(device_bytes)} | {r['peak_rss_over_device_copy']:.2f} |")


if __name__ == "__main__":
    main()
