#!/usr/bin/env bash
# Proves a build against an existing PyTorch: installs torch==VERSION (with the matching
# torchvision, numpy and scikit-learn, for the parity fixtures) from PyPI into its own venv
# once, builds cnnprobe against it as `setup.sh --torch` does, runs the quick tests and
# writes results/torch_check_VERSION.csv (one row per test target, with its counts).
#
#   usage: check_torch_version.sh VERSION [--base-python PY]
#   VERSION        2.11.x, 2.12.x or 2.13.x
#   --base-python  the Python the venv is made from [default: python3]
#   The venv is ~/.cache/cnnprobe/torch-VERSION (CNNPROBE_CHECK_VENV moves it).
#
# Quick tests: those that prove the build computes what torchvision computes (parity,
# init_parity: same seeds, same weights and features), the model zoo, extraction, the
# probe against scikit-learn, and end-to-end runs of the binary.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=${1:?usage: check_torch_version.sh VERSION [--base-python PY]}
base=python3
[[ ${2:-} == --base-python ]] && base=${3:?usage: check_torch_version.sh VERSION [--base-python PY]}
case $version in
  2.11.*) vision=0.26.0 ;;
  2.12.*) vision=0.27.0 ;;
  2.13.*) vision=0.28.0 ;;
  *) echo "error: cnnprobe builds against PyTorch 2.11, 2.12 or 2.13, not $version" >&2; exit 2 ;;
esac
venv=${CNNPROBE_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cnnprobe/torch-$version}
tests=(models parity init_parity extraction probe run_e2e)

if ! "$venv/bin/python" -c "import torch, torchvision, numpy, sklearn" 2>/dev/null; then
  echo "check: installing torch==$version torchvision==$vision into $venv (one-off, ~5 GB)"
  [[ -x $venv/bin/python ]] || "$base" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$version" "torchvision==$vision" numpy scikit-learn
fi
export CNNPROBE_TORCH=$venv/bin/python
t0=$SECONDS
"$here/setup.sh"
build_s=$((SECONDS - t0))
source "$here/env.sh"
log=$CNNPROBE_BUILD_DIR/quick-tests.log
t0=$SECONDS
set +e
cnnprobe_cargo test --release "${tests[@]/#/--test=}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
test_s=$((SECONDS - t0))

csv=$CNNPROBE_ROOT/results/torch_check_$version.csv
python=$("$CNNPROBE_TORCH" -V 2>&1 | cut -d' ' -f2)
runtime=$("$CNNPROBE_BIN" info | sed -n 's/^libtorch: \([^ ]*\).*/\1/p')
{
  echo "target,torch_version,tch,python,passed,failed,ignored,seconds"
  echo "build,$runtime,$CNNPROBE_TCH_VERSION,$python,,,,$build_s"
  # cargo prints "Running tests/NAME.rs (...)" and then that target's "test result:" line.
  awk -v torch="$runtime" -v tch="$CNNPROBE_TCH_VERSION" -v py="$python" '
    /Running tests\// { match($0, /tests\/[a-z_0-9]+/); name = substr($0, RSTART + 6, RLENGTH - 6) }
    /^test result:/ {
      for (i = 2; i <= NF; i++) { w = $i; gsub(/[;.]/, "", w); if (w ~ /^(passed|failed|ignored)$/) n[w] = $(i - 1) }
      secs = $NF; sub(/s$/, "", secs)
      print name "," torch "," tch "," py "," n["passed"] "," n["failed"] "," n["ignored"] "," secs
    }' "$log"
  echo "all quick tests,$runtime,$CNNPROBE_TCH_VERSION,$python,,,,$test_s"
} >"$csv"
cat "$csv"
exit "$rc"
