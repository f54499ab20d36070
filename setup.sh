#!/usr/bin/env bash
# One command sets everything up: a virtual environment in .venv with neuralworld
# and everything it needs (ViZDoom, PyTorch, the test tools).
#
#   ./setup.sh             CPU build of PyTorch (what a laptop or CI wants)
#   TORCH="torch" ./setup.sh   let pip choose the build for this platform (CUDA on a GPU box)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"

"$PYTHON" - <<'PY' || { echo "neuralworld needs Python >= 3.11" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# Torch first, pinned, so the open range in pyproject.toml is already met and
# nothing pulls a multi-GB build this machine does not need.
"${PIP[@]}" install "$TORCH"
"${PIP[@]}" install -e ".[doom,dev,onnx,agents]"
# onnxruntime-web (pinned in package.json / package-lock.json) for `neuralworld export --web`
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error \
    || echo "npm ci failed: neuralworld export --web will say how to install onnxruntime-web; the rest works" >&2
else
  echo "npm not found: skipping onnxruntime-web (only neuralworld export --web needs it; install Node.js, then npm ci)" >&2
fi
echo "neuralworld is set up: .venv/bin/neuralworld --help"
