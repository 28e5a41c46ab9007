#!/usr/bin/env bash
# Real-data check of the audit trail (issue: results you can audit), on CIFAR-10 in the
# binary layout: a ResNet-18 run with the L-BFGS probe and --wd-search, its reproduction,
# the cost of checksums next to extraction, and a reproduction after the data changed.
#   usage: scripts/audit_check.sh CIFAR10_BIN_DIR [OUT_MD]   (OUT_MD: Markdown report)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${CNNPROBE_BIN:-$here/../target/release/cnnprobe}
src=$1 report=${2:-/dev/stdout}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src" "$work/data"
export XDG_CACHE_HOME=$work/xdg CNNPROBE_CACHE_DIR=$work/cache
flags=(--data "$work/data" --arch resnet18 --stem imagenet --solver lbfgs --wd-search --seed 0 --device cpu --threads 2)
cell() { python3 -c "import csv,sys; r=next(csv.DictReader(open(sys.argv[1]))); print(r[sys.argv[2]])" "$1/result.csv" "$2"; }

"$bin" run "${flags[@]}" --out "$work/run" --summary "$work/s.csv" 2> "$work/run.log"
# The cache entry's checksums: written once (extraction) and verified on every hit.
"$bin" run "${flags[@]}" --out "$work/hit" --summary "$work/s.csv" 2> "$work/hit.log"
"$bin" reproduce "$work/run" --out "$work/rep" > "$work/rep.out" 2> "$work/rep.log"
printf '\x01' | dd of="$work/data/test_batch.bin" bs=1 seek=4242 conv=notrunc status=none
set +e
"$bin" reproduce "$work/run" --out "$work/rep2" > "$work/rep2.out" 2> "$work/rep2.log"
rc=$?
set -e
write_s=$(grep -o 'checksummed in [0-9.]*' "$work/run.log" | awk '{print $3}')
verify=$(grep -o 'verified ([0-9]* MB, [0-9.]* s)' "$work/hit.log" | tr -d '(),' | awk '{print $2" MB, "$4" s"}')
{
  echo "# Audit check on real CIFAR-10 ($(date -u +%F))"
  echo
  echo "\`cnnprobe run ${flags[*]:2}\` on 50,000 + 10,000 images, then \`cnnprobe reproduce\`."
  echo
  echo "| what | value |"
  echo "| --- | --- |"
  echo "| extraction, s | $(cell "$work/run" extract_s) |"
  echo "| checksums written (cache entry), s | $write_s |"
  echo "| checksums verified on a cache hit | $verify |"
  echo "| test top-1 | $(cell "$work/run" test_top1) |"
  echo "| data_digest | \`$(cell "$work/run" data_digest)\` |"
  echo "| features_sha256 | \`$(cell "$work/run" features_sha256)\` |"
  echo
  echo "Reproduction of the run:"
  echo; echo '```'; cat "$work/rep.out"; echo '```'
  echo
  echo "After one byte of test_batch.bin changed (exit code $rc):"
  echo; echo '```'; cat "$work/rep2.out"; tail -n 1 "$work/rep2.log"; echo '```'
} > "$report"
[[ $rc == 1 ]] && grep -q "reproduced: every input and metric matches" "$work/rep.out"
