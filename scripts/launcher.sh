#!/usr/bin/env bash
# cnnprobe launcher of a portable package (made by scripts/package.sh): runs bin/cnnprobe
# on this machine's PyTorch libraries, after checking they are the release it was built for.
#
#   CNNPROBE_LIBTORCH_DIR  a torch/lib folder (or the torch folder above it) to use;
#                          otherwise the torch of `python3` on PATH (CNNPROBE_TORCH_PYTHON
#                          names another Python)
#
# The binary keeps a RUNPATH to the build machine's torch/lib. The loader searches
# LD_LIBRARY_PATH before any RUNPATH (not before an old-style RPATH, which this binary does
# not have), so the libraries found here are the ones loaded; `cnnprobe info` prints which.
set -euo pipefail
pkg=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
die() {
  echo "error: $*" >&2
  exit 1
}
info() { sed -n "s/^$1=//p" "$pkg/BUILD-INFO"; }
want=$(info torch_version)

if [[ -n ${CNNPROBE_LIBTORCH_DIR:-} ]]; then
  lib=$CNNPROBE_LIBTORCH_DIR from="CNNPROBE_LIBTORCH_DIR"
  [[ -f $lib/lib/libtorch_cpu.so ]] && lib=$lib/lib
else
  py=${CNNPROBE_TORCH_PYTHON:-python3}
  # find_spec locates torch without importing it (an import takes seconds).
  torch=$("$py" -c 'import importlib.util as u; s = u.find_spec("torch"); print(s.submodule_search_locations[0] if s else "")' 2>/dev/null) ||
    die "cnnprobe needs PyTorch ${want%%+*}: no $py here; set CNNPROBE_LIBTORCH_DIR to a torch/lib folder"
  [[ -n $torch ]] || die "cnnprobe needs PyTorch ${want%%+*}: $py has no torch; set CNNPROBE_LIBTORCH_DIR to a torch/lib folder"
  lib=$torch/lib from=$py
fi
[[ -f $lib/libtorch_cpu.so ]] || die "$lib (from $from) has no libtorch_cpu.so; cnnprobe needs PyTorch ${want%%+*}'s torch/lib"
have=$(sed -n "s/^__version__ = ['\"]\([^'\"]*\)['\"].*/\1/p" "$lib/../version.py" 2>/dev/null || true)
[[ -n $have ]] || have=$(cat "$lib/../build-version" 2>/dev/null || echo unknown)
# The C++ API changes between releases: the same x.y.z, whatever CUDA build (+cu…) it is.
if [[ ${have%%+*} != "${want%%+*}" && -z ${CNNPROBE_ALLOW_TORCH_MISMATCH:-} ]]; then
  die "this cnnprobe was built for PyTorch ${want%%+*} but $lib (from $from) is PyTorch $have; use a package built for $have or point CNNPROBE_LIBTORCH_DIR at a ${want%%+*} torch/lib"
fi
if [[ $(info needs_torch_cuda) == yes && ! -f $lib/libtorch_cuda.so ]]; then
  die "this cnnprobe was built against a CUDA build of PyTorch but $lib (from $from) is CPU-only ($have)"
fi
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{ print $2 }')
need=$(info glibc)
if [[ -n $glibc && -n $need && $(printf '%s\n' "$need" "$glibc" | sort -V | head -1) != "$need" ]]; then
  die "this cnnprobe needs glibc $need or newer; this machine has $glibc"
fi
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec "$pkg/bin/cnnprobe" "$@"
