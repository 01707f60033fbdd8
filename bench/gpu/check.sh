#!/usr/bin/env bash
# bench/gpu/check.sh OUTDIR: the one command for a GPU machine (no Rust, no network).
#
# Run from the repository root, with the release binary carried at bin/kvpr
# (or bench/gpu/bin/kvpr, or named by KVPR_BIN):
#
#   cargo build --release && mkdir -p bin && cp target/release/kvpr bin/
#   bash bench/gpu/check.sh OUT
#
# It finds the CUDA libraries, then runs, each section under its own time
# budget so the whole script ends in under 10 minutes:
#   a. device identity          (identity.log)
#   b. kvpr selftest, f16/bf16/f32 on cuda:0              (selftest-*.log)
#   c. kvpr calibrate on cuda:0, with PyTorch's own figures beside it
#                               (hardware.json, torch.json, calibration.md/.csv)
#   d. kvpr bench, Llama-2-7B shape, f16, batch 8, contexts 4096..16384
#                               (bench.csv/.json/.svg, headline.md/.csv)
#   e. the Hugging Face offloaded-cache peer, same shape  (peer.csv)
#   f. a short kvpr run of a synthetic preset on cuda:0 and on the CPU,
#      compared token for token (run-cuda.json, run-cpu.json)
#   g. kvpr overflow, Llama-2-7B shape, f16, every policy at 0.5 and 0.8 of the K/V memory
#      beside the unpressured run (overflow.json/.csv, overflow/*.svg)
#   k. serving contexts beyond the device: the serving engine under offload (admitting by
#      offload) and swap, Llama-2-7B shape, f16, requests whose K/V is 2x and 4x the
#      device's K/V memory; throughput against the link floor (serve.json/.csv)
#   j. loading a random 1B-shape bf16 checkpoint (written here by Python, in /tmp) on cuda:0
#      in bf16: load rate against a plain read, peak RSS against the checkpoint (load/)
#   i. every transformers fixture of tests/fixtures/hf (Llama, Llama-3.1/YaRN/linear
#      RoPE, biases, Qwen2, Qwen3, Mistral's window) run on cuda:0 in f32 (must give
#      transformers' tokens) and bf16 (agreement reported) (families.md)
#   h. OUTDIR/summary.md, printed last.
# A failing section does not stop the others; the script exits 1 if any
# section failed or was skipped, 2 on bad usage.
#
# Environment: KVPR_BIN (the binary), PYTHON (default python3),
# CHECK_BUDGET_S (whole-run budget, default 540), PEER_CONTEXTS (default
# 4096,8192,16384), and BUDGET_<SECTION> for each section's seconds (below).
# CHECK_SECTIONS runs some sections only (e.g. "identity calibrate overflow");
# CHECK_HARDWARE names a profile measured before on this kind of device, used
# instead of calibrating (e.g. bench/results/2026-11-25-h200/hardware.json).

# The sections are called by name in a loop at the end:
# shellcheck disable=SC2329
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
  echo "usage: bash bench/gpu/check.sh OUTDIR   (run from the repository root)" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd) # the repository root, wherever this is run from
PY=${PYTHON:-python3}
START=$(date +%s)
DEADLINE=$((START + ${CHECK_BUDGET_S:-540}))

# Seconds per section (a section never runs past the overall deadline either).
B_IDENTITY=${BUDGET_IDENTITY:-15}
B_SELFTEST=${BUDGET_SELFTEST:-25}    # per dtype
B_CALIBRATE=${BUDGET_CALIBRATE:-60}  # a --quick retry gets B_CALIBRATE_QUICK
B_CALIBRATE_QUICK=${BUDGET_CALIBRATE_QUICK:-30}
B_TORCH=${BUDGET_TORCH:-35}
B_BENCH=${BUDGET_BENCH:-200}
B_PEER=${BUDGET_PEER:-100}
B_RUN=${BUDGET_RUN:-20}              # per device (and the CPU profile they plan with)
B_OVERFLOW=${BUDGET_OVERFLOW:-160}
B_SERVE=${BUDGET_SERVE:-120}
B_FAMILIES=${BUDGET_FAMILIES:-120}   # all fixtures, both dtypes
B_LOAD=${BUDGET_LOAD:-150}           # writing the 2.5 GB checkpoint, then one load
# Serving under KV overflow on the GPU: requests x input x output tokens, and
# the shares of the workload's K/V that the cache holds (on an H200 this took
# 116 s, 10 s of it loading the weights; bench/results/2026-11-26-h200-overflow.md).
OVERFLOW_WORKLOAD=${OVERFLOW_WORKLOAD:-32,384,128}
OVERFLOW_FRACTIONS=${OVERFLOW_FRACTIONS:-0.5,0.8}
# The serve section: its workload, and the device's K/V memory as shares of
# the workload's K/V (0.5 and 0.25: the requests hold 2x and 4x of it).
SERVE_WORKLOAD=${SERVE_WORKLOAD:-32,1024,128}
SERVE_FRACTIONS=${SERVE_FRACTIONS:-0.5,0.25}
# kvpr bench loads Llama-2-7B's seeded weights on the host (~7B random numbers)
# and pins a host store per schedule (68 GiB of K/V at batch 8, context 16384),
# so 16384 is left to a run with more time: BENCH_CONTEXTS=4096,8192,16384.
BENCH_CONTEXTS=${BENCH_CONTEXTS:-4096,8192}
PEER_CONTEXTS=${PEER_CONTEXTS:-4096,8192}

# ------------------------------------------------------------ bookkeeping
S_NAME=()
S_STATUS=()
S_FIG=()
FAILED=0
RC=0
STATUS=ok
LAST_T=0
record() { # record NAME STATUS FIGURE
  S_NAME+=("$1")
  S_STATUS+=("$2")
  S_FIG+=("${3//|//}")
  [[ "$2" == ok ]] || FAILED=$((FAILED + 1))
  printf '[%s] %s: %s\n' "$2" "$1" "$3"
}

have() { command -v "$1" >/dev/null 2>&1; }

# step NAME BUDGET CMD...: run CMD with a timeout, output to OUT/NAME.log.
# Sets RC (0 ok, 124 timeout, 127 missing command, else the command's) and
# STATUS; never fails the script.
step() {
  local name=$1 budget=$2
  shift 2
  local left=$((DEADLINE - $(date +%s)))
  local t=$((budget < left ? budget : left))
  local log="$OUT/$name.log"
  if ((t < 5)); then
    RC=125
    STATUS=skipped
    echo "skipped: the ${CHECK_BUDGET_S:-540} s budget is spent" >"$log"
    return 0
  fi
  LAST_T=$t
  echo "== $name (timeout ${t}s): $*"
  local t0
  t0=$(date +%s)
  RC=0
  {
    echo "\$ $*"
    echo "# $(date -u +%FT%TZ), timeout ${t}s"
  } >"$log"
  timeout --kill-after=10 "$t" "$@" >>"$log" 2>&1 || RC=$?
  echo "# exit $RC after $(($(date +%s) - t0)) s" >>"$log"
  case $RC in
    0) STATUS=ok ;;
    124 | 137) STATUS=TIMEOUT ;;
    126 | 127) STATUS=MISSING ;;
    *) STATUS=FAILED ;;
  esac
  if [[ $STATUS != ok ]]; then
    tail -n 6 "$log" | sed 's/^/    /'
  fi
}

# Why a step ended as it did: its first line that says "error", else its last
# line, leaving out our own bookkeeping, shortened for the table.
last_line() {
  local body
  body=$(grep -v '^# \|^\$ \|^[[:space:]]*$' "$1" 2>/dev/null || true)
  { grep -i -m1 'error' <<<"$body" || tail -n 1 <<<"$body"; } | cut -c1-140
}

# ------------------------------------------------------------ the binary
KVPR=${KVPR_BIN:-}
if [[ -z $KVPR ]]; then
  for c in "$ROOT/bin/kvpr" "$ROOT/bench/gpu/bin/kvpr" "$ROOT/target/release/kvpr"; do
    if [[ -x $c ]]; then
      KVPR=$c
      break
    fi
  done
fi
if [[ -n $KVPR && -x $KVPR ]]; then
  KVPR_OK=1
  record binary ok "$KVPR ($("$KVPR" --version 2>/dev/null || echo 'version unknown'))"
else
  KVPR_OK=0
  record binary MISSING "no kvpr binary: copy target/release/kvpr to bin/kvpr, or set KVPR_BIN"
fi
PY_OK=0
if have "$PY"; then PY_OK=1; fi

# why LOG: what to say about a step that did not end well.
why() {
  local l
  l=$(last_line "$1")
  if [[ $STATUS == TIMEOUT ]]; then
    echo "timed out after ${LAST_T}s (its budget)${l:+; last: $l}"
  else
    echo "exit $RC${l:+: $l}"
  fi
}

# kvpr_step NAME BUDGET ARGS...: step with the binary, or MISSING without it.
kvpr_step() {
  local name=$1 budget=$2
  shift 2
  if ((KVPR_OK)); then
    step "$name" "$budget" "$KVPR" "$@"
  else
    RC=127
    STATUS=MISSING
    echo "no kvpr binary" >"$OUT/$name.log"
  fi
}
py_step() {
  local name=$1 budget=$2
  shift 2
  if ((PY_OK)); then
    step "$name" "$budget" "$PY" "$@"
  else
    RC=127
    STATUS=MISSING
    echo "no $PY on PATH (set PYTHON)" >"$OUT/$name.log"
  fi
}

# ------------------------------------------------------------ CUDA libraries
# kvpr loads libcuda.so.1 (the driver), libcublas.so.13 and libnvrtc.so.13 at
# run time. Look in the loader's cache, the CUDA toolkits, the distribution's
# library folder and the pip `nvidia` packages (PyTorch's CUDA libraries).
find_cuda_libs() {
  local dirs=() d f
  for d in /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib \
    /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib; do
    [[ -d $d ]] && dirs+=("$d")
  done
  if ((PY_OK)); then
    local site
    while IFS= read -r site; do
      [[ -n $site ]] || continue
      for d in "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib; do
        [[ -d $d ]] && dirs+=("$d")
      done
    done < <("$PY" - 2>/dev/null <<'EOF' || true
import os, site, sys
seen = set()
try:
    import nvidia
    for p in nvidia.__path__:
        seen.add(os.path.dirname(p))
except Exception:
    pass
for p in site.getsitepackages() + [site.getusersitepackages()] + sys.path:
    if p and os.path.isdir(os.path.join(p, "nvidia")):
        seen.add(p)
print("\n".join(sorted(seen)))
EOF
    )
  fi
  local missing=() found=() add=()
  for f in libcuda.so.1 libcublas.so.13 libnvrtc.so.13; do
    local hit=""
    if have ldconfig; then
      hit=$(ldconfig -p 2>/dev/null | awk -v f="$f" '$1 == f && $0 !~ /stubs/ {print $NF; exit}' || true)
    fi
    if [[ -z $hit ]]; then
      for d in "${dirs[@]}"; do
        if [[ -e $d/$f && $d != */stubs* ]]; then
          hit=$d/$f
          break
        fi
      done
    fi
    if [[ -n $hit ]]; then
      found+=("$f=$hit")
      add+=("$(dirname "$hit")")
    else
      missing+=("$f")
    fi
  done
  local d2 uniq=""
  for d2 in "${add[@]}"; do
    case ":$uniq:" in *":$d2:"*) ;; *) uniq=${uniq:+$uniq:}$d2 ;; esac
  done
  if [[ -n $uniq ]]; then
    export LD_LIBRARY_PATH="$uniq${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  {
    echo "searched: ldconfig -p ${dirs[*]}"
    printf 'found: %s\n' "${found[@]}"
    if ((${#missing[@]})); then printf 'missing: %s\n' "${missing[@]}"; fi
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  } >"$OUT/cuda-libs.log"
  if ((${#missing[@]})); then
    record cuda-libs MISSING "not found: ${missing[*]} (see cuda-libs.log)"
  else
    record cuda-libs ok "libcuda.so.1, libcublas.so.13, libnvrtc.so.13 found"
  fi
}
find_cuda_libs

# ------------------------------------------------------------ a. identity
section_identity() {
  if ! have nvidia-smi; then
    {
      echo "nvidia-smi not found: no NVIDIA driver on this machine"
      uname -a
    } >"$OUT/identity.log"
    record identity MISSING "no GPU: nvidia-smi not found"
    return
  fi
  step identity "$B_IDENTITY" bash -c '
    nvidia-smi
    echo
    nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max,compute_cap --format=csv
    echo
    nvidia-smi -q | head -n 60
    echo
    uname -a
    grep -m1 "model name" /proc/cpuinfo || true
    grep MemTotal /proc/meminfo || true
    '"$PY"' -c "import torch, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"| transformers\", transformers.__version__)" 2>&1 || true'
  local fig
  fig=$(nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
    --format=csv,noheader 2>/dev/null | head -n 1 || true)
  if [[ $STATUS == ok && -n $fig ]]; then
    IFS=',' read -r n drv mem gen width <<<"$fig"
    record identity ok "$n, driver${drv}, ${mem# }, PCIe gen${gen} x${width# }"
  else
    record identity "${STATUS/ok/FAILED}" "nvidia-smi failed (no GPU or no driver): $(last_line "$OUT/identity.log")"
  fi
}

# ------------------------------------------------------------ b. selftest
section_selftest() {
  local dt
  for dt in f16 bf16 f32; do
    kvpr_step "selftest-$dt" "$B_SELFTEST" selftest --device cuda:0 --dtype "$dt"
    case $RC in
      0) record "selftest $dt" ok "$(grep -m1 'checks on' "$OUT/selftest-$dt.log" || echo 'all ops and schedules match the CPU')" ;;
      1) record "selftest $dt" FAILED "mismatch (exit 1): $(grep -ci 'fail\|mismatch' "$OUT/selftest-$dt.log") failing lines, see selftest-$dt.log" ;;
      *) record "selftest $dt" "$STATUS" "$(why "$OUT/selftest-$dt.log")" ;;
    esac
  done
}

# ------------------------------------------------------------ c. calibrate
section_calibrate() {
  rm -f "$OUT/hardware.json"
  if [[ -n ${CHECK_HARDWARE:-} ]]; then
    # A profile measured before on this kind of device: no calibration.
    if cp "$CHECK_HARDWARE" "$OUT/hardware.json" 2>/dev/null; then
      record calibrate ok "CHECK_HARDWARE=$CHECK_HARDWARE (not measured in this run)"
    else
      record calibrate FAILED "CHECK_HARDWARE=$CHECK_HARDWARE cannot be read"
    fi
    return
  fi
  kvpr_step calibrate "$B_CALIBRATE" calibrate --device cuda:0 --model preset:llama-2-7b --out "$OUT/hardware.json"
  local how=full log=calibrate
  if [[ $STATUS == TIMEOUT || ($STATUS == FAILED && $RC != 2) ]]; then
    echo "   full calibration $STATUS; retrying with --quick"
    kvpr_step calibrate-quick "$B_CALIBRATE_QUICK" calibrate --device cuda:0 --quick --model preset:llama-2-7b --out "$OUT/hardware.json"
    how=quick
    log=calibrate-quick
  fi
  if [[ $STATUS == ok && -s $OUT/hardware.json ]]; then
    record calibrate ok "hardware.json written ($how)"
  else
    record calibrate "$STATUS" "$(why "$OUT/$log.log")"
  fi

  # PyTorch's own figures, at the profile's shapes where there is a profile.
  local prof=()
  [[ -s $OUT/hardware.json ]] && prof=(--profile "$OUT/hardware.json")
  py_step torch-ref "$B_TORCH" "$HERE/torch_ref.py" --out "$OUT/torch.json" "${prof[@]}"
  if [[ $STATUS != ok ]]; then
    record pytorch-ref "$STATUS" "$(why "$OUT/torch-ref.log")"
    return
  fi
  record pytorch-ref ok "$(grep -m1 '^link' "$OUT/torch-ref.log" || true); $(grep '^gemm 4096x4096x4096 bf16' "$OUT/torch-ref.log" || true)"
  local fig rc=0
  fig=$("$PY" "$HERE/summarize.py" calib --profile "$OUT/hardware.json" --torch "$OUT/torch.json" \
    --md "$OUT/calibration.md" --csv "$OUT/calibration.csv" 2>&1) || rc=$?
  if ((rc == 0)); then
    record "calibration vs PyTorch" ok "$fig (all within 5%)"
  else
    record "calibration vs PyTorch" FAILED "$fig"
  fi
}

# ------------------------------------------------------------ d. bench
section_bench() {
  local hw="$OUT/hardware.json"
  rm -f "$OUT/bench.csv" "$OUT/bench.json" "$OUT/bench.svg"
  if [[ ! -s $hw ]]; then
    record bench skipped "no hardware.json (calibrate failed)"
    return
  fi
  kvpr_step bench "$B_BENCH" bench --model preset:llama-2-7b --hardware "$hw" --device cuda:0 --dtype f16 \
    --batch 8 --context-len "$BENCH_CONTEXTS" --schedules transfer,paper,chunked,recompute-all \
    --steps 4 --warmup 1 --csv "$OUT/bench.csv" --json "$OUT/bench.json" --plot "$OUT/bench.svg"
  if [[ $STATUS == ok ]]; then
    record bench ok "bench.csv: $(($(wc -l <"$OUT/bench.csv") - 1)) rows"
  else
    record bench "$STATUS" "$(why "$OUT/bench.log")"
  fi
}

# ------------------------------------------------------------ e. the peer
section_peer() {
  rm -f "$OUT/peer.csv"
  py_step peer "$B_PEER" "$ROOT/bench/peers/hf_offloaded_cache.py" --preset llama-2-7b --dtype f16 \
    --batch 8 --context-len "$PEER_CONTEXTS" --csv "$OUT/peer.csv"
  local fig=""
  if [[ -s $OUT/peer.csv ]]; then
    fig=$("$PY" "$HERE/summarize.py" peer --peer "$OUT/peer.csv" 2>&1 || true)
  fi
  local skipped
  skipped=$(grep -h 'skipped:\|failed:' "$OUT/peer.log" 2>/dev/null | cut -c1-110 | paste -sd';' - || true)
  if [[ $STATUS == ok ]]; then
    record peer ok "$fig"
  elif [[ -n $fig ]]; then
    record peer "$STATUS" "partial: $fig; contexts asked: $PEER_CONTEXTS${skipped:+; $skipped}"
  else
    record peer "$STATUS" "$(why "$OUT/peer.log")"
  fi
}

# ------------------------------------------------------------ f. run, GPU vs CPU
section_run() {
  rm -f "$OUT/run-cuda.json" "$OUT/run-cpu.json"
  # Both runs plan on the fly from one f32 profile (the GPU's has its own
  # dtypes): this machine's CPU, measured quickly. The plan only shapes the
  # split; the tokens must not depend on it.
  local hw="$OUT/hardware-cpu.json"
  kvpr_step calibrate-cpu "$B_RUN" calibrate --device cpu --quick --model preset:llama-2-7b-tiny --out "$hw"
  local args=(run --model preset:llama-2-7b-tiny --hardware "$hw" --dtype f32
    --prompt "The quick brown fox" --max-new-tokens 16)
  kvpr_step run-cuda "$B_RUN" "${args[@]}" --device cuda:0 --summary-json "$OUT/run-cuda.json"
  local cuda_status=$STATUS cuda_rc=$RC
  kvpr_step run-cpu "$B_RUN" "${args[@]}" --device cpu --summary-json "$OUT/run-cpu.json"
  local cpu_status=$STATUS cpu_rc=$RC
  if [[ $cuda_status != ok || $cpu_status != ok ]]; then
    local why=""
    [[ $cuda_status == ok ]] || why="cuda: $cuda_status, exit $cuda_rc: $(last_line "$OUT/run-cuda.log")"
    [[ $cpu_status == ok ]] || why="${why:+$why; }cpu: $cpu_status, exit $cpu_rc: $(last_line "$OUT/run-cpu.log")"
    local st=$cuda_status
    [[ $st == ok ]] && st=$cpu_status
    record "run cuda vs cpu" "$st" "$why"
    return
  fi
  local fig rc=0
  fig=$("$PY" "$HERE/summarize.py" tokens "$OUT/run-cuda.json" "$OUT/run-cpu.json" 2>&1) || rc=$?
  if ((rc == 0)); then
    record "run cuda vs cpu" ok "tokens $fig"
  else
    record "run cuda vs cpu" FAILED "tokens $fig"
  fi
}

# ------------------------------------------------------------ i. model families
# The tiny checkpoints transformers wrote travel with the repository: each runs
# on cuda:0 in f32 (transformers' tokens, exactly) and in bf16 (tokens that
# agree, reported: bf16 rounding may flip a near tie).
section_families() {
  local dir="$ROOT/tests/fixtures/hf" md="$OUT/families.md" hw="" f
  for f in "$OUT/hardware.json" "${CHECK_HARDWARE:-}"; do
    if [[ -n $f && -f $f ]]; then
      hw=$f
      break
    fi
  done
  if [[ ! -d $dir ]]; then
    record families SKIPPED "no $dir"
    return
  fi
  {
    echo "| fixture | dtype | status | tokens agreeing with transformers |"
    echo "|---|---|---|---:|"
  } >"$md"
  local bad=0 n=0 name dt prof
  for f in "$dir"/*/expected.json; do
    name=$(basename "$(dirname "$f")")
    for dt in f32 bf16; do
      prof="$ROOT/plans/hardware/cpu-reference.json"
      if [[ $dt == bf16 ]]; then
        [[ -n $hw ]] || continue
        prof=$hw
      fi
      local js="$OUT/families-$name-$dt.json"
      local prompt
      prompt=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["prompt"])' "$f")
      kvpr_step "families-$name-$dt" 20 run --model "$dir/$name" --device cuda:0 --dtype "$dt" \
        --hardware "$prof" --prompt "$prompt" --max-new-tokens 16 --ignore-eos --summary-json "$js"
      n=$((n + 1))
      local agree="-"
      if [[ $STATUS == ok ]]; then
        agree=$("$PY" -c 'import json,sys
e=json.load(open(sys.argv[1]))["tokens"]; g=json.load(open(sys.argv[2]))["tokens"][0]
print(sum(a==b for a,b in zip(e,g)), "/", len(e), sep="")' "$f" "$js" 2>&1) || agree="unreadable"
        if [[ $dt == f32 && $agree != 16/16 ]]; then STATUS=FAILED; fi
      fi
      [[ $STATUS == ok ]] || bad=$((bad + 1))
      echo "| $name | $dt | $STATUS | $agree |" >>"$md"
    done
  done
  if ((bad == 0)); then
    record families ok "$n runs; f32 = transformers' tokens on every fixture (families.md)"
  else
    record families FAILED "$bad of $n runs not ok (families.md)"
  fi
}

# ------------------------------------------------------------ j. loading
# Loading for a 16-bit device: the targets are a load rate of at least 0.7 of
# a plain read of the files and a peak RSS of at most 1.3x the checkpoint.
section_load() {
  local hw="" f
  for f in "$OUT/hardware.json" "${CHECK_HARDWARE:-}"; do
    if [[ -n $f && -f $f ]]; then
      hw=$f
      break
    fi
  done
  if [[ -z $hw ]]; then
    record load SKIPPED "needs a GPU profile (calibrate section or CHECK_HARDWARE) for the bf16 run's plan"
    return
  fi
  py_step load "$B_LOAD" "$ROOT/scripts/bench-load.py" --kvpr "$KVPR" --out "$OUT/load" \
    --cache "${TMPDIR:-/tmp}/kvpr-bench-load" --device cuda:0 --hardware "$hw"
  if [[ $STATUS == ok ]]; then
    record load ok "$(grep -m2 '^| load rate\|^| peak RSS' "$OUT/load.log" | tr '\n' ' ' | cut -c1-200)"
  else
    record load "$STATUS" "$(why "$OUT/load.log")"
  fi
}

# ------------------------------------------------------------ g. overflow
section_overflow() {
  local hw="$OUT/hardware.json"
  rm -rf "$OUT/overflow.json" "$OUT/overflow.csv" "$OUT/overflow"
  if [[ ! -s $hw ]]; then
    record overflow skipped "no hardware.json (calibrate failed)"
    return
  fi
  local n i o
  IFS=, read -r n i o <<<"$OVERFLOW_WORKLOAD"
  kvpr_step overflow "$B_OVERFLOW" overflow --model preset:llama-2-7b --hardware "$hw" --device cuda:0 \
    --dtype f16 --requests "$n" --input-len "$i" --output-len "$o" --kv-memory-fraction "$OVERFLOW_FRACTIONS" \
    --json "$OUT/overflow.json" --csv "$OUT/overflow.csv" --plot "$OUT/overflow"
  if [[ $STATUS != ok ]]; then
    record overflow "$STATUS" "$(why "$OUT/overflow.log")"
    return
  fi
  local fig rc=0
  fig=$("$PY" "$HERE/summarize.py" overflow "$OUT/overflow.json" 2>&1) || rc=$?
  if ((rc == 0)); then
    record overflow ok "$fig"
  else
    record overflow FAILED "$fig"
  fi
}

# ------------------------------------------------------------ k. serve
section_serve() {
  local hw="$OUT/hardware.json"
  rm -f "$OUT/serve.json" "$OUT/serve.csv"
  if [[ ! -s $hw ]]; then
    record serve skipped "no hardware.json (calibrate failed)"
    return
  fi
  local n i o
  IFS=, read -r n i o <<<"$SERVE_WORKLOAD"
  kvpr_step serve "$B_SERVE" overflow --model preset:llama-2-7b --hardware "$hw" --device cuda:0 \
    --dtype f16 --requests "$n" --input-len "$i" --output-len "$o" --policy offload,swap \
    --kv-memory-fraction "$SERVE_FRACTIONS" --max-batch "$n" \
    --json "$OUT/serve.json" --csv "$OUT/serve.csv"
  if [[ $STATUS != ok ]]; then
    record serve "$STATUS" "$(why "$OUT/serve.log")"
    return
  fi
  local fig rc=0
  fig=$("$PY" "$HERE/summarize.py" serve "$OUT/serve.json" 2>&1) || rc=$?
  if ((rc == 0)); then
    record serve ok "$fig"
  else
    record serve FAILED "$fig"
  fi
}

# ------------------------------------------------------------ headline
section_headline() {
  rm -f "$OUT/headline.md" "$OUT/headline.csv"
  if [[ ! -s $OUT/bench.csv ]]; then
    record headline skipped "no bench.csv"
    return
  fi
  local fig rc=0
  fig=$("$PY" "$HERE/summarize.py" headline --bench "$OUT/bench.csv" --peer "$OUT/peer.csv" --context 8192 \
    --md "$OUT/headline.md" --csv "$OUT/headline.csv" 2>&1) || rc=$?
  if ((rc == 0)); then
    record headline ok "$fig (bar met)"
  else
    record headline FAILED "$fig"
  fi
}

# Each section runs whatever happened before it; none can stop the script.
for s in ${CHECK_SECTIONS:-identity selftest calibrate bench peer run overflow serve families load headline}; do
  if ! declare -F "section_$s" >/dev/null; then
    echo "CHECK_SECTIONS: no section '$s' (identity selftest calibrate bench peer run overflow serve families load headline)" >&2
    exit 2
  fi
  "section_$s" || record "$s" FAILED "internal error in section_$s (exit $?)"
done

# ------------------------------------------------------------ h. summary
{
  echo "# kvpr GPU check"
  echo
  echo "- date: $(date -u +%FT%TZ), $(($(date +%s) - START)) s"
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || echo 'no GPU')"
  echo "- host: $(uname -n), $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //' || true)"
  echo "- command: \`bash bench/gpu/check.sh $1\` with KVPR_BIN=$KVPR"
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ ",$BENCH_CONTEXTS," != *,16384,* || ",$PEER_CONTEXTS," != *,16384,* ]]; then
    echo "- contexts: kvpr bench $BENCH_CONTEXTS, the peer $PEER_CONTEXTS (16384 needs more than this call's 10 minutes; set BENCH_CONTEXTS / PEER_CONTEXTS)"
  fi
  echo
  echo "| section | status | key figure |"
  echo "|---|---|---|"
  for i in "${!S_NAME[@]}"; do
    echo "| ${S_NAME[$i]} | ${S_STATUS[$i]} | ${S_FIG[$i]} |"
  done
  echo
  echo "$FAILED section(s) not ok. Logs, CSV and markdown: $OUT"
  for f in headline.md calibration.md; do
    if [[ -s $OUT/$f ]]; then
      echo
      cat "$OUT/$f"
    fi
  done
} >"$OUT/summary.md"

echo
cat "$OUT/summary.md"
if ((FAILED)); then
  exit 1
fi
exit 0
