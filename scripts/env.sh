# Sourced by the other scripts: where libtorch comes from, and how torch-sys finds it.
# An existing LIBTORCH is respected; otherwise the PyPI torch wheel in a cached venv is used.
CNNPROBE_TORCH_VERSION=2.13.0
CNNPROBE_TORCHVISION_VERSION=0.28.0
CNNPROBE_VENV=${CNNPROBE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cnnprobe/torch-$CNNPROBE_TORCH_VERSION}
CNNPROBE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CNNPROBE_VENV CNNPROBE_ROOT

if [[ -z ${LIBTORCH:-} ]]; then
  # torch-sys asks `python` in $VIRTUAL_ENV for torch's location and C++ ABI.
  export LIBTORCH_USE_PYTORCH=1
  # It runs plain `python` from PATH when VIRTUAL_ENV is set, so the venv goes first.
  export VIRTUAL_ENV=$CNNPROBE_VENV
  export PATH=$CNNPROBE_VENV/bin:$PATH
fi
# Python tools (reference scripts, test fixture generators) use the same venv when it exists.
if [[ -x $CNNPROBE_VENV/bin/python ]]; then
  export CNNPROBE_PYTHON=$CNNPROBE_VENV/bin/python
fi
