#!/usr/bin/env bash
# Idempotent set-up: libtorch (from $LIBTORCH, or PyPI's torch wheel in a cached venv),
# then a release build of cnnprobe.
#
#   CNNPROBE_VENV        venv location (default ~/.cache/cnnprobe/torch-2.13.0)
#   CNNPROBE_TORCH_INDEX a PyTorch wheel index URL, e.g. a cu12x build for older drivers
#                        (PyPI's default 2.13.0 wheel needs a CUDA 13 driver)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if [[ -n ${LIBTORCH:-} ]]; then
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

cd "$CNNPROBE_ROOT"
cargo build --release --quiet
echo "setup: built $CNNPROBE_ROOT/target/release/cnnprobe"
