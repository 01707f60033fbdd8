#!/usr/bin/env bash
# Runs the same prompt with `--schedule transfer` and `--schedule chunked` and
# prints each run's measured and predicted mean decode step side by side, with
# the measured speedup of chunked over transfer. Every figure comes from the
# binary's own `--summary-json` output.
#
# Usage: scripts/compare-schedules.sh KVPR OUT_DIR -- RUN_ARGS...
#   KVPR     the kvpr binary
#   OUT_DIR  where the two summaries are written
#   RUN_ARGS the `kvpr run` arguments shared by both runs (model, profile, prompt...)
set -euo pipefail

kvpr="$1"
out="$2"
shift 2
[[ "${1:-}" == "--" ]] && shift
mkdir -p "$out"

field() { sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" "$1"; }

for schedule in transfer chunked; do
    "$kvpr" run "$@" --schedule "$schedule" --summary-json "$out/$schedule.json" >/dev/null 2>"$out/$schedule.log" \
        || { cat "$out/$schedule.log" >&2; exit 2; }
done

printf '| schedule | measured ms/step | predicted ms/step | measured/predicted |\n'
printf '| -------- | ---------------: | ----------------: | -----------------: |\n'
for schedule in transfer chunked; do
    f="$out/$schedule.json"
    awk -v s="$schedule" -v m="$(field "$f" measured_step_us)" -v p="$(field "$f" predicted_step_us)" \
        'BEGIN { printf "| %8s | %16.2f | %17.2f | %18.2f |\n", s, m / 1e3, p / 1e3, m / p }'
done
awk -v t="$(field "$out/transfer.json" measured_step_us)" -v c="$(field "$out/chunked.json" measured_step_us)" \
    -v pt="$(field "$out/transfer.json" predicted_step_us)" -v pc="$(field "$out/chunked.json" predicted_step_us)" \
    'BEGIN { printf "chunked over transfer: measured speedup %.2fx (predicted %.2fx)\n", t / c, pt / pc }'
