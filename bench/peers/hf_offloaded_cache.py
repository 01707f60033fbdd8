#!/usr/bin/env python3
"""The peer: decode with Hugging Face transformers' offloaded KV cache.

A model of the same shape as a kvpr preset, with seeded random weights, in the
same dtype, batch and context as `kvpr bench`, decodes with
`DynamicCache(config=..., offloading=True)` (transformers 5.x): every layer's
K/V lives in host memory and layer i+1 is prefetched on a side stream while
layer i computes. Each decode step is timed and printed in kvpr's units
(milliseconds per decode step).

The cache is filled with random K/V (no prefill): for a context C, each layer
gets C - warmup - steps random positions through the cache's own `update`
(so they are offloaded the way the library offloads them), then `warmup` steps
run untimed and `steps` steps are timed. The timed steps therefore read
C - steps .. C - 1 cached positions (mean C - (steps+1)/2), and the cache
never exceeds C positions. Keeping the cache at most C positions also keeps
PyTorch's pinned-memory allocator, which rounds each block up to a power of
two, at one block size per tensor for the whole run.

What the peer does per decode step, as transformers ships it (5.24's
cache_utils): for each layer, wait for the prefetch of this layer, start the
prefetch of the next (host to device, side stream), concatenate the new
token's K/V onto the layer's whole K/V on the device, then copy the whole
result back to host memory (device to host, default stream). So each step moves
every layer's K/V across the link in both directions.

Host memory: about 2 * layers * K-bytes-per-layer of pinned memory (64 GiB for
llama-2-7b, f16, batch 8, context 16384); a context that would take more than
--host-memory-fraction of the available memory is skipped with a message.

Usage (GPU machine):
  python3 bench/peers/hf_offloaded_cache.py --preset llama-2-7b --dtype f16 \
      --batch 8 --context-len 4096,8192,16384 --steps 16 --warmup 2 --csv peer.csv

Exit status: 0 on success, 1 when a context failed, 2 when PyTorch,
transformers or CUDA is missing or the arguments are wrong.
"""

import argparse
import csv
import gc
import inspect
import os
import sys
import time

# Shapes of kvpr's presets (plans/src/model.rs): layers, hidden, heads,
# kv heads, head_dim, intermediate, vocab, rope theta.
PRESETS = {
    "llama-2-7b": (32, 4096, 32, 32, 128, 11008, 32000, 1e4),
    "llama-2-13b": (40, 5120, 40, 40, 128, 13824, 32000, 1e4),
    "llama-3-8b": (32, 4096, 32, 8, 128, 14336, 128256, 5e5),
    "llama-2-7b-tiny": (8, 256, 4, 4, 64, 688, 2048, 1e4),
    "llama-3-8b-tiny": (8, 256, 8, 2, 32, 896, 2048, 5e5),
    "tiny-mha": (2, 64, 4, 4, 16, 172, 256, 1e4),
    "tiny-gqa": (2, 64, 4, 1, 16, 172, 256, 1e4),
}
DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4}
PEER = "hf-offloaded-cache"


def fail(msg, code=2):
    print(f"hf_offloaded_cache: error: {msg}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Decode with Hugging Face transformers' offloaded KV cache "
        "on a kvpr preset's shape (random weights) and print ms per decode step."
    )
    p.add_argument("--preset", default="llama-2-7b", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="f16", choices=sorted(DTYPE_BYTES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--context-len",
        default="4096,8192,16384",
        help="comma-separated contexts (tokens already cached at a decode step)",
    )
    p.add_argument("--steps", type=int, default=16, help="timed decode steps per context")
    p.add_argument("--warmup", type=int, default=2, help="untimed decode steps first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", help="write peer,model,dtype,batch,context,step_ms here")
    p.add_argument(
        "--host-memory-fraction",
        type=float,
        default=0.85,
        help="skip a context whose pinned K/V would exceed this fraction of the host's available memory (default 0.85)",
    )
    # Hidden: run on the CPU to check the code path on a machine with no GPU.
    # transformers' offloading needs CUDA, so the CPU run uses the plain cache.
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--no-offload", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        a.contexts = [int(x) for x in a.context_len.split(",") if x.strip()]
    except ValueError:
        p.error(f"--context-len: expected comma-separated integers, got {a.context_len!r}")
    if not a.contexts or min(a.contexts) <= a.steps + a.warmup:
        p.error(f"--context-len: every context must exceed --steps + --warmup ({a.steps + a.warmup})")
    if a.batch < 1 or a.steps < 1 or a.warmup < 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0")
    return a


def host_available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def pow2ceil(n):
    return 1 << (n - 1).bit_length()


def gib(n):
    return n / 2**30


def write_csv(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["peer", "model", "dtype", "batch", "context", "step_ms"])
        w.writerows(rows)
    os.replace(tmp, path)


def main(argv):
    a = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        fail(f"PyTorch is not installed ({e}); install torch (a CUDA build) to run the peer")
    try:
        import transformers
        from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        fail(f"Hugging Face transformers is not installed ({e}); install transformers 5.x")
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        fail(f"transformers {transformers.__version__} found; this peer needs 5.x (DynamicCache offloading)")

    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            fail(
                f"CUDA is not available to PyTorch {torch.__version__} "
                f"(torch.version.cuda={torch.version.cuda}); the peer needs a GPU"
            )
        if dev.index is None:
            dev = torch.device("cuda", 0)
    offload = dev.type == "cuda" and not a.no_offload
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[a.dtype]
    L, h, nh, nkv, hd, inter, vocab, theta = PRESETS[a.preset]
    p = DTYPE_BYTES[a.dtype]

    cfg_kwargs = {
        "vocab_size": vocab,
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": L,
        "num_attention_heads": nh,
        "num_key_value_heads": nkv,
        "head_dim": hd,
        "max_position_embeddings": max(a.contexts) + 64,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
    }
    try:
        config = LlamaConfig(**cfg_kwargs)
    except TypeError:  # an early 5.x without rope_parameters
        cfg_kwargs.pop("rope_parameters")
        config = LlamaConfig(rope_theta=theta, **cfg_kwargs)

    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    with torch.device(dev):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.eval()
    # transformers renamed forward's `past_key_values` to `cache` within 5.x.
    fwd_params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in fwd_params else "past_key_values"

    def new_cache():
        try:
            return DynamicCache(config=model.config, offloading=offload)
        except TypeError as e:
            fail(f"DynamicCache(config=..., offloading=...) is not supported here: {e}")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # What the cache really does (the CPU check forces offloading on).
    offloading = bool(getattr(new_cache(), "offloading", offload))
    params = sum(t.numel() for t in model.parameters())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"peer: {PEER} | transformers {transformers.__version__} | torch {torch.__version__} | "
        f"{name} | {a.preset} ({L} layers, h {h}, {nh} heads / {nkv} kv heads, "
        f"{params / 1e9:.2f} B params) {a.dtype} | batch {a.batch} | "
        f"offloading {'on' if offloading else 'off'} | model built in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    if not offloading:
        print(
            "note: offloading is off (it needs CUDA); the cache stays on the device, "
            "so these figures are a code-path check, not the peer's",
            flush=True,
        )

    rows, failed = [], []
    for ctx in a.contexts:
        # Bytes of one layer's K (or V) at the largest cache this run holds.
        tensor_bytes = a.batch * nkv * ctx * hd * p
        need = 2 * L * pow2ceil(tensor_bytes)
        avail = host_available_bytes()
        if offloading and avail is not None and need > a.host_memory_fraction * avail:
            msg = (
                f"context {ctx}: skipped: the offloaded K/V needs ~{gib(need):.1f} GiB of pinned host "
                f"memory, {gib(avail):.1f} GiB available (limit {a.host_memory_fraction:.0%})"
            )
            print(msg, flush=True)
            failed.append(ctx)
            continue
        fill = ctx - a.steps - a.warmup
        try:
            cache = new_cache()
            t0 = time.perf_counter()
            g = torch.Generator(device=dev).manual_seed(a.seed + ctx)
            with torch.no_grad():
                for i in range(L):
                    k = torch.randn((a.batch, nkv, fill, hd), generator=g, device=dev, dtype=dtype)
                    v = torch.randn((a.batch, nkv, fill, hd), generator=g, device=dev, dtype=dtype)
                    cache.update(k, v, i)
                    del k, v
            sync()
            fill_s = time.perf_counter() - t0
            ids = torch.randint(0, vocab, (a.batch, 1), generator=g, device=dev)
            times_ms = []
            wall = 0.0
            with torch.no_grad():
                for step in range(a.warmup + a.steps):
                    timed = step >= a.warmup
                    if timed and dev.type == "cuda":
                        ev0 = torch.cuda.Event(enable_timing=True)
                        ev1 = torch.cuda.Event(enable_timing=True)
                    sync()
                    t = time.perf_counter()
                    if timed and dev.type == "cuda":
                        ev0.record()
                    out = model(input_ids=ids, use_cache=True, **{cache_kw: cache})
                    ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                    if timed and dev.type == "cuda":
                        ev1.record()
                    sync()
                    dt = time.perf_counter() - t
                    if timed:
                        wall += dt
                        times_ms.append(ev0.elapsed_time(ev1) if dev.type == "cuda" else dt * 1e3)
                    del out
            seen = cache.get_seq_length()
            if seen != ctx:
                raise RuntimeError(f"cache holds {seen} positions after the run, expected {ctx}")
            step_ms = wall * 1e3 / a.steps
            srt = sorted(times_ms)
            med = srt[len(srt) // 2] if len(srt) % 2 else (srt[len(srt) // 2 - 1] + srt[len(srt) // 2]) / 2
            kv_step = 2 * L * a.batch * nkv * (ctx - (a.steps + 1) / 2) * hd * p
            print(
                f"context {ctx}: {step_ms:.2f} ms per decode step (mean of {a.steps}; "
                f"{'events' if dev.type == 'cuda' else 'wall'}: median {med:.2f}, min {srt[0]:.2f}) | "
                f"K/V read per step {gib(kv_step):.2f} GiB = {kv_step / (step_ms / 1e3) / 1e9:.1f} GB/s | "
                f"cache filled in {fill_s:.1f} s",
                flush=True,
            )
            rows.append((PEER, a.preset, a.dtype, a.batch, ctx, f"{step_ms:.4f}"))
            if a.csv:  # after every context, so a run cut short keeps what it measured
                write_csv(a.csv, rows)
        except torch.cuda.OutOfMemoryError as e:
            print(f"context {ctx}: failed: out of device memory: {str(e).splitlines()[0]}", flush=True)
            failed.append(ctx)
        except RuntimeError as e:
            print(f"context {ctx}: failed: {str(e).splitlines()[0]}", flush=True)
            failed.append(ctx)
        finally:
            cache = None
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.empty_cache()
                # Give the pinned blocks back, or the next context's would come on top.
                if hasattr(torch._C, "_host_emptyCache"):
                    torch._C._host_emptyCache()

    if a.csv:
        write_csv(a.csv, rows)
        print(f"wrote {a.csv} ({len(rows)} rows)")
    if failed:
        print(f"contexts not measured: {','.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
