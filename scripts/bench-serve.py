#!/usr/bin/env python3
"""A load generator for OpenAI-compatible servers, after `vllm bench serve`.

Usage:
    bench-serve.py --url http://127.0.0.1:8123 --name kvpr --out kvpr.json \
        [--concurrency 1,8,32] [--prompts 32] [--max-tokens 32]

For each concurrency level, the same `--prompts` requests (fixed prompts of
mixed lengths, greedy, streamed) are sent by that many clients at once, each
client taking the next request as soon as its last one ends. Per level it
reports, as `vllm bench serve` does:

* request throughput and output token throughput over the level's wall time;
* TTFT (time to first token: request sent to first text chunk), p50 and p99;
* TPOT (time per output token after the first: (end - first) / (tokens - 1)),
  p50 and p99.

Output tokens are the server's `usage.completion_tokens` where it reports
usage in the stream (`stream_options.include_usage`), else the number of
text chunks. Standard library only; writes one JSON file and prints a table.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

WORDS = (
    "the cache of keys and values grows with every token a model reads and "
    "writes so a long context or a large batch outgrows the memory of the "
    "device and the rest must live in host memory where the link is slow "
    "recomputing part of it from activations costs less than moving it"
).split()


def prompts(n):
    """`n` fixed prompts of 8 to 200 words."""
    out = []
    for i in range(n):
        length = 8 + (i * 37) % 193
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(length)]
        out.append(f"Request {i}: " + " ".join(words))
    return out


def quantile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(url, model, prompt, max_tokens):
    """Sends one streamed completion; returns (ttft_s, total_s, tokens)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft, chunks, usage = None, 0, None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if ev.get("usage"):
            usage = ev["usage"].get("completion_tokens")
        for c in ev.get("choices") or []:
            if c.get("text"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    conn.close()
    tokens = usage if usage is not None else chunks
    return (ttft if ttft is not None else total), total, tokens


def level(url, model, work, concurrency, max_tokens):
    results, errors = [], []
    lock = threading.Lock()
    queue = list(enumerate(work))

    def client():
        while True:
            with lock:
                if not queue:
                    return
                _, p = queue.pop(0)
            try:
                r = one_request(url, model, p, max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # reported, never hidden
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    ttft = [r[0] for r in results]
    tpot = [(r[1] - r[0]) / (r[2] - 1) for r in results if r[2] > 1]
    tokens = sum(r[2] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "wall_s": wall,
        "output_tokens": tokens,
        "request_throughput": len(results) / wall,
        "output_tokens_per_s": tokens / wall,
        "ttft_p50_s": quantile(ttft, 0.5),
        "ttft_p99_s": quantile(ttft, 0.99),
        "tpot_p50_s": quantile(tpot, 0.5),
        "tpot_p99_s": quantile(tpot, 0.99),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    work = prompts(a.prompts)
    # One request first, so lazy start-up work is not timed.
    one_request(a.url, a.model, "warm up", 2)
    rows = []
    for c in levels:
        r = level(a.url, a.model, work, c, a.max_tokens)
        rows.append(r)
        print(
            f"{a.name:>10} c={c:<3} {r['requests']} req in {r['wall_s']:.1f} s: "
            f"{r['output_tokens_per_s']:.1f} tok/s, TTFT p50 {r['ttft_p50_s']*1e3:.0f} ms "
            f"p99 {r['ttft_p99_s']*1e3:.0f} ms, TPOT p50 {r['tpot_p50_s']*1e3:.1f} ms "
            f"p99 {r['tpot_p99_s']*1e3:.1f} ms",
            file=sys.stderr,
        )
    with open(a.out, "w") as f:
        json.dump({"server": a.name, "prompts": a.prompts, "max_tokens": a.max_tokens, "levels": rows}, f, indent=1)


if __name__ == "__main__":
    main()
