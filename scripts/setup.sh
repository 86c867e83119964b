#!/usr/bin/env bash
# Create .venv (once) and install camelid with everything its tests and quickstart need. Idempotent.
# Works offline except for the package index. Override the torch pin with TORCH_SPEC (e.g. a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: an unpinned `torch` pulls a multi-GB CUDA build onto CPU machines.
python -m pip show torch >/dev/null 2>&1 || python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" 2>&1 | grep -v "is ignored" || true
# DeepSpeed builds its CUDA ops lazily; DS_BUILD_OPS=0 lets it install (and run ZeRO on CPU) without CUDA.
DS_BUILD_OPS=0 python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
python -c "import camelid, torch, transformers, peft" 
