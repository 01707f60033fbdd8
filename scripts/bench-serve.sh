#!/usr/bin/env bash
# `make bench-serve`: kvpr serve against llama.cpp's server (llama-cpp-python,
# PyPI) on the same GGUF, the same prompts and the same concurrency, one after
# the other on this machine, with scripts/bench-serve.py as the load generator.
#
# Usage: scripts/bench-serve.sh KVPR MODEL OUT_DIR LLAMA_DIR LLAMA_VERSION
#
# llama-cpp-python is built from source by pip (its C++ compile takes some
# minutes on two cores) into LLAMA_DIR, once; LLAMA_DIR/installed marks a
# finished install. Both servers get the machine's cores, a context of 4096
# tokens and greedy decoding (llama-cpp-python's server would otherwise cut a
# streaming request short when the next one comes: --interrupt_requests
# False); kvpr runs under its default `offload` policy
# with the whole K/V on the device (the CPU backend's "device" is this
# machine's memory).
set -euo pipefail

kvpr="$1" model="$2" out="$3" llama="$4" version="$5"
mkdir -p "$out"
cores="$(nproc)"
kvpr_port=8123 llama_port=8124

wait_ready() { # URL PID
    for _ in $(seq 1 600); do
        if curl -sf "$1" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$2" 2>/dev/null; then echo "bench-serve.sh: the server exited" >&2; return 1; fi
        sleep 0.5
    done
    echo "bench-serve.sh: $1 never answered" >&2
    return 1
}

if [[ ! -e "$llama/installed" ]]; then
    echo "bench-serve.sh: building llama-cpp-python[server]==$version into $llama (some minutes) ..." >&2
    rm -rf "$llama"
    CMAKE_BUILD_PARALLEL_LEVEL="$cores" python3 -m pip install --quiet --target "$llama" \
        "llama-cpp-python[server]==$version" >&2
    touch "$llama/installed"
fi

"$kvpr" calibrate --quick --model "$model" --out "$out/cpu.json" >&2

echo "== kvpr serve" >&2
"$kvpr" serve --model "$model" --hardware "$out/cpu.json" --port "$kvpr_port" \
    --max-running 32 --max-model-len 4096 2> "$out/kvpr-serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$kvpr_port/health" "$pid"
python3 scripts/bench-serve.py --url "http://127.0.0.1:$kvpr_port" --name kvpr --out "$out/kvpr.json"
kill -TERM "$pid"; wait "$pid" || true

# The cost model's figures for a decode step of each batch, on the profile
# just measured: its compute floor (FLOPs over measured throughput) and its
# prediction, at the prompts' mean length (about 128 tokens) and 32 new ones.
for c in 1 8 32; do
    "$kvpr" plan --model "$model" --hardware "$out/cpu.json" --batch "$c" --prompt-len 128 \
        --gen-len 32 --gpu-memory-budget 64GiB --out "$out/plan-$c.json" 2>/dev/null
done

echo "== llama.cpp server (llama-cpp-python $version)" >&2
PYTHONPATH="$llama" python3 -m llama_cpp.server --model "$model" --port "$llama_port" \
    --n_ctx 4096 --n_threads "$cores" --n_threads_batch "$cores" --interrupt_requests False \
    2> "$out/llama-server.log" &
pid=$!
wait_ready "http://127.0.0.1:$llama_port/v1/models" "$pid"
python3 scripts/bench-serve.py --url "http://127.0.0.1:$llama_port" --name llama.cpp --out "$out/llama.json"
kill -TERM "$pid"; wait "$pid" || true

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
a, b = (json.load(open(f"{out}/{n}.json")) for n in ("kvpr", "llama"))
print("| clients | server | requests | output tokens | output tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms "
      "| kvpr / llama.cpp tok/s | kvpr step: compute floor / predicted ms | kvpr TPOT p50 / floor |")
print("|---|---|---|---|---|---|---|---|---|---|")
for ra, rb in zip(a["levels"], b["levels"]):
    c = ra["concurrency"]
    plan = json.load(open(f"{out}/plan-{c}.json"))["summary"]
    floor, pred = plan["compute_floor_step_us"] / 1e3, plan["predicted_decode_step_us"] / 1e3
    for name, r in (("kvpr", ra), ("llama.cpp", rb)):
        kv = name == "kvpr"
        ratio = f"{ra['output_tokens_per_s'] / rb['output_tokens_per_s']:.2f}x" if kv else ""
        model = f"{floor:.1f} / {pred:.1f}" if kv else ""
        vs = f"{r['tpot_p50_s'] * 1e3 / floor:.2f}x" if kv else ""
        print(f"| {c} | {name} | {r['requests']} | {r['output_tokens']} | {r['output_tokens_per_s']:.1f} | "
              f"{r['ttft_p50_s']*1e3:.0f} / {r['ttft_p99_s']*1e3:.0f} | "
              f"{r['tpot_p50_s']*1e3:.1f} / {r['tpot_p99_s']*1e3:.1f} | {ratio} | {model} | {vs} |")
PY
