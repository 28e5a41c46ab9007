#!/usr/bin/env bash
# Set up if needed, build, and run cnnprobe. With no arguments: the default experiment
# (CIFAR-10, frozen random ResNet-18 with the CIFAR stem, seed 0, linear probe).
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
"$here/setup.sh"
source "$here/env.sh"
if (($# == 0)); then
  set -- run --dataset cifar10 --arch resnet18 --stem cifar --seed 0
fi
exec "$CNNPROBE_BIN" "$@"
