#!/usr/bin/env bash
# Streaming image-folder extraction (issue 16) at growing folder sizes: peak memory of
# `cnnprobe extract --dataset folder` against the size of the feature matrix it must hold,
# and cnnprobe's JPEG decoding throughput against PyTorch's DataLoader on the same files.
#
#   usage: scripts/bench_stream.sh [OUTDIR]      (OUTDIR: where the CSVs go [results])
#
# For each N in $SIZES: a synthetic ImageFolder of N train + $TEST_N test 224x224 JPEGs
# (scripts/make_image_folder.py, seed 0), made once under $BENCH_WORK and reused while its
# make_image_folder.json says the same sizes. Its files are read once untimed (page cache
# warm, so no run measures the disk). Then
#   (a) `/usr/bin/time -v cnnprobe extract --dataset folder --arch resnet18 --input-size 64
#       --workers 2 --threads 2 --format npy`: peak RSS, wall time, images/s (its
#       `features:` line), the feature matrix (every *_features.npy; features.json's
#       (n_train + n_test) x feature_dim x 4 bytes without them) and RSS minus that matrix:
#       a streaming reader keeps the last one flat as N grows. The export is then deleted.
#   (b) on the $DECODE_N folder only: $RUNS alternating runs each of `cnnprobe scan` and
#       scripts/bench_decode_dataloader.py (2 workers, 64x64), medians and their ratio.
# Writes OUTDIR/bench_stream.csv (images,run,dim,feature_mb,peak_rss_mb,wall_s,images_per_s;
# the features stream to disk, so peak RSS is all the memory besides the feature matrix) and OUTDIR/bench_decode.csv (reader,run,images,secs,images_per_s),
# then prints one summary line. MB are MiB (2^20 bytes). Peak RSS is that of the cnnprobe
# process (GNU time: wait4's ru_maxrss); a forked child's memory would not be added to it.
#
#   env: SIZES="10000 40000 100000"   BENCH_WORK=/tmp/cnnprobe-stream-bench   TEST_N=1000
#        DECODE_N=10000 (0: skip (b))  RUNS=3  REPEAT=1 (extract runs per size; median peak)   WORKERS=2   THREADS=2   INPUT_SIZE=64
#        CENTER_CROP=1 (adds --center-crop to extract, scan and the DataLoader)
#        EXTRACT_FLAGS="--device cpu ..." (more extract flags)
#        CNNPROBE_BIN (default: scripts/env.sh's, target/release/cnnprobe; not built here)
#        CNNPROBE_PYTHON (default: the project's torch venv; needs numpy, Pillow, torch)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# env.sh sets both; a caller's own values win.
bin_env=${CNNPROBE_BIN:-} py_env=${CNNPROBE_PYTHON:-}
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$here/env.sh"
bin=${bin_env:-$CNNPROBE_BIN}
py=${py_env:-${CNNPROBE_PYTHON:-python3}}
outdir=${1:-$CNNPROBE_ROOT/results}
read -ra sizes <<< "${SIZES:-10000 40000 100000}"
work=${BENCH_WORK:-/tmp/cnnprobe-stream-bench}
test_n=${TEST_N:-1000} decode_n=${DECODE_N:-10000} runs=${RUNS:-3} repeat=${REPEAT:-1}
workers=${WORKERS:-2} threads=${THREADS:-2} input=${INPUT_SIZE:-64}
read -ra extra <<< "${EXTRACT_FLAGS:-}"
crop=()
[[ ${CENTER_CROP:-0} == 1 ]] && crop=(--center-crop)

if [[ ! -x /usr/bin/time ]]; then
  echo "error: /usr/bin/time (GNU time) is missing; install it: apt-get install time" >&2
  exit 1
fi
if [[ ! -x $bin ]]; then
  echo "error: no cnnprobe binary at $bin; build it first: ./scripts/setup.sh" >&2
  exit 1
fi
if ! "$bin" scan --help >/dev/null 2>&1; then
  echo "error: $bin has no 'scan' command (an older build?); rebuild: ./scripts/setup.sh" >&2
  exit 1
fi
if ! "$py" -c 'import numpy, PIL, torch' 2>/dev/null; then
  echo "error: $py lacks numpy, Pillow or torch; run ./scripts/setup.sh or set CNNPROBE_PYTHON" >&2
  exit 1
fi
((${#sizes[@]})) || { echo "error: SIZES is empty" >&2; exit 2; }
mkdir -p "$work" "$outdir"
trap 'rm -rf "$work"/export-*' EXIT

# folder N: prints the path of the N-train-image folder, making it when absent or incomplete.
folder() {
  local dir=$work/folder-$1-$test_n
  if ! "$py" -c 'import json, sys; m = json.load(open(sys.argv[1])); sys.exit(not (m["train"], m["test"]) == (int(sys.argv[2]), int(sys.argv[3])))' \
    "$dir/make_image_folder.json" "$1" "$test_n" 2>/dev/null; then
    # No marker with these sizes: absent, or an interrupted make (the marker comes last).
    rm -rf "$dir"
    echo "== making $dir ($1 train + $test_n test images)" >&2
    nice -n 10 "$py" "$here/make_image_folder.py" "$dir" --train "$1" --test "$test_n" >&2
  fi
  echo "$dir"
}

# Untimed read of every file, so the timed runs find them in the page cache.
warm() { find "$1" -type f -name '*.jpg' -print0 | xargs -0 cat > /dev/null; }

# decode_row READER RUN PREFIX LOG: appends READER's CSV row, read from LOG's "PREFIX: <n>
# images, <secs> s, <rate> images/s" line, to $dcsv (and stderr); sets $imgs and $rate.
decode_row() {
  local line secs
  line=$(grep -o "$3: [0-9]* images, [0-9.]* s, [0-9.]* images/s" "$4" | tail -n 1) || true
  [[ -n $line ]] || { echo "error: no '$3:' line in $4" >&2; exit 1; }
  read -r _ imgs _ secs _ rate _ <<< "$line"
  echo "$1,$2,$imgs,$secs,$rate" | tee -a "$dcsv" >&2
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print ((NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

# (a) peak memory and throughput of extraction per folder size
csv=$outdir/bench_stream.csv
echo "images,run,dim,feature_mb,peak_rss_mb,wall_s,images_per_s" > "$csv"
peaks=()
for n in "${sizes[@]}"; do
  dir=$(folder "$n")
  warm "$dir"
  size_peaks=()
  for ((rep = 1; rep <= repeat; rep++)); do
    out=$work/export-$n log=$work/extract-$n.log tv=$work/extract-$n.time
    rm -rf "$out"
    echo "== extract: $n train + $test_n test images" >&2
    if ! /usr/bin/time -v -o "$tv" "$bin" extract --dataset folder --data "$dir" --arch resnet18 \
      --input-size "$input" --workers "$workers" --threads "$threads" --format npy --output "$out" \
      "${crop[@]}" "${extra[@]}" 2> "$log"; then
      echo "error: cnnprobe extract failed on $dir (log: $log):" >&2
      tail -n 5 "$log" >&2
      exit 1
    fi
    rss_kb=$(sed -n 's/^\s*Maximum resident set size (kbytes): \([0-9]*\)$/\1/p' "$tv")
    # "h:mm:ss" or "m:ss.ss"
    wall=$(sed -n 's/^\s*Elapsed (wall clock) time.*): \([0-9:.]*\)$/\1/p' "$tv" |
      awk -F: '{s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.1f", s}')
    ips=$(sed -n 's/.*features: [0-9]* dims, [0-9.]* s, \([0-9.]*\) images\/s.*/\1/p' "$log" | tail -n 1)
    read -r images dim feat_bytes < <("$py" -c '
import glob, json, sys
import numpy as np
d = sys.argv[1]
m = json.load(open(d + "/features.json"))
files = glob.glob(d + "/*_features.npy")
nbytes = sum(np.load(f, mmap_mode="r").nbytes for f in files) if files else (m["n_train"] + m["n_test"]) * m["feature_dim"] * 4
print(m["n_train"] + m["n_test"], m["feature_dim"], nbytes)' "$out")
    if [[ -z $rss_kb || -z $wall || -z $ips ]]; then
      echo "error: could not read peak RSS, wall time or images/s from $tv and $log" >&2
      exit 1
    fi
    row=$(awk -v i="$images" -v k="$rep" -v d="$dim" -v b="$feat_bytes" -v r="$rss_kb" -v w="$wall" -v s="$ips" \
      'BEGIN {printf "%d,%d,%d,%.1f,%.1f,%s,%s", i, k, d, b / 1048576, r / 1024, w, s}')
    echo "$row" >> "$csv"
    echo "   $row" >&2
    size_peaks+=("$(cut -d, -f5 <<< "$row")")
    rm -rf "$out"
  done
  peaks+=("$(median "${size_peaks[@]}")")
done

# (b) decoding throughput: cnnprobe scan against the DataLoader, runs alternated
ratio_line=""
if ((decode_n > 0)); then
  dir=$(folder "$decode_n")
  warm "$dir"
  dcsv=$outdir/bench_decode.csv
  echo "reader,run,images,secs,images_per_s" > "$dcsv"
  cp_ips=() dl_ips=()
  for ((r = 1; r <= runs; r++)); do
    echo "== decode run $r/$runs on $dir" >&2
    log=$work/scan.log
    "$bin" scan --dataset folder --data "$dir" --workers "$workers" --input-size "$input" "${crop[@]}" \
      > /dev/null 2> "$log" || { echo "error: cnnprobe scan failed (log: $log):" >&2; tail -n 5 "$log" >&2; exit 1; }
    decode_row cnnprobe_scan "$r" scan "$log"
    cp_ips+=("$rate")
    log=$work/dataloader.log
    "$py" "$here/bench_decode_dataloader.py" "$dir" --workers "$workers" --input-size "$input" "${crop[@]}" \
      > "$log" 2>&1 || { echo "error: bench_decode_dataloader.py failed (log: $log):" >&2; tail -n 5 "$log" >&2; exit 1; }
    decode_row dataloader "$r" dataloader "$log"
    dl_ips+=("$rate")
  done
  cp_med=$(median "${cp_ips[@]}") dl_med=$(median "${dl_ips[@]}")
  ratio_line=$(awk -v c="$cp_med" -v d="$dl_med" -v n="$imgs" -v r="$runs" \
    'BEGIN {printf "decode (%d images, median of %d): cnnprobe scan %.1f images/s, DataLoader %.1f images/s, ratio %.2f; ", n, r, c, d, c / d}')
fi

growth=$(awk -v a="${peaks[0]}" -v b="${peaks[${#peaks[@]} - 1]}" -v n0="${sizes[0]}" -v n1="${sizes[${#sizes[@]} - 1]}" -v r="$repeat" \
  'BEGIN {g = (a > 0) ? 100 * (b - a) / a : 0; printf "peak RSS (median of %d) %s -> %s train images: %.1f -> %.1f MB (%+.1f%%)", r, n0, n1, a, b, g}')
echo "summary: $ratio_line$growth"
