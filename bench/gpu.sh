#!/usr/bin/env bash
# The GPU benchmark (bench/gpu.py) on a machine with CUDA: fp16, batch 1/8/16/32, tiny ... large-v3
# dimensions with generated weights. Uses the python that has torch with CUDA and openai-whisper
# (PYTHON=...), else .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PYTHON" bench/gpu.py "$@"
