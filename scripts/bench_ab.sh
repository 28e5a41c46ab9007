#!/usr/bin/env bash
# A/B extraction throughput of two cnnprobe binaries (e.g. before and after a change), runs
# alternated so machine drift hits both alike. Prints one CSV row per run.
#   usage: scripts/bench_ab.sh OLD_BIN NEW_BIN CIFAR10_BIN_DIR [ROUNDS] [extract flags...]
set -euo pipefail
old=$1 new=$2 data=$3 rounds=${4:-3}
shift $(($# < 4 ? $# : 4))
flags=("$@")
((${#flags[@]})) || flags=(--arch resnet18 --stem cifar --limit 1000)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "round,binary,images_per_s,flags"
for ((r = 1; r <= rounds; r++)); do
  for side in old new; do
    bin=${!side}
    "$bin" extract --data "$data" --device cpu --threads 2 --batch-size 256 --format npy \
      --output "$work/$side" "${flags[@]}" 2>/dev/null
    ips=$(python3 -c "import json,sys; print(dict(json.load(open(sys.argv[1]))['provenance'])['images_per_s'])" "$work/$side/features.json")
    echo "$r,$side,$ips,${flags[*]}"
  done
done
