#!/usr/bin/env bash
# Install what is needed, then run the tests. Arguments go to pytest (e.g. -m slow for real-model tests).
#   bash scripts/test.sh --latest [...]   the same tests on the newest versions pyproject.toml allows (.venv-latest)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if [ "${1:-}" = "--latest" ]; then
  shift
  VENV=.venv-latest
  bash scripts/setup.sh --latest
  echo "test: versions that differ from constraints.txt:"
  "$VENV/bin/python" -m pip freeze --exclude-editable 2>/dev/null | sed 's/+cpu$//' | sort \
    | comm -13 <(grep -v '^#' constraints.txt | sort) - | sed 's/^/  /'
else
  bash scripts/setup.sh
fi
exec "$VENV/bin/python" -m pytest "$@"
