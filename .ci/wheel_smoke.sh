#!/usr/bin/env bash
# Build the wheel, install it (not editable) into a fresh venv, and run .ci/smoke_wheel.py from a
# folder outside the checkout. Dependencies come from the indexes pip is configured with, through
# pip's cache. Work goes under $TMPDIR; SMOKE_ARGS passes options to the smoke script.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
BIN=${BIN:-.venv/bin}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wheel-smoke.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

t0=$(date +%s)
"$BIN/python" -m build --wheel --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
wheel=$(ls "$WORK"/dist/trident_search-*.whl)
echo "built $(basename "$wheel") in $(( $(date +%s) - t0 )) s"
echo "wheel contents (top level): $(unzip -Z1 "$wheel" | cut -d/ -f1 | sort -u | tr '\n' ' ')"

t0=$(date +%s)
"$PYTHON" -m venv "$WORK/venv"
# --no-compile: byte-compiling torch & co. costs minutes and the smoke test imports a fraction of it.
# (pip warns once per package about configured index folders that lack it: noise, filtered out)
"$WORK/venv/bin/pip" install -q --no-compile "$wheel" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
(( PIPESTATUS[0] == 0 )) || { echo "pip install of the wheel failed"; exit 1; }
echo "installed the wheel and its dependencies into a fresh venv in $(( $(date +%s) - t0 )) s"

mkdir "$WORK/run"
cd "$WORK/run"
t0=$(date +%s)
# -I: neither the checkout nor PYTHONPATH is on sys.path.
"$WORK/venv/bin/python" -I "$REPO/.ci/smoke_wheel.py" --corpus "$REPO/data/demo/scifact-demo" ${SMOKE_ARGS:-}
echo "smoke test ran in $(( $(date +%s) - t0 )) s"
