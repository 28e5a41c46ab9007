#!/usr/bin/env bash
# End-to-end check of cnnprobe's CUDA path on real CIFAR-10, for a GPU machine that has
# PyTorch but no Rust and no network (the portable package of scripts/package.sh carries
# this script). Target: 8 minutes on one GPU. It prepares the data with the machine's own
# Python, then runs and times: `info`; ResNet-18 (CIFAR stem) extraction of all 60k images
# in fp32, bf16 and fp16 with --batch-size auto; CUDA against CPU features on 1,000 images;
# the L-BFGS probe with --wd-search on the GPU; extraction + probe in one `run`; the
# `--preset random-best` run; a deliberate out-of-memory back-off. Beside each CUDA
# extraction, PyTorch's best eager path on the same GPU (gpu_bench_torch.py; needs torch in
# --python), for the ratio of issue 15 (target >= 1.3x); and the fp32/fp16 extractions and
# random-best again with cuDNN's kernel search on (CNNPROBE_CUDNN_BENCHMARK=1) on both sides,
# as against the heuristic kernel choice that both use by default. One CSV row per step
# (step, device, torch_version, seconds, images_per_s, accuracy, max_rel_diff, status,
# note); exits 1 when any step failed.
#
#   usage: gpu_check.sh ARCHIVE [--cpu] [--subset N] [--cnnprobe PATH] [--python PY]
#                       [--csv PATH] [--work DIR] [--step-limit S]
#
#   ARCHIVE      cifar10-jpeg.tar.gz: train/<class>/*.jpg and test/<class>/*.jpg
#   --cpu        run what can run on the CPU, on the first N train and test images
#                (--subset, default 500); CUDA-only steps are marked skipped
#   --cnnprobe   the binary or the package launcher [default: ./cnnprobe beside this
#                script, else the repository's target/release/cnnprobe]
#   --python     the Python that prepares the data [default: python3]. Without Pillow the
#                JPEGs are unpacked and read with --dataset folder instead (slower; class
#                by class, so a --cpu subset would hold one class: use Pillow there).
#   --csv        [default: gpu_check.csv]
#   --work       scratch folder, kept [default: a temporary one, removed at the end]
#   --step-limit seconds any one step may take [default: 300 on CUDA, 420 with --cpu]
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '/^#   usage/,/^#   --work/s/^# \{0,1\}//p' "$0" >&2; exit 2; }

archive="" cpu=0 subset=500 bin="" py=python3 csv=gpu_check.csv work="" max_step=""
while (($#)); do
  case $1 in
    --cpu) cpu=1 ;;
    --subset) subset=${2:?}; shift ;;
    --cnnprobe) bin=${2:?}; shift ;;
    --python) py=${2:?}; shift ;;
    --csv) csv=${2:?}; shift ;;
    --work) work=${2:?}; shift ;;
    --step-limit) max_step=${2:?}; shift ;;
    -h | --help) usage ;;
    -*) echo "gpu_check: unknown option $1" >&2; usage ;;
    *) archive=$1 ;;
  esac
  shift
done
[[ -f $archive ]] || { echo "gpu_check: give the CIFAR-10 JPEG archive (cifar10-jpeg.tar.gz)" >&2; usage; }
if [[ -z $bin ]]; then
  bin=$here/cnnprobe
  [[ -x $bin ]] || bin=$here/../target/release/cnnprobe
fi
[[ -x $bin ]] || { echo "gpu_check: no cnnprobe at $bin (use --cnnprobe)" >&2; exit 2; }
if [[ -z $work ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work" "$(dirname "$csv")"
stats() { "$py" "$here/gpu_check_stats.py" "$@"; }

# Steps that must run on the GPU; with --cpu everything else runs on the CPU on a subset.
# CPU mode keeps within 8 minutes on 2 cores: bf16 convolutions without bf16 hardware run
# at ~4 images/s, so bf16 and the CPU reference take the first 100 images; L-BFGS's
# eigendecomposition of random-best's 6144 features takes minutes, so that run uses AdamW
# (the preset's readout is now the kernel one; AdamW keeps the CPU run as recorded).
if ((cpu)); then
  dev=cpu limit=(--limit "$subset") step_limit=420
  ref_n=$((subset < 100 ? subset : 100))
  bf16_limit=(--limit "$ref_n") best_probe=(--solver adamw --epochs 5)
else
  dev=cuda limit=() step_limit=300 ref_n=1000 bf16_limit=() best_probe=()
fi
step_limit=${max_step:-$step_limit}
cpu_name=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo 2>/dev/null | head -1)
cpu_name="CPU ${cpu_name:-unknown}"
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null | head -1)
gpu_name=${gpu_name:-cuda:0}
here_dev() { [[ $1 == cpu ]] && echo "$cpu_name" || echo "$gpu_name"; }

torch="" failed=0 start=$(date +%s.%N)
echo "step,device,torch_version,seconds,images_per_s,accuracy,max_rel_diff,status,note" >"$csv"
# row STEP DEVICE SECONDS IMAGES_PER_S ACCURACY MAX_REL_DIFF STATUS NOTE
row() {
  local f=("$@")
  f=("${f[@]//,/;}")
  [[ ${f[6]} == fail ]] && failed=1
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "${f[0]}" "${f[1]}" "${torch//,/;}" "${f[@]:2}" >>"$csv"
  printf 'gpu_check: %-14s %-6s %7s s  %9s img/s  acc %-7s diff %-9s %s\n' \
    "${f[0]}" "${f[6]}" "${f[2]}" "${f[3]}" "${f[4]}" "${f[5]}" "${f[7]}" >&2
}
skip() { row "$1" "$gpu_name" "" "" "" "" skipped "$2"; }
# timed STEP CMD...: runs CMD under the step time limit, output to $work/STEP.log; sets $secs,
# and $why to the last line of its output when it fails.
timed() {
  local step=$1 t0
  shift
  t0=$(date +%s.%N)
  # --foreground: Ctrl-C reaches the step (timeout otherwise runs it in a group of its own);
  # -k: a step inside one long libtorch call (an eigendecomposition) only sees SIGKILL.
  timeout --foreground -k 10 "$step_limit" "$@" >"$work/$step.log" 2>&1
  local rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  why="exit $rc: $(grep -v '^\s*$' "$work/$step.log" | tr '\r' '\n' | grep -v '^\s*$' | tail -1)"
  ((rc == 124 || rc == 137)) && why="over the ${step_limit} s step limit"
  if ((rc != 0)); then
    echo "gpu_check: $step failed ($why); the end of its output:" >&2
    tail -n 8 "$work/$step.log" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 8 | sed 's/^/    /' >&2
  fi
  return $rc
}

# --- data, with this machine's Python
data=()
if timed prepare "$py" "$here/prepare_cifar10.py" "$archive" "$work/data"; then
  data=(--data "$work/data/cifar-10-batches-bin")
  row prepare "$cpu_name" "$secs" "" "" "" ok "binary files with $("$py" -V 2>&1)"
elif grep -q 'Pillow is not installed' "$work/prepare.log"; then
  mkdir -p "$work/data/jpeg" && tar -xzf "$archive" -C "$work/data/jpeg" &&
    data=(--dataset folder --data "$work/data/jpeg")
  row prepare "$cpu_name" "$secs" "" "" "" "$([[ -n ${data[*]} ]] && echo ok || echo fail)" "no Pillow: JPEG folder"
else
  row prepare "$cpu_name" "$secs" "" "" "" fail "$why"
fi

# --- what the binary runs on
if timed info "$bin" info; then
  torch=$(sed -n 's/^libtorch: \([^ ]*\).*/\1/p' "$work/info.log")
  if ((cpu)) || grep -q '^cuda: available' "$work/info.log"; then
    row info "$(here_dev "$dev")" "$secs" "" "" "" ok "$(grep -E '^(cuda|threads):' "$work/info.log" | tr '\n' ' ')"
  else
    row info "$gpu_name" "$secs" "" "" "" fail "libtorch sees no CUDA device: $(grep '^cuda:' "$work/info.log")"
  fi
else
  row info "$gpu_name" "$secs" "" "" "" fail "$why"
fi
if ((failed)); then
  echo "gpu_check: stopped: data or binary not usable; see $csv" >&2
  exit 1
fi

# eager_row STEP FEATURES_DIR CUDNN_BENCHMARK: PyTorch's best eager path (gpu_bench_torch.py)
# at FEATURES_DIR's precision, and cnnprobe's ratio to it: to its first pass (cuDNN's search
# included, like for like with cnnprobe's own figure) and to its second, warm pass.
eager_row() {
  local step=$1 dir=$2 bench=$3 prec=${2%%_*}
  if [[ $dev == cpu ]]; then
    skip "$step" "PyTorch eager on CUDA"
  elif [[ -z ${data[*]} || ${data[0]} != --data ]]; then
    skip "$step" "needs the binary CIFAR files (Pillow)"
  elif timed "$step" "$py" "$here/gpu_bench_torch.py" "${data[1]}" --precision "$prec" --batch 2048 \
    --cudnn-benchmark "$bench"; then
    local cold warm ours
    cold=$(sed -n 's/^images_per_s=\([0-9.]*\).*/\1/p' "$work/$step.log")
    warm=$(sed -n 's/.*warm_images_per_s=\([0-9.]*\).*/\1/p' "$work/$step.log")
    ours=$(stats provenance "$work/$dir" images_per_s 2>/dev/null)
    ratio() { awk -v a="$ours" -v b="$1" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
    row "$step" "$gpu_name" "$secs" "$cold" "" "" ok \
      "PyTorch $("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) eager $prec channels-last + fused BN; batch 2048; cudnn.benchmark $bench; cnnprobe/eager $(ratio "$cold") first pass; $(ratio "$warm") against its warm pass ($warm img/s) (target >= 1.3)"
  else
    row "$step" "$gpu_name" "$secs" "" "" "" fail "$why"
  fi
}

# --- extraction of every image (or the subset), three precisions
common=("${data[@]}" --arch resnet18 --stem cifar --seed 0)
for p in fp32 bf16 fp16; do
  if [[ $p == fp16 && $dev == cpu ]]; then
    skip "extract_$p" "fp16 needs CUDA"
    continue
  fi
  lim=("${limit[@]}")
  [[ $p == bf16 && -n ${bf16_limit[*]} ]] && lim=("${bf16_limit[@]}")
  if timed "extract_$p" "$bin" extract "${common[@]}" "${lim[@]}" --device "$dev" --precision "$p" \
    --batch-size auto --format npy --output "$work/$p"; then
    backoff=$(grep -o 'batch size down to [0-9]*' "$work/extract_$p.log" | tail -1)
    row "extract_$p" "$(here_dev "$dev")" "$secs" "$(stats provenance "$work/$p" images_per_s)" "" "" ok \
      "${lim[1]:-all} train + test images; batch auto${backoff:+, $backoff}; seconds include loading"
  else
    row "extract_$p" "$(here_dev "$dev")" "$secs" "" "" "" fail "$why"
  fi
  # PyTorch's eager path on the same GPU, same precision and batch, in its own process.
  eager_row "eager_$p" "$p" 0
done
# cuDNN's kernel search (CNNPROBE_CUDNN_BENCHMARK=1; torch.backends.cudnn.benchmark) instead
# of its heuristic choice, the default of both, on both sides.
if [[ $dev == cuda ]]; then
  for p in fp32 fp16; do
    if CNNPROBE_CUDNN_BENCHMARK=1 timed "extract_${p}_search" "$bin" extract "${common[@]}" --device cuda \
      --precision "$p" --batch-size auto --format npy --output "$work/${p}_search"; then
      row "extract_${p}_search" "$gpu_name" "$secs" "$(stats provenance "$work/${p}_search" images_per_s)" "" "" ok \
        "CNNPROBE_CUDNN_BENCHMARK=1: cuDNN's kernel search; short batches padded to one shape"
    else
      row "extract_${p}_search" "$gpu_name" "$secs" "" "" "" fail "$why"
    fi
    eager_row "eager_${p}_search" "${p}_search" 1
  done
fi

# --- agreement with the CPU on the first train images. Bounds: fp32 CUDA convolutions use
# TF32 (libtorch's default for cuDNN), ~1e-3 relative; fp16 keeps 11 mantissa bits, bf16 8.
if timed cpu_reference "$bin" extract "${common[@]}" --limit "$ref_n" --device cpu --format npy \
  --output "$work/cpu_ref"; then
  row cpu_reference "$cpu_name" "$secs" "$(stats provenance "$work/cpu_ref" images_per_s)" "" "" ok \
    "fp32 features of $ref_n train + $ref_n test images"
  for p in fp32:1e-2 bf16:1e-1 fp16:3e-2; do
    prec=${p%:*} bound=${p#*:}
    if [[ $dev == cpu && $prec != bf16 ]]; then
      skip "agree_$prec" "CUDA $prec vs CPU fp32"
      continue
    fi
    if [[ ! -f $work/$prec/train_features.npy ]]; then
      row "agree_$prec" "$(here_dev "$dev")" "" "" "" "" fail "no $prec features"
      continue
    fi
    if d=$(stats maxdiff "$work/$prec" "$work/cpu_ref" "$ref_n" 2>&1); then
      ok=$(awk -v d="$d" -v b="$bound" 'BEGIN { print (d <= b) ? "ok" : "fail" }')
      row "agree_$prec" "$(here_dev "$dev")" "" "" "" "$d" "$ok" "$dev $prec vs CPU fp32 on $ref_n images; bound $bound"
    else
      row "agree_$prec" "$(here_dev "$dev")" "" "" "" "" fail "$d"
    fi
  done
else
  row cpu_reference "$cpu_name" "$secs" "" "" "" fail "$why"
fi

# --- the probe on the GPU, then extraction + probe in one run, then the best recipe
if timed probe "$bin" fit "$work/fp32" --device "$dev" --solver lbfgs --wd-search \
  --out "$work/fit" --summary "$work/summary.csv"; then
  row probe "$(here_dev "$dev")" "$secs" "" "$(stats summary "$work/summary.csv" test_top1)" "" ok \
    "L-BFGS + wd-search on fp32 features"
else
  row probe "$(here_dev "$dev")" "$secs" "" "" "" fail "$why"
fi
# summary_row STEP NOTE: a row from the run's summary line (test top-1, images/s).
summary_row() {
  row "$1" "$(here_dev "$dev")" "$secs" "$(stats summary "$work/summary.csv" images_per_s)" \
    "$(stats summary "$work/summary.csv" test_top1)" "" ok "$2"
}
if timed run_resnet18 "$bin" run "${common[@]}" "${limit[@]}" --device "$dev" --batch-size auto \
  --solver lbfgs --wd-search --no-cache --out "$work/run" --summary "$work/summary.csv"; then
  summary_row run_resnet18 "extraction + L-BFGS probe in one process (H100 target < 15 s)"
else
  row run_resnet18 "$(here_dev "$dev")" "$secs" "" "" "" fail "$why"
fi
if timed random_best "$bin" run --preset random-best "${data[@]}" "${limit[@]}" --device "$dev" \
  --batch-size auto --no-cache "${best_probe[@]}" --out "$work/random_best" --summary "$work/summary.csv"; then
  summary_row random_best "run --preset random-best${best_probe[*]:+ ${best_probe[*]}} (H100 target < 60 s)"
else
  row random_best "$(here_dev "$dev")" "$secs" "" "" "" fail "$why"
fi
if [[ $dev == cuda ]]; then
  if CNNPROBE_CUDNN_BENCHMARK=1 timed random_best_search "$bin" run --preset random-best "${data[@]}" --device cuda \
    --batch-size auto --no-cache --out "$work/random_best_search" --summary "$work/summary.csv"; then
    summary_row random_best_search "the same with CNNPROBE_CUDNN_BENCHMARK=1 (cuDNN's kernel search)"
  else
    row random_best_search "$gpu_name" "$secs" "" "" "" fail "$why"
  fi
fi

# --- out-of-memory back-off: 128 images at 4096x4096 need ~190 GB at the first batch
# (ResNet-18's 64-channel stem output at 2048x2048 is 1 GB an image); tapping layer1 keeps
# the compute small. --batch-size auto must halve until a batch fits, then finish.
if ((cpu)); then
  skip oom_backoff "CUDA out-of-memory back-off"
elif timed oom_backoff "$bin" extract "${data[@]}" --arch resnet18 --stem imagenet --features layer1 \
  --input-size 4096 --limit 128 --device cuda --batch-size auto --format npy --output "$work/oom"; then
  sizes=$(grep -o 'batch size down to [0-9]*' "$work/oom_backoff.log" | grep -o '[0-9]*$' | tr '\n' ' ')
  if [[ -n $sizes ]]; then
    row oom_backoff "$gpu_name" "$secs" "" "" "" ok "128 images at 4096x4096; batch 128 -> ${sizes% }"
  else
    row oom_backoff "$gpu_name" "$secs" "" "" "" fail "no out-of-memory at batch 128: nothing was backed off"
  fi
else
  row oom_backoff "$gpu_name" "$secs" "" "" "" fail "$why"
fi

total=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
row total "$(here_dev "$dev")" "$total" "" "" "" \
  "$(awk -v t="$total" 'BEGIN { print (t <= 480) ? "ok" : "fail" }')" "whole check; limit 480 s"
echo "gpu_check: $([[ $failed == 0 ]] && echo passed || echo FAILED); $csv" >&2
exit "$failed"
