# shellcheck shell=bash
# Sourced by the other scripts: which libtorch to build against, how torch-sys finds it,
# and where the binary lands (CNNPROBE_BIN). `cnnprobe_cargo ARGS` runs cargo for that choice.
#
#   (default)                        PyPI's torch 2.13.0 in a cached venv (setup.sh installs it)
#   LIBTORCH=DIR                     a libtorch 2.13 folder, used as it is
#   CNNPROBE_TORCH=existing          the torch of `python3` on PATH: 2.11, 2.12 or 2.13
#   CNNPROBE_TORCH=/path/to/python   the torch of that Python
#
# tch pins one PyTorch release per tch release, and two torch-sys versions cannot share a
# manifest (both declare `links = "tch"`). So an existing torch builds from a generated
# manifest in target/torch-<version>/ that names its tch release, with its own Cargo.lock
# and target dir; the project's Cargo.toml and Cargo.lock are never touched.
CNNPROBE_TORCH_VERSION=2.13.0
CNNPROBE_TORCHVISION_VERSION=0.28.0
CNNPROBE_VENV=${CNNPROBE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cnnprobe/torch-$CNNPROBE_TORCH_VERSION}
CNNPROBE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CNNPROBE_VENV CNNPROBE_ROOT

# The tch release made for a torch version ("" when there is none).
cnnprobe_tch_for() {
  case $1 in
    2.11.*) echo 0.24.0 ;;
    # No tch 0.25 (PyTorch 2.12) was published; 0.26's generated bindings use only ops whose
    # schemas 2.12 already has (tch's Declarations-v2.12.0/v2.13.0.yaml), and build against it.
    2.12.* | 2.13.*) echo 0.26.0 ;;
    *) echo "" ;;
  esac
}

if [[ -n ${CNNPROBE_TORCH:-} ]]; then
  py=$CNNPROBE_TORCH
  [[ $py == existing ]] && py=$(command -v python3 || true)
  if [[ ! -x $py ]]; then
    echo "error: CNNPROBE_TORCH=$CNNPROBE_TORCH: no Python there (give existing or a python path)" >&2
    return 1
  fi
  # find_spec locates torch without importing it (an import takes seconds).
  CNNPROBE_TORCH_DIR=$("$py" -c 'import importlib.util as u; s = u.find_spec("torch"); print(s.submodule_search_locations[0] if s else "")')
  if [[ -z $CNNPROBE_TORCH_DIR || ! -f $CNNPROBE_TORCH_DIR/version.py ]]; then
    echo "error: $py has no PyTorch (CNNPROBE_TORCH=$CNNPROBE_TORCH)" >&2
    return 1
  fi
  CNNPROBE_TORCH_VERSION=$(sed -n "s/^__version__ = ['\"]\([^'\"]*\)['\"].*/\1/p" "$CNNPROBE_TORCH_DIR/version.py")
  CNNPROBE_TCH_VERSION=$(cnnprobe_tch_for "$CNNPROBE_TORCH_VERSION")
  if [[ -z $CNNPROBE_TCH_VERSION ]]; then
    echo "error: $py has PyTorch $CNNPROBE_TORCH_VERSION; cnnprobe builds against 2.11, 2.12 or 2.13" >&2
    return 1
  fi
  CNNPROBE_BUILD_DIR=$CNNPROBE_ROOT/target/torch-${CNNPROBE_TORCH_VERSION//+/-}
  # A user's CARGO_TARGET_DIR gets one sub-folder per torch, so builds never overwrite each other.
  CNNPROBE_TARGET_DIR=${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/torch-${CNNPROBE_TORCH_VERSION//+/-}}
  CNNPROBE_TARGET_DIR=${CNNPROBE_TARGET_DIR:-$CNNPROBE_BUILD_DIR/target}
  # torch-sys reads include/ and lib/ under LIBTORCH; pip's torch package has both.
  export LIBTORCH=$CNNPROBE_TORCH_DIR
  unset LIBTORCH_USE_PYTORCH
  # Fixture scripts need numpy, torchvision and scikit-learn; tests skip without them.
  if "$py" -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("numpy", "torchvision", "sklearn")))'; then
    export CNNPROBE_PYTHON=$py
  else
    unset CNNPROBE_PYTHON
  fi
  CNNPROBE_TORCH_PYTHON=$py
  export CNNPROBE_TORCH CNNPROBE_TORCH_PYTHON CNNPROBE_TORCH_DIR CNNPROBE_TORCH_VERSION CNNPROBE_TCH_VERSION
  unset py
else
  CNNPROBE_BUILD_DIR=$CNNPROBE_ROOT
  CNNPROBE_TARGET_DIR=${CARGO_TARGET_DIR:-$CNNPROBE_ROOT/target}
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
fi
CNNPROBE_TARGET_DIR=$(realpath -m "$CNNPROBE_TARGET_DIR")
CNNPROBE_BIN=$CNNPROBE_TARGET_DIR/release/cnnprobe
export CNNPROBE_BUILD_DIR CNNPROBE_TARGET_DIR CNNPROBE_BIN

# cargo in the package for the chosen torch (its generated manifest, made here if needed).
cnnprobe_cargo() {
  if [[ $CNNPROBE_BUILD_DIR != "$CNNPROBE_ROOT" ]]; then
    "$CNNPROBE_ROOT/scripts/torch_manifest.sh" "$CNNPROBE_BUILD_DIR" "$CNNPROBE_TCH_VERSION" || return 1
    # The one fact find_spec cannot give: the C++ ABI torch was compiled with.
    LIBTORCH_CXX11_ABI=$("$CNNPROBE_TORCH_PYTHON" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))') || return 1
    export LIBTORCH_CXX11_ABI
  fi
  (cd "$CNNPROBE_BUILD_DIR" && CARGO_TARGET_DIR=$CNNPROBE_TARGET_DIR cargo "$@")
}
