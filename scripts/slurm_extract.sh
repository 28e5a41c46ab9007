#!/usr/bin/env bash
# Slurm job-array example: one image folder's features extracted in 4 shards, one GPU each,
# then joined by a dependent job. Each array task runs
#   cnnprobe extract --dataset folder ... --shard K/N --device cuda --output $OUT/shard-K
# with K = its index in the array (from 0) and N = the array's task count; shard K holds the
# K-th of N contiguous parts of train and of test, so `cnnprobe merge` of all N gives exactly
# the rows of one unsharded run.
#
#   usage: DATA=/data/imagenet-folder OUT=/scratch/feats sbatch scripts/slurm_extract.sh
#          (sbatch exports the caller's environment by default; or --export=ALL,DATA=...,OUT=...)
#
# Submit it, then the merge once every task succeeded (afterok on an array job waits for all
# of its tasks; the shard-* glob is quoted, so the merge job's shell expands it):
#   JOBID=$(DATA=/data/imagenet-folder OUT=/scratch/feats sbatch --parsable scripts/slurm_extract.sh)
#   sbatch --dependency=afterok:${JOBID%;*} --wrap "cnnprobe merge /scratch/feats/shard-* --output /scratch/feats/merged"
#   (or, with OUT set in your shell: --wrap "cnnprobe merge $OUT/shard-* --output $OUT/merged")
#
# Outside Slurm it runs one shard locally (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT
# default to 0 / 1: the whole folder), e.g. a quick CPU try of all four shards and the merge:
#   for k in 0 1 2 3; do SLURM_ARRAY_TASK_ID=$k SLURM_ARRAY_TASK_COUNT=4 DEVICE=cpu \
#     DATA=/tmp/cnnprobe-stream-bench/folder-10000-1000 OUT=/tmp/feats scripts/slurm_extract.sh; done
#   target/release/cnnprobe merge /tmp/feats/shard-* --output /tmp/feats/merged
#
#   env: DATA (required: DATA/train/<class>/*.jpg, DATA/test/<class>/*.jpg)  OUT (required)
#        ARCH=resnet18  INPUT_SIZE=224  DEVICE=cuda  WORKERS (decoding threads) =
#        $SLURM_CPUS_PER_TASK, else 8  FORMAT=npy  EXTRA_FLAGS="..." (more extract flags, e.g.
#        "--center-crop" for photos of mixed sizes: Resize(256) + CenterCrop(224) at 224)
#        CNNPROBE_BIN: the binary [default: target/release/cnnprobe of the submit directory
#        under Slurm (sbatch runs a copy of this script), else of this script's repository;
#        else cnnprobe on PATH]
#
# The #SBATCH lines below are read by sbatch only (to bash they are comments); adapt the
# partition, time and memory to your cluster. --array=0-3 gives 4 shards: change it to 0-7
# for 8 and nothing else needs to change (keep it starting at 0 and without a step).
#SBATCH --job-name=cnnprobe-extract
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=cnnprobe-extract-%A_%a.out
set -euo pipefail
data=${DATA:?set DATA to the image folder (DATA/train/<class>/*, DATA/test/<class>/*)}
out=${OUT:?set OUT to the output folder (the shards go to OUT/shard-K)}
k=${SLURM_ARRAY_TASK_ID:-0}
n=${SLURM_ARRAY_TASK_COUNT:-1}
# An array that does not start at 0 (e.g. --array=1-4) still gives shards 0..N-1.
k=$((k - ${SLURM_ARRAY_TASK_MIN:-0}))

bin=${CNNPROBE_BIN:-}
if [[ -z $bin ]]; then
  if [[ -n ${SLURM_SUBMIT_DIR:-} ]]; then
    root=$SLURM_SUBMIT_DIR
  else
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  fi
  bin=$root/target/release/cnnprobe
  [[ -x $bin ]] || bin=$(command -v cnnprobe || true)
fi
if [[ -z $bin || ! -x $bin ]]; then
  echo "error: no cnnprobe binary (set CNNPROBE_BIN, or submit from the repository root after ./scripts/setup.sh)" >&2
  exit 1
fi
read -ra extra <<< "${EXTRA_FLAGS:-}"

mkdir -p "$out"
echo "shard $k/$n of $data on $(hostname) (${CUDA_VISIBLE_DEVICES:+GPU $CUDA_VISIBLE_DEVICES, }$bin)" >&2
# --skip-bad-images: on a large real folder, one corrupt JPEG should not end a shard's run
# (each is reported with a warning and counted; `cnnprobe scan` finds them beforehand).
"$bin" extract --dataset folder --data "$data" --arch "${ARCH:-resnet18}" \
  --input-size "${INPUT_SIZE:-224}" --workers "${WORKERS:-${SLURM_CPUS_PER_TASK:-8}}" \
  --format "${FORMAT:-npy}" --device "${DEVICE:-cuda}" --skip-bad-images \
  --shard "$k/$n" --output "$out/shard-$k" "${extra[@]}"
