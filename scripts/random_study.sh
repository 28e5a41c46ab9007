#!/usr/bin/env bash
# The random-features study behind `--preset random-best` (issue 7), run with cnnprobe itself.
#
#   ./scripts/random_study.sh CIFAR10_DIR            # screening, then the finalists
#   STAGE=screen ./scripts/random_study.sh DIR       # screening only
#   STAGE=final-kernel SEEDS="0" ./scripts/random_study.sh DIR   # one stage, chosen seeds
#   (stages: screen, patchnet, pool, kernel, kernel2, final, final-kernel, final-patches-kernel,
#   final-patches-kernel-cells3, final-patches-kernel-win, final-random-patches, kernel3, kernel4, kernel5,
#   kernel6, kernel7, kernel8, kernel9, kernel10, kernel11, final-patches-lean,
#   final-random-patches-pairs, final-patches-pairs, chart)
#
# Screening runs use --val-only: the L2 strength and every lever are chosen on a seeded
# validation split carved from train (seed 0), and the test split is never scored. Only the
# finalists (each preset, seeds 0-2) are scored on test, once each. Every run appends one row
# to results/random_study.csv with its lever in the `tag` column; a row already there is not
# run again, so the script resumes after an interruption.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data=${1:?usage: random_study.sh CIFAR10_DIR (cifar-10-batches-bin or its parent)}
stage=${STAGE:-all}
# CNNPROBE_BIN: a binary built before, used as it is (screens can then run while the tree
# is being edited); otherwise the set-up builds one.
bin=${CNNPROBE_BIN:-}
[[ -n $bin ]] || "$here/setup.sh" >/dev/null
source "$here/env.sh"
cd "$CNNPROBE_ROOT"
bin=${bin:-$CNNPROBE_BIN}
csv=results/random_study.csv
runs=results/runs/random_study
mkdir -p "$runs"

done_tag() { [[ -f $csv ]] && tail -n +2 "$csv" | grep -q ",$1,"; }

# screen TAG FLAGS...: one validation-only run of seed 0 with the L-BFGS probe. With
# TIMED=1, GNU time's wall seconds and peak RSS go to results/random_study_wall.csv too.
screen() {
  local tag=$1
  shift
  done_tag "$tag" && return 0
  echo "== $tag: $*"
  local timer=()
  [[ -n ${TIMED:-} ]] && timer=(/usr/bin/time -f "%e %M" -o "$runs/$tag.time")
  "${timer[@]}" "$bin" run --dataset cifar10 --data "$data" --seed 0 --solver lbfgs --wd-search --val-only \
    --summary "$csv" --tag "$tag" --out "$runs/$tag" "$@"
  [[ -n ${TIMED:-} ]] && record_time "$tag" 0 "$runs/$tag.time"
  return 0
}

# record_time TAG SEED FILE: GNU time's "%e %M" in FILE as a row of random_study_wall.csv.
record_time() {
  local wall=results/random_study_wall.csv secs kib
  [[ -f $wall ]] || echo "tag,seed,threads,wall_s,peak_rss_gb" >"$wall"
  read -r secs kib <"$3"
  rm "$3"
  echo "$1,$2,$(nproc),${secs%.*},$(awk -v k="$kib" 'BEGIN { printf "%.2f", k / 1048576 }')" >>"$wall"
}

# The base point each lever is varied from.
base=(--arch vgg11 --stem cifar --width-mult 4 --features block1:4,block2:2)
if [[ $stage == all || $stage == screen ]]; then
  # Depth and taps: the early stages keep the spatial detail a deep random net loses.
  screen taps-vgg11-w4-block1:4+block2:2 "${base[@]}"
  # Flip augmentation in feature space.
  screen hflip "${base[@]}" --hflip
  # ... and at test time: each validation/test image scored on both views.
  screen hflip-test "${base[@]}" --hflip --hflip-test
  # Pooling operator.
  screen pool-max "${base[@]}" --pool max
  screen taps-vgg11-w4-block2:4 --arch vgg11 --stem cifar --width-mult 4 --features block2:4
  screen taps-vgg11-w4-block1:4 --arch vgg11 --stem cifar --width-mult 4 --features block1:4
  # Width.
  screen width-vgg11-w1 --arch vgg11 --stem cifar --width-mult 1 --features block1:4,block2:2
  screen width-vgg11-w2 --arch vgg11 --stem cifar --width-mult 2 --features block1:4,block2:2
  # Feature normalisation in the probe.
  screen norm-l2 "${base[@]}" --normalize l2
  # Init scheme.
  screen init-orthogonal "${base[@]}" --init orthogonal
  # BN statistics calibrated on train images (vgg11_bn; at init BN is the identity).
  screen bn-calibrate:5000 --arch vgg11_bn --stem cifar --width-mult 4 --features block1:4,block2:2 \
    --bn calibrate:5000
  # Depth and stem: torchvision's networks as they are, and ResNet-18's early stages.
  screen baseline-resnet18-gap --arch resnet18 --stem cifar
  screen baseline-resnet18-imagenet-stem-gap --arch resnet18 --stem imagenet
  screen baseline-vgg11-gap --arch vgg11 --stem cifar
  screen taps-resnet18-layer1:4+layer2:2 --arch resnet18 --stem cifar --features layer1:4,layer2:2
  # The gain alone cannot matter: a bias-free ReLU net is positively homogeneous.
  screen init-normal:0.01 "${base[@]}" --init normal:0.01
  # Stacking: a lever that added ≥ 0.5 points alone is tried on top of the recipe so far
  # (base + flip views at train and test time).
  screen stack-hflip-test+bn-calibrate:5000 --arch vgg11_bn --stem cifar --width-mult 4 \
    --features block1:4,block2:2 --bn calibrate:5000 --hflip --hflip-test
  # No-gradient track (issue 13): image ZCA fitted on the train images (never their labels),
  # on top of the recipe. The table labels each row's track from its settings.
  screen nograd-zca:0.1+hflip-test "${base[@]}" --hflip --hflip-test --whiten zca:0.1
  # First-layer filters sampled from (whitened) train patches, the rest random.
  screen nograd-patches+zca:0.1+hflip-test "${base[@]}" --hflip --hflip-test --whiten zca:0.1 \
    --first-layer patches
  screen nograd-signed-patches+zca:0.1+hflip-test "${base[@]}" --hflip --hflip-test --whiten zca:0.1 \
    --first-layer signed-patches
  screen nograd-zca:0.01+hflip-test "${base[@]}" --hflip --hflip-test --whiten zca:0.01
fi

# One-layer patch networks (issue 13; Coates & Ng 2011, Thiry et al. 2021): cosines of 6×6
# patches with K filters, both polarities soft-thresholded, pooled into 2×2 cells. Screened
# at K = 512 (--width-mult 2) without flips, then the best settings at K = 2048.
pn=(--arch patchnet --features encode:2)
if [[ $stage == all || $stage == screen || $stage == patchnet ]]; then
  screen nograd-patchnet-w2-pzca:0.01-soft:0.25 "${pn[@]}" --width-mult 2 --whiten patch-zca:0.01 \
    --first-layer patches --encode soft:0.25
  screen nograd-patchnet-w2-pzca:0.01-soft:0.1 "${pn[@]}" --width-mult 2 --whiten patch-zca:0.01 \
    --first-layer patches --encode soft:0.1
  screen nograd-patchnet-w2-pzca:0.1-soft:0.25 "${pn[@]}" --width-mult 2 --whiten patch-zca:0.1 \
    --first-layer patches --encode soft:0.25
  screen nograd-patchnet-w2-pzca:0.3-soft:0.25 "${pn[@]}" --width-mult 2 --whiten patch-zca:0.3 \
    --first-layer patches --encode soft:0.25
  # The best of the above (eps 0.1, threshold 0.25) at K = 1024 with both flip views. At
  # K = 2048 (16384 features) the probe's copies of 100k train rows passed 24 GB: killed.
  screen nograd-patchnet-w4-pzca:0.1-soft:0.25+hflip-test "${pn[@]}" --width-mult 4 \
    --whiten patch-zca:0.1 --first-layer patches --encode soft:0.25 --hflip --hflip-test
  # Data-free: the same network with random unit filters on unwhitened patches.
  screen patchnet-w2-soft:0.1 "${pn[@]}" --width-mult 2 --encode soft:0.1
fi

# Pooling (issue 13): finer cells and overlapping windows at K = 512, no flips, against
# nograd-patchnet-w2-pzca:0.1-soft:0.25 (2×2 cells).
pw=(--arch patchnet --width-mult 2 --whiten patch-zca:0.1 --first-layer patches --encode soft:0.25)
if [[ $stage == pool ]]; then
  screen nograd-patchnet-w2-pzca:0.1-soft:0.25-cells3 "${pw[@]}" --features encode:3
  # The same 3×3 outputs from overlapping 13×13 windows at stride 7.
  screen nograd-patchnet-w2-pzca:0.1-soft:0.25-win13s7 "${pw[@]}" --features encode:13/7
  # Thiry et al.'s 5×5 windows at stride 3 (8×8 outputs), with K = 64 and 128 filters to
  # keep the features at 8192 and 16384.
  screen nograd-patchnet-w0.25-pzca:0.1-soft:0.25-win5s3 "${pw[@]}" --width-mult 0.25 --features encode:5/3
  screen nograd-patchnet-w0.5-pzca:0.1-soft:0.25-win5s3 "${pw[@]}" --width-mult 0.5 --features encode:5/3
fi

# Readouts (issue 13): kernel ridge on the arc-cosine kernel of each track's features (one
# row per image: the mean of its two views), against L-BFGS on the same features.
if [[ $stage == kernel ]]; then
  screen kernel-hflip-test "${base[@]}" --hflip --hflip-test --solver kernel
  # The same readout on the no-gradient recipe's features (patches-best), against
  # nograd-patchnet-w4-pzca:0.1-soft:0.25+hflip-test's 76.14% with L-BFGS.
  screen kernel-nograd-patchnet-w4-pzca:0.1-soft:0.25+hflip-test "${pn[@]}" --width-mult 4 \
    --whiten patch-zca:0.1 --first-layer patches --encode soft:0.25 --hflip --hflip-test --solver kernel
  # Finer cells for the data-free features, now that the readout's cost grows with the
  # features only through the Gram matrix's products: block2 at 4×4 (12,288 features),
  # against kernel-hflip-test.
  screen kernel-block1:4+block2:4+hflip-test --arch vgg11 --stem cifar --width-mult 4 \
    --features block1:4,block2:4 --hflip --hflip-test --solver kernel
fi

# Wider and finer for both tracks with the kernel readout (issue 13), each against its kernel
# row above: two independent random networks (12,288 data-free features); K = 2048 filters
# at 2×2 cells (16,384) and K = 1024 at 3×3 cells (18,432) for the no-gradient track.
if [[ $stage == kernel2 ]]; then
  screen kernel-ensemble2-hflip-test "${base[@]}" --hflip --hflip-test --solver kernel --ensemble 2
  screen kernel-nograd-patchnet-w8-pzca:0.1-soft:0.25+hflip-test "${pn[@]}" --width-mult 8 \
    --whiten patch-zca:0.1 --first-layer patches --encode soft:0.25 --hflip --hflip-test --solver kernel
  screen kernel-nograd-patchnet-w4-pzca:0.1-soft:0.25-cells3+hflip-test --arch patchnet \
    --features encode:3 --width-mult 4 --whiten patch-zca:0.1 --first-layer patches \
    --encode soft:0.25 --hflip --hflip-test --solver kernel
fi

# Issue 13, third session: the no-gradient recipe's pooling and whitening at
# 3×3 cells (18,432 features), re-chosen under the kernel readout (they were chosen under
# L-BFGS at K = 512).
if [[ $stage == kernel3 ]]; then
  cells3=(--arch patchnet --width-mult 4 --first-layer patches --hflip --hflip-test --solver kernel)
  screen kernel-nograd-patchnet-w4-pzca:0.1-soft:0.25-win13s7+hflip-test "${cells3[@]}" \
    --features encode:13/7 --whiten patch-zca:0.1 --encode soft:0.25
  screen kernel-nograd-patchnet-w4-pzca:0.03-soft:0.25-cells3+hflip-test "${cells3[@]}" \
    --features encode:3 --whiten patch-zca:0.03 --encode soft:0.25
fi

# Overlapping 13×13 windows at stride 7 (3×3 windows on the 27×27 responses) beat 3×3 cells
# at K = 1024 (kernel3: 82.78% against 81.98%); K = 2048 with them: 36,864 features. Timed,
# and uncached as the finalists are, for the 20 GB limit.
if [[ $stage == kernel4 ]]; then
  TIMED=1 screen kernel-nograd-patchnet-w8-pzca:0.1-soft:0.25-win13s7+hflip-test --arch patchnet \
    --width-mult 8 --first-layer patches --whiten patch-zca:0.1 --encode soft:0.25 \
    --features encode:13/7 --hflip --hflip-test --solver kernel --no-cache
fi

# The same overlap on the data-free features: block1's 16×16 map in 4×4 windows of 7 at
# stride 3, block2's 8×8 in 2×2 windows of 6 at stride 2 (6144 features, as the preset's
# cells give).
if [[ $stage == kernel5 ]]; then
  screen kernel-block1:7s3+block2:6s2+hflip-test --arch vgg11 --stem cifar --width-mult 4 \
    --features block1:7/3,block2:6/2 --hflip --hflip-test --solver kernel
fi

# Data-free features of another kind under the kernel readout: the patch network with
# random filters and no whitening, pooled as patches-best is; and the preset's VGG taps
# with block3 (4×4 map, 2×2 cells) added.
if [[ $stage == kernel6 ]]; then
  screen kernel-patchnet-w4-soft:0.1-win13s7+hflip-test --arch patchnet --width-mult 4 \
    --encode soft:0.1 --features encode:13/7 --hflip --hflip-test --solver kernel
  screen kernel-block1:4+block2:2+block3:2+hflip-test --arch vgg11 --stem cifar --width-mult 4 \
    --features block1:4,block2:2,block3:2 --hflip --hflip-test --solver kernel
fi

# Issue 13, fourth session: the readout's kernel, on patches-best's cached features (K = 1024,
# 13/7 windows; arc-cosine 82.78% in kernel3). First the same run with the features held in
# bf16 (--kernel-precision bf16, which every screen here then uses), then the kernel's shape:
# two arc-cosine layers, and exponential kernels from about the arc-cosine's curvature
# (B ≈ 0.6) to much more local ones.
if [[ $stage == kernel7 ]]; then
  win=(--arch patchnet --width-mult 4 --first-layer patches --whiten patch-zca:0.1 --encode soft:0.25
    --features encode:13/7 --hflip --hflip-test --solver kernel --kernel-precision bf16)
  tag=kernel-nograd-patchnet-w4-pzca:0.1-soft:0.25-win13s7+hflip-test
  TIMED=1 screen "$tag-bf16" "${win[@]}"
  for k in ${KERNELS:-arccos2 exp:2 exp:4 exp:1}; do
    TIMED=1 screen "$tag-bf16-$k" "${win[@]}" --kernel "$k"
  done
fi

# The arc-cosine stayed best (exp:2 lost a point), so kernel8 goes back to the features:
# finer windows, 4×4 of 12 at stride 5 on the 27×27 responses (32,768 features at K = 1024;
# bf16 keeps them beside the Gram matrix), the exponential kernel's trend at B = 1, and the
# soft threshold, chosen under L-BFGS, either side of 0.25 under the kernel readout.
if [[ $stage == kernel8 ]]; then
  pz=(--arch patchnet --width-mult 4 --first-layer patches --whiten patch-zca:0.1 --hflip --hflip-test
    --solver kernel --kernel-precision bf16)
  tag=kernel-nograd-patchnet-w4-pzca:0.1
  TIMED=1 screen "$tag-soft:0.25-win12s5+hflip-test-bf16" "${pz[@]}" --encode soft:0.25 \
    --features encode:12/5 --no-cache
  TIMED=1 screen "$tag-soft:0.25-win13s7+hflip-test-bf16-exp:1" "${pz[@]}" --encode soft:0.25 \
    --features encode:13/7 --kernel exp:1
  for a in ${THRESHOLDS:-0.35 0.15}; do
    TIMED=1 screen "$tag-soft:$a-win13s7+hflip-test-bf16" "${pz[@]}" --encode "soft:$a" \
      --features encode:13/7 --no-cache
  done
fi

# Width with --kernel-precision bf16-lean (views averaged as extracted, rows in bf16; run
# as "--kernel-precision bf16 --kernel-lean", the flag's first spelling): K = 3072 filters in
# the 13/7 windows, 55,296 features, for both tracks (patches-best's whitened data patches
# and random-patches' random filters). Timed and uncached, as the finalists are, for the
# 20 GB limit.
if [[ $stage == kernel9 ]]; then
  lean=(--features encode:13/7 --hflip --hflip-test --solver kernel --kernel-precision bf16-lean)
  TIMED=1 screen "kernel-nograd-patchnet-w12-pzca:0.1-soft:${NOGRAD_SOFT:-0.25}-win13s7+hflip-test-lean" \
    --arch patchnet --width-mult 12 --first-layer patches --whiten patch-zca:0.1 \
    --encode "soft:${NOGRAD_SOFT:-0.25}" "${lean[@]}"
  TIMED=1 screen kernel-patchnet-w12-soft:0.1-win13s7+hflip-test-lean --arch patchnet --width-mult 12 \
    --encode soft:0.1 "${lean[@]}"
fi

# Issue 13, fifth session: the kernel averaged over the four pairs of two images' mirrored
# views (--kernel-views pairs) instead of the kernel of their mean features, on the cached
# K = 1024 features of both tracks (bf16 rows: the Gram matrix then costs four times kernel7's).
if [[ $stage == kernel10 ]]; then
  pairs=(--features encode:13/7 --hflip --hflip-test --solver kernel --kernel-precision bf16 --kernel-views pairs)
  TIMED=1 screen kernel-nograd-patchnet-w4-pzca:0.1-soft:0.25-win13s7+hflip-test-bf16-pairs --arch patchnet \
    --width-mult 4 --first-layer patches --whiten patch-zca:0.1 --encode soft:0.25 "${pairs[@]}"
  TIMED=1 screen kernel-patchnet-w4-soft:0.1-win13s7+hflip-test-bf16-pairs --arch patchnet --width-mult 4 \
    --encode soft:0.1 "${pairs[@]}"
fi

# kernel10's pairs gained 0.78 points at K = 1024 (83.56% against 82.78%), more than
# tripling the filters did with mean rows (83.36% at K = 3072). Both views kept take twice
# the rows' memory, so under the 20 GB limit: K = 1536 with each view in bf16 from
# extraction on (bf16-lean with pairs), 27,648 features a view. Timed and uncached.
if [[ $stage == kernel11 ]]; then
  TIMED=1 screen kernel-nograd-patchnet-w6-pzca:0.1-soft:0.25-win13s7+hflip-test-lean-pairs --arch patchnet \
    --width-mult 6 --first-layer patches --whiten patch-zca:0.1 --encode soft:0.25 --features encode:13/7 \
    --hflip --hflip-test --solver kernel --kernel-precision bf16-lean --kernel-views pairs
fi

# Finalists: each track's preset, three seeds, scored on test once each. Wall time and peak
# resident memory per seed come from /usr/bin/time (GNU time: %e seconds, %M KiB).
# finalist TAG PRESET [FLAGS...]: seeds 0-2 of the preset with FLAGS added.
finalist() {
  local tag=$1 preset=$2
  shift 2
  for seed in ${SEEDS:-0 1 2}; do
    local out=$runs/$tag-s$seed
    [[ -f $csv ]] && tail -n +2 "$csv" | grep ",$tag," | grep -q "$out" && continue
    echo "== $tag seed $seed"
    # Uncached, so the wall time is a user's first run (extraction included).
    /usr/bin/time -f "%e %M" -o "$out.time" "$bin" run --preset "$preset" --dataset cifar10 \
      --data "$data" --seed "$seed" --no-cache --summary "$csv" --tag "$tag" --out "$out" "$@"
    record_time "$tag" "$seed" "$out.time"
  done
}
if [[ $stage == all || $stage == final ]]; then
  for preset in random-best patches-best; do
    finalist "final-$preset" "$preset"
  done
fi
# The data-free recipe with the kernel readout (kernel-hflip-test: 74.78% validation against
# hflip-test's 71.08% with L-BFGS).
if [[ $stage == final-kernel ]]; then
  finalist final-random-best-kernel random-best --solver kernel
fi
# The no-gradient recipe with the kernel readout (kernel-nograd-patchnet-w4-pzca:0.1-soft:0.25
# +hflip-test: 80.64% validation against 76.14% with L-BFGS).
if [[ $stage == final-patches-kernel ]]; then
  finalist final-patches-best-kernel patches-best --solver kernel
fi

# The no-gradient recipe with 3×3 cells (kernel-nograd-patchnet-w4-pzca:0.1-soft:0.25-cells3
# +hflip-test: 81.98% validation against 80.64% at 2×2 cells), the preset's other settings
# unchanged.
if [[ $stage == final-patches-kernel-cells3 ]]; then
  # patches-best's flags then had 2×2 cells; --features encode:3 overrides them.
  finalist final-patches-best-kernel-cells3 patches-best --features encode:3
fi
# The data-free patch network (random filters, no whitening) with patches-best's pooling:
# 78.30% validation in kernel6, against random-best's 74.78%.
if [[ $stage == final-random-patches ]]; then
  finalist final-random-patches random-patches
fi
# patches-best since 29 November: 3×3 overlapping windows (encode:13/7).
if [[ $stage == final-patches-kernel-win ]]; then
  finalist final-patches-best-kernel-win13s7 patches-best
fi

# patches-best since 29 November, fourth session: K = 3072 filters with bf16-lean rows
# (kernel9's screen), the rest as before.
if [[ $stage == final-patches-lean ]]; then
  finalist final-patches-best-w12-lean patches-best
fi

# random-patches since 29 November, fifth session: the kernel averaged over the view pairs,
# rows in bf16 (kernel10's data-free screen: 79.34% against 78.30%), the rest as before.
if [[ $stage == final-random-patches-pairs ]]; then
  finalist final-random-patches-pairs random-patches
fi

# The candidate no-gradient preset of the fifth session, not adopted: K = 1024 filters with
# the view-pair kernel, rows in bf16 (kernel10's screen: 83.56% against 83.36% for K = 3072
# with mean views; over the three seeds' validation it did not lead).
if [[ $stage == final-patches-pairs ]]; then
  finalist final-patches-best-pairs patches-best --width-mult 4 --kernel-precision bf16 --kernel-views pairs
fi

if [[ $stage == all || $stage == chart ]]; then
  # Every run's regularisation search (the probe's L2 lever), one file with the run's tag.
  {
    echo "run,stage,weight_decay,val_acc,steps,chosen"
    for f in "$runs"/*/wd_search.csv; do
      tail -n +2 "$f" | sed "s|^|$(basename "$(dirname "$f")"),|"
    done
  } >results/random_study_wd_search.csv
  "$bin" plot "$csv" --by tag --metric val_acc -o results/random_study_chart.png \
    --title "Untrained CNN features on CIFAR-10: validation accuracy per lever (seed 0; finalist: 3 seeds)"
  "$bin" plot "$csv" --by tag --metric val_acc -o results/random_study_chart.svg \
    --title "Untrained CNN features on CIFAR-10: validation accuracy per lever (seed 0; finalist: 3 seeds)"
fi
