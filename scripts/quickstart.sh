#!/usr/bin/env bash
# Install, then fine-tune SmolLM2-135M-Instruct with LoRA on real zh/en instructions, on CPU.
# Arguments are config overrides, e.g. train.max_steps=20.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/camelid quickstart "$@"
