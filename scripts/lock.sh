#!/usr/bin/env bash
# Write constraints.txt from a virtual environment whose test run passed (default .venv-latest, after
# `bash scripts/test.sh --latest` and `bash scripts/test.sh --latest -m slow`). Review the diff before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-latest}
{
  sed -n '/^#/p' constraints.txt
  "$VENV/bin/python" -m pip freeze --exclude-editable 2>/dev/null | sed 's/+cpu$//'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
git --no-pager diff --stat constraints.txt || true
