#!/usr/bin/env bash
# The kernel readout's Gram matrix, float32 against --kernel-precision bf16, in one
# invocation: cnnprobe's two paths alternated on the same cached patches-best features at
# K = WIDTH·256 filters (default 1024: 18,432 features; --limit images, --val-only), and
# PyTorch's own products of a matrix of the same shape
# (float32, the strongest exact peer; bf16, whose output is rounded to bf16).
#
# usage: scripts/bench_kernel.sh DATA/cifar-10-batches-bin [OUT_CSV]
# Env: CNNPROBE_BIN (default target/release/cnnprobe), WIDTH (--width-mult, default 4),
#      LIMIT (default 11112 train images:
#      10,000 fit rows), ROUNDS (default 3), THREADS (default: all cores).
set -euo pipefail
data=${1:?usage: $0 DATA/cifar-10-batches-bin [OUT_CSV]}
out=${2:-results/bench_kernel.csv}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/env.sh"
bin=${CNNPROBE_BIN:-$CNNPROBE_ROOT/target/release/cnnprobe}
limit=${LIMIT:-11112}
threads=${THREADS:-$(nproc)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # run PRECISION: one validation-only fit; prints its stderr
  "$bin" run --preset patches-best --width-mult "${WIDTH:-4}" --dataset cifar10 --data "$data" --limit "$limit" --val-only \
    --threads "$threads" --kernel-precision "$1" --cache-dir "$work/cache" --out "$work/r-$1" \
    --summary "$work/s.csv" 2>&1 | tr '\r' '\n'
}
echo "== extracting the features once (cached for the rounds)"
run fp32 >/dev/null

echo "tool,path,round,rows,dims,gram_s,gflops,cg_s,val_acc,threads" >"$work/rows.csv"
for round in $(seq 1 "${ROUNDS:-3}"); do
  order="fp32 bf16"
  [ $((round % 2)) -eq 0 ] && order="bf16 fp32"
  for p in $order; do
    log=$(run "$p")
    rows=$(sed -n 's/^kernel: \([0-9]*\)×.*/\1/p' <<<"$log" | head -1)
    gram=$(sed -n 's/^kernel: Gram matrix in \([0-9.]*\) s/\1/p' <<<"$log")
    cg=$(sed -n 's/^kernel: .* steps (.*), \([0-9.]*\) s$/\1/p' <<<"$log")
    acc=$(sed -n 's/^probe: val_acc \([0-9.]*\).*/\1/p' <<<"$log")
    dims=$(python3 -c 'import csv, sys; print(list(csv.DictReader(open(sys.argv[1])))[-1]["feature_dim"])' "$work/s.csv")
    # The Gram matrix computes the products on and below the diagonal: n(n+1)/2 · d multiply-adds.
    gf=$(awk -v n="$rows" -v d="$dims" -v s="$gram" 'BEGIN { printf "%.0f", n * (n + 1) * d / s / 1e9 }')
    echo "cnnprobe,$p,$round,$rows,$dims,$gram,$gf,$cg,$acc,$threads" | tee -a "$work/rows.csv"
  done
done

# PyTorch in the same invocation: X·Xᵀ of a random matrix of the Gram's shape (the values
# do not change the time); its full product does twice the Gram's multiply-adds.
rows=$(tail -1 "$work/rows.csv" | cut -d, -f4)
dims=$(tail -1 "$work/rows.csv" | cut -d, -f5)
"$CNNPROBE_PYTHON" - "$rows" "$dims" "$threads" "${ROUNDS:-3}" >>"$work/rows.csv" <<'EOF'
import sys, time, torch
n, d, threads, rounds = (int(a) for a in sys.argv[1:])
torch.set_num_threads(threads)
x = torch.randn(n, d)
for name, m in [("fp32 mm", x), ("bf16 mm (bf16 output)", x.bfloat16())]:
    m @ m[:512].T
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        m @ m.T
        s = time.perf_counter() - t
        print(f"pytorch {torch.__version__},{name},{r},{n},{d},{s:.1f},{2 * n * n * d / s / 1e9:.0f},,,{threads}")
EOF
tail -n +2 "$work/rows.csv" | grep '^pytorch' || true
mkdir -p "$(dirname "$out")"
cp "$work/rows.csv" "$out"
echo "wrote $out"
