#!/usr/bin/env bash
# Idempotent set-up: libtorch, then a release build of cnnprobe.
#
#   ./scripts/setup.sh                  PyPI's torch 2.13.0 in a cached venv (or $LIBTORCH)
#   ./scripts/setup.sh --torch PYTHON   the PyTorch 2.11–2.13 already in PYTHON's environment
#   ./scripts/setup.sh --torch existing the one of `python3` on PATH
#
#   CNNPROBE_TORCH       the same as --torch, for setup.sh, run.sh and test.sh alike
#   CNNPROBE_VENV        venv location (default ~/.cache/cnnprobe/torch-2.13.0)
#   CNNPROBE_TORCH_INDEX a PyTorch wheel index URL, e.g. a cu12x build for older drivers
#                        (PyPI's default 2.13.0 wheel needs a CUDA 13 driver)
set -euo pipefail
if [[ ${1:-} == --torch ]]; then
  export CNNPROBE_TORCH=${2:?usage: setup.sh [--torch existing|PYTHON]}
elif (($#)); then
  echo "usage: setup.sh [--torch existing|PYTHON]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if [[ -n ${CNNPROBE_TORCH:-} ]]; then
  echo "setup: using PyTorch $CNNPROBE_TORCH_VERSION in $CNNPROBE_TORCH_DIR (tch $CNNPROBE_TCH_VERSION)"
elif [[ -n ${LIBTORCH:-} ]]; then
  echo "setup: using LIBTORCH=$LIBTORCH"
elif ! "$CNNPROBE_VENV/bin/python" -c "import torch, torchvision, numpy, sklearn" 2>/dev/null; then
  echo "setup: installing torch==$CNNPROBE_TORCH_VERSION into $CNNPROBE_VENV (one-off, a few minutes)"
  mkdir -p "$(dirname "$CNNPROBE_VENV")"
  [[ -x $CNNPROBE_VENV/bin/python ]] || python3 -m venv "$CNNPROBE_VENV"
  index=()
  [[ -n ${CNNPROBE_TORCH_INDEX:-} ]] && index=(--index-url "$CNNPROBE_TORCH_INDEX" --extra-index-url https://pypi.org/simple)
  "$CNNPROBE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${index[@]}" \
    "torch==$CNNPROBE_TORCH_VERSION" "torchvision==$CNNPROBE_TORCHVISION_VERSION"
  # numpy and scikit-learn: the reference scripts and the tests' fixture generators.
  "$CNNPROBE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check numpy scikit-learn
  export CNNPROBE_PYTHON=$CNNPROBE_VENV/bin/python
fi

cnnprobe_cargo build --release --quiet
echo "setup: built $CNNPROBE_BIN"
if [[ -n ${CNNPROBE_TORCH:-} && ${1:-} == --torch ]]; then
  echo "setup: for run.sh and test.sh too: export CNNPROBE_TORCH=$CNNPROBE_TORCH"
fi
