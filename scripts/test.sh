#!/usr/bin/env bash
# Install what is needed, then run the tests. Arguments go to pytest (e.g. -m slow for real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
