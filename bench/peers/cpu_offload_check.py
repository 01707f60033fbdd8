#!/usr/bin/env python3
"""Run the peer's offloaded-cache code path on a machine with no GPU.

transformers' offloading needs CUDA streams, so the peer turns it off on the
CPU. This check forces `DynamicCache(..., offloading=True)` and replaces the
CUDA streams with no-ops: offload and prefetch then copy CPU to CPU, but the
cache's own update/prefetch/offload sequence runs exactly as on a GPU, through
the peer's fill and decode loop. It counts the offloads and prefetches and
exits non-zero if there were none or the peer failed. It says nothing about
timing.

  python3 bench/peers/cpu_offload_check.py --preset tiny-gqa --dtype f32 \
      --batch 2 --context-len 40,64 --steps 4 --warmup 1
"""

import contextlib
import importlib.util
import os
import sys

import torch
import transformers
from transformers import cache_utils


class NoStream(contextlib.nullcontext):
    def wait_stream(self, other):
        pass


def main(argv):
    torch.Stream = NoStream
    torch.cuda.Stream = NoStream
    torch.cuda.default_stream = lambda device=None: NoStream()
    calls = {"offload": 0, "prefetch": 0}
    layer = cache_utils.DynamicLayer
    offload, prefetch = layer.offload, layer.prefetch

    def counted_offload(self):
        calls["offload"] += 1
        return offload(self)

    def counted_prefetch(self):
        calls["prefetch"] += 1
        return prefetch(self)

    layer.offload, layer.prefetch = counted_offload, counted_prefetch

    class Offloaded(transformers.DynamicCache):
        def __init__(self, *a, **k):
            k["offloading"] = True
            super().__init__(*a, **k)

    transformers.DynamicCache = Offloaded
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_offloaded_cache.py")
    spec = importlib.util.spec_from_file_location("hf_offloaded_cache", path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    rc = peer.main([*argv, "--device", "cpu"])
    print(f"offloads {calls['offload']}, prefetches {calls['prefetch']}, peer exit {rc}")
    return 0 if rc == 0 and calls["offload"] and calls["prefetch"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
