#!/usr/bin/env bash
# `--preset random-best` wall time per seed on full CIFAR-10 (issue 17, acceptance 3), one
# process each, alternated, no feature cache:
#   before  the settings before issue 17: aten's convolutions (`--fused off`) and 4 KB pages
#           (THP_MEM_ALLOC_ENABLE=0)
#   after   today's defaults: oneDNN's fused convolutions, libtorch's huge-page allocations
#   With BEFORE_BIN set, "before" is instead that binary with its own defaults (an earlier
#   build, to measure what a change of code bought).
#
# usage: scripts/bench_random_best.sh DATA/cifar-10-batches-bin [SEEDS] [OUT_CSV]
#   SEEDS   default "0"; each seed runs both paths, the order flipped on odd seeds
#   OUT_CSV default results/random_best_wall.csv
# Env: CNNPROBE_BIN (default target/release/cnnprobe), BEFORE_BIN, THREADS (default: all cores),
#      ONLY=before|after to run one of the two (a new build against a "before" row measured
#      earlier on the same machine).
set -euo pipefail
data=${1:?usage: $0 DATA/cifar-10-batches-bin [SEEDS] [OUT_CSV]}
seeds=${2:-0}
out=${3:-results/random_best_wall.csv}
bin=${CNNPROBE_BIN:-target/release/cnnprobe}
threads=${THREADS:-$(nproc)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "seed,settings,convs,thp,threads,wall_s,extract_s,fit_s,test_top1,load1_after" >"$work/rows.csv"
for seed in $seeds; do
  order="before after"
  [ $((seed % 2)) -eq 1 ] && order="after before"
  for which in $order; do
    [ -n "${ONLY:-}" ] && [ "$which" != "$ONLY" ] && continue
    run_bin=$bin
    if [ "$which" = after ]; then
      fused=auto thp=1
    elif [ -n "${BEFORE_BIN:-}" ]; then
      fused=auto thp=1 run_bin=$BEFORE_BIN
    else
      fused=off thp=0
    fi
    start=$(date +%s.%N)
    THP_MEM_ALLOC_ENABLE=$thp "$run_bin" run --preset random-best --data "$data" --seed "$seed" --threads "$threads" \
      --fused "$fused" --no-cache --out "$work/run-$seed-$which" --summary "$work/summary-$seed-$which.csv" >/dev/null
    end=$(date +%s.%N)
    python3 - "$work/summary-$seed-$which.csv" "$seed" "$which" "$thp" "$threads" "$start" "$end" >>"$work/rows.csv" <<'PY'
import csv, os, sys
path, seed, which, thp, threads, start, end = sys.argv[1:]
row = list(csv.DictReader(open(path)))[-1]
print(",".join([seed, which, row.get("convs", ""), thp, threads, f"{float(end) - float(start):.0f}", row["extract_s"],
                row["fit_s"], row["test_top1"], f"{os.getloadavg()[0]:.2f}"]))
PY
    tail -1 "$work/rows.csv"
  done
done
mkdir -p "$(dirname "$out")"
cp "$work/rows.csv" "$out"
echo "wrote $out"
