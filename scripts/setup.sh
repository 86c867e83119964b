#!/usr/bin/env bash
# Create the virtual environment (once) and install camelid with everything its tests and quickstart need, at the
# exact versions of constraints.txt. Idempotent. Works offline except for the package index.
#   bash scripts/setup.sh            .venv, locked versions (what the tests last passed with)
#   bash scripts/setup.sh --latest   .venv-latest, the newest versions pyproject.toml allows (finds drift early)
# Override the torch pin with TORCH_SPEC (e.g. a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
LOCK=(-c constraints.txt)
if [ "${1:-}" = "--latest" ]; then
  VENV=.venv-latest
  # Everything to its newest allowed version except torch: an upgraded torch from the index is a CUDA build.
  TORCH_PIN=$(mktemp)
  trap 'rm -f "$TORCH_PIN"' EXIT
  echo "${TORCH_SPEC:-torch==2.13.0}" > "$TORCH_PIN"
  LOCK=(--upgrade --upgrade-strategy eager -c "$TORCH_PIN")
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's full log is long; show what it fetches and installs, so a first run is not minutes of silence.
pip_install() {
  "$VENV/bin/python" -m pip install --progress-bar off "$@" 2>&1 \
    | { grep -E --line-buffered '^(Collecting|Successfully installed|ERROR)' | sed -u 's/^/  /' || true; }
  return "${PIPESTATUS[0]}"
}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
# torch first and pinned: an unpinned `torch` pulls a multi-GB CUDA build onto CPU machines.
if ! "$VENV/bin/python" -m pip show torch >/dev/null 2>&1; then
  echo "setup: installing ${TORCH_SPEC:-torch==2.13.0} (CPU build)"
  pip_install "${TORCH_SPEC:-torch==2.13.0}"
fi
echo "setup: installing camelid[test] into $VENV (${LOCK[*]})"
# DeepSpeed builds its C++/CUDA ops lazily; DS_BUILD_OPS=0 lets it install (and run ZeRO on CPU) without a compiler.
DS_BUILD_OPS=0 pip_install "${LOCK[@]}" -e ".[test]"
# On a CPU-only host DeepSpeed JIT-compiles its shared-memory all-reduce op the first time a ZeRO process group
# starts (~1.5 min of g++): build it here, once, so a training run or the ZeRO test never stalls on a compiler.
"$VENV/bin/python" - <<'PY' 2>&1 | grep -vE "real_accelerator|^$" || true
import importlib.util
if importlib.util.find_spec("deepspeed"):
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    b = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if b is not None and deepspeed.ops.__compatible_ops__.get(b.NAME, False):
        print("setup: DeepSpeed's CPU shared-memory op (compiled once, ~1-2 min the first time)", flush=True)
        b.load(verbose=False)
PY
# From Debian's packages: a headless browser and a Chinese font (the tests look at the HTML report as a person would,
# in screenshots; a page of Chinese answers without a CJK font shows empty boxes), and tcmalloc, which the `camelid`
# command runs on where installed (camelid/allocator.py: CPU training ~1.3x faster at under half glibc's peak RSS).
have_tcmalloc() { "$VENV/bin/python" -c "import sys; from camelid.allocator import fast_allocator_library as f; sys.exit(f() is None)"; }
if ! command -v chromium >/dev/null 2>&1 || [ -z "$(fc-list :lang=zh 2>/dev/null)" ] || ! have_tcmalloc; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium, fonts-wqy-zenhei and libtcmalloc-minimal4 (Debian packages)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        chromium fonts-wqy-zenhei libtcmalloc-minimal4; } 2>&1 \
      | grep -E --line-buffered '^(Setting up (chromium|fonts|libtcmalloc)|E:)' | sed -u 's/^/  /' || true
    command -v chromium >/dev/null 2>&1 || { echo "setup: chromium did not install" >&2; exit 1; }
  else
    echo "setup: no chromium, CJK font or tcmalloc; browser tests will be skipped and camelid runs on the system's"
    echo "  malloc (as root: apt-get install chromium fonts-wqy-zenhei libtcmalloc-minimal4)"
  fi
fi
"$VENV/bin/python" -c "import camelid, torch, transformers; from importlib.metadata import version as v
print('setup: ready:', ', '.join(f'{p} {v(p)}' for p in ('torch', 'transformers', 'peft', 'accelerate')))"
