#!/usr/bin/env bash
# Fetches the OpenAI Python client (PyPI `openai`, pinned, with its
# dependencies) into a folder importable with PYTHONPATH, for the test that
# drives `kvpr serve` with it.
#
# Usage: scripts/fetch-openai.sh VERSION DIR
#
# The wheels are fetched with `pip download` (for this interpreter and
# platform) and unpacked with Python's zipfile: no virtual environment and
# no install into the system's Python, which some distributions refuse
# (PEP 668). The folder is complete only once DIR/installed exists, written
# last; a fetch cut short is redone from scratch.
set -euo pipefail

version="$1"
dir="$2"

if [[ -e "$dir/installed" ]]; then
    exit 0
fi
if command -v python3 >/dev/null 2>&1; then
    PIP=(python3 -m pip)
else
    echo "fetch-openai.sh: python3 not found; install Python 3 with pip" >&2
    exit 1
fi

rm -rf "$dir"
mkdir -p "$dir"
work="$(mktemp -d "$dir.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetch-openai.sh: downloading openai==$version and its dependencies ..." >&2
"${PIP[@]}" download --quiet --only-binary=:all: --dest "$work" "openai==$version" >&2

python3 - "$work" "$dir" <<'PY'
import pathlib, sys, zipfile
work, out = map(pathlib.Path, sys.argv[1:3])
wheels = sorted(work.glob("*.whl"))
if not wheels:
    sys.exit("fetch-openai.sh: pip downloaded no wheels")
for w in wheels:
    with zipfile.ZipFile(w) as z:
        z.extractall(out)
PY
python3 -c "import sys; sys.path.insert(0, '$dir'); import openai; print('fetch-openai.sh: openai', openai.__version__, 'in $dir', file=sys.stderr)"
touch "$dir/installed"
