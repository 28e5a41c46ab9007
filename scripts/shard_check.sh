#!/usr/bin/env bash
# Real-data check of sharded extraction (issue 16, acceptance 2) on an image folder such as
# CIFAR-10's JPEGs (scripts/prepare_cifar10.py writes one): one unsharded `extract`, then
# N shards run in parallel and `merge`d; every .npy file and the content digest must be
# identical. With BASELINE_BIN (another cnnprobe build, e.g. 0.2's in-memory folder reader)
# the unsharded features are also compared with that binary's, under ImageNet normalisation
# (the folder's own statistics are now summed in float64, so they differ in the last bits).
#   usage: scripts/shard_check.sh FOLDER [OUT_CSV]      env: SHARDS=4 LIMIT= (images/split)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${CNNPROBE_BIN:-$here/../target/release/cnnprobe}
data=$1 out=${2:-/dev/stdout} shards=${SHARDS:-4}
work=$(mktemp -d)
trap 'rc=$?; ((rc == 0)) || tail -n 3 "$work"/*.log "$work"/*.txt >&2; rm -rf "$work"' EXIT
export XDG_CACHE_HOME=$work/xdg
flags=(--dataset folder --data "$data" --arch resnet18 --input-size 32 --input-norm imagenet --hflip --format npy --device cpu)
[[ -n ${LIMIT:-} ]] && flags+=(--limit "$LIMIT")
sha() { python3 -c "import json,sys; print(dict(json.load(open(sys.argv[1]))['provenance'])['features_sha256'])" "$1/features.json"; }
same_npy() {
  local a=$1 b=$2 f
  for f in "$a"/*.npy; do cmp -s "$f" "$b/$(basename "$f")" || { echo "no ($(basename "$f") differs)"; return; }; done
  echo yes
}

t0=$(date +%s.%N)
"$bin" extract "${flags[@]}" --threads 2 --workers 2 -o "$work/whole" 2> "$work/whole.log"
t1=$(date +%s.%N)
for ((k = 0; k < shards; k++)); do
  "$bin" extract "${flags[@]}" --threads 1 --workers 1 --shard "$k/$shards" -o "$work/shard-$k" 2> "$work/shard-$k.txt" &
done
wait
dirs=(); for ((k = 0; k < shards; k++)); do dirs+=("$work/shard-$k"); done
"$bin" merge "${dirs[@]}" -o "$work/merged" 2> "$work/merge.log"
t2=$(date +%s.%N)
n=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(2*(m['n_train'])+m['n_test'])" "$work/whole/features.json")
{
  echo "check,value"
  echo "images (train + flipped train + test),$n"
  echo "unsharded extract s,$(echo "$t1 - $t0" | bc)"
  echo "$shards shards in parallel + merge s,$(echo "$t2 - $t1" | bc)"
  echo "merged .npy files identical to unsharded,$(same_npy "$work/whole" "$work/merged")"
  echo "features_sha256 unsharded,$(sha "$work/whole")"
  echo "features_sha256 merged,$(sha "$work/merged")"
  if [[ -n ${BASELINE_BIN:-} ]]; then
    "$BASELINE_BIN" extract "${flags[@]}" --threads 2 -o "$work/baseline" 2> "$work/baseline.log"
    echo "unsharded .npy identical to $("$BASELINE_BIN" --version),$(same_npy "$work/whole" "$work/baseline")"
  fi
} > "$out"
