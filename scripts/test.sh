#!/usr/bin/env bash
# Set up if needed, then the whole test suite (release profile: one build of torch-sys).
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
"$here/setup.sh"
source "$here/env.sh"
cnnprobe_cargo test --release "$@"
