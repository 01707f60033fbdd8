#!/usr/bin/env python3
"""PyTorch's own figures for what `kvpr calibrate` measures, on the same GPU.

  pinned host-to-device (and device-to-host) bandwidth, GB/s (1 GB = 1e9 B),
  timed with CUDA events over repeated copies of one pinned buffer;
  GEMM throughput, TFLOP/s (2*m*n*k per product), [m, k] x [k, n].

With --profile (a `kvpr.hardware/v1` file) it also measures at the profile's
shapes, so the two can be compared point for point: the link at the size of
the profile's largest `link.h2d_pinned` point, and the GEMM at the largest
(m*n*k) point of each dtype in `gemm.points`. It always measures the link at
256 MiB and 1 GiB and the GEMM at 4096 x 4096 x 4096 in bf16 and f16.

Writes JSON to --out:
  {"torch": ver, "device": name, "h2d_pinned": [{bytes, gbps}], "d2h_pinned": [...],
   "gemm": [{m, n, k, dtype, tflops}], "allow_tf32": bool}
Exit 2 when PyTorch or CUDA is missing.
"""

import argparse
import json
import os
import sys

MIB = 1 << 20


def fail(msg):
    print(f"torch_ref: error: {msg}", file=sys.stderr)
    sys.exit(2)


def profile_shapes(path):
    """The link size and GEMM shapes to match in a kvpr profile (or none)."""
    if not path or not os.path.exists(path):
        return None, []
    try:
        with open(path) as f:
            prof = json.load(f)
    except (OSError, ValueError) as e:
        print(f"torch_ref: cannot read {path}: {e}; measuring the default shapes only", file=sys.stderr)
        return None, []
    link_bytes = None
    pts = ((prof.get("link") or {}).get("h2d_pinned") or {}).get("points") or []
    if pts:
        link_bytes = int(max(pts, key=lambda p: p["bytes"])["bytes"])
    best = {}
    for p in (prof.get("gemm") or {}).get("points") or []:
        key = p.get("dtype")
        if key not in ("f16", "bf16", "f32"):
            continue
        if key not in best or p["m"] * p["n"] * p["k"] > best[key]["m"] * best[key]["n"] * best[key]["k"]:
            best[key] = p
    return link_bytes, [(int(p["m"]), int(p["n"]), int(p["k"]), d) for d, p in sorted(best.items())]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", help="kvpr.hardware/v1 file whose shapes to measure too")
    ap.add_argument("--out", required=True, help="write the figures here (JSON)")
    ap.add_argument("--device", default="cuda:0")
    a = ap.parse_args(argv)
    try:
        import torch
    except ImportError as e:
        fail(f"PyTorch is not installed ({e})")
    if not torch.cuda.is_available():
        fail(f"CUDA is not available to PyTorch {torch.__version__} (torch.version.cuda={torch.version.cuda})")
    dev = torch.device(a.device)
    torch.cuda.set_device(dev)

    def timed(fn, *args, target_s=0.25, max_reps=200, **kwargs):
        """Mean seconds of fn(*args, **kwargs) after a warm-up, timed with CUDA events."""
        for _ in range(2):
            fn(*args, **kwargs)
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn(*args, **kwargs)
        e1.record()
        torch.cuda.synchronize()
        one = max(e0.elapsed_time(e1) / 1e3, 1e-6)
        reps = max(3, min(max_reps, int(target_s / one)))
        e0.record()
        for _ in range(reps):
            fn(*args, **kwargs)
        e1.record()
        torch.cuda.synchronize()
        return e0.elapsed_time(e1) / 1e3 / reps

    link_bytes, gemm_shapes = profile_shapes(a.profile)
    sizes = sorted({256 * MIB, 1024 * MIB} | ({link_bytes} if link_bytes else set()))
    res = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(dev),
        "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "h2d_pinned": [],
        "d2h_pinned": [],
        "gemm": [],
    }
    for n in sizes:
        host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        host.fill_(1)
        gpu = torch.empty(n, dtype=torch.uint8, device=dev)
        s = timed(gpu.copy_, host, non_blocking=True)
        res["h2d_pinned"].append({"bytes": n, "gbps": round(n / s / 1e9, 3)})
        s = timed(host.copy_, gpu, non_blocking=True)
        res["d2h_pinned"].append({"bytes": n, "gbps": round(n / s / 1e9, 3)})
        print(
            f"link {n / MIB:.0f} MiB: h2d {res['h2d_pinned'][-1]['gbps']} GB/s, d2h {res['d2h_pinned'][-1]['gbps']} GB/s"
        )
        del host, gpu
    dtypes = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
    shapes = [(4096, 4096, 4096, "bf16"), (4096, 4096, 4096, "f16")]
    shapes += [s for s in gemm_shapes if s not in shapes]
    for m, n, k, d in shapes:
        try:
            x = torch.randn(m, k, device=dev, dtype=dtypes[d])
            w = torch.randn(k, n, device=dev, dtype=dtypes[d])
            out = torch.empty(m, n, device=dev, dtype=dtypes[d])
            s = timed(torch.matmul, x, w, out=out)
            tf = 2.0 * m * n * k / s / 1e12
            res["gemm"].append({"m": m, "n": n, "k": k, "dtype": d, "tflops": round(tf, 3)})
            print(f"gemm {m}x{n}x{k} {d}: {tf:.1f} TFLOP/s")
            del x, w, out
        except RuntimeError as e:
            print(f"gemm {m}x{n}x{k} {d}: failed: {str(e).splitlines()[0]}", file=sys.stderr)
        torch.cuda.empty_cache()
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
