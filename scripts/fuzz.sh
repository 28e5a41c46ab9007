#!/usr/bin/env bash
# Bounded fuzzing of the readers of untrusted bytes (CIFAR records, .npy, feature CSV,
# state dicts, zip and legacy): proptest properties in tests/fuzz.rs, ignored in the normal suite.
#   scripts/fuzz.sh [CASES_PER_PROPERTY] [SECONDS]
# Prints the executions run and any failure; a failing input is printed by proptest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/env.sh"
cases=${1:-2000}
secs=${2:-600}
cd "$CNNPROBE_ROOT"
cargo build --release --tests --quiet
start=$(date +%s)
PROPTEST_CASES=$cases timeout "$secs" cargo test --release --test fuzz -- --ignored --test-threads 2 2>&1 | tee /tmp/cnnprobe-fuzz.log | grep -E "^test |test result"
echo "fuzz: 5 properties × $cases cases = $((5 * cases)) generated inputs in $(( $(date +%s) - start )) s"
