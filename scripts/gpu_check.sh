#!/usr/bin/env bash
# CUDA check, for any machine with a GPU and the set-up done (about 2 minutes):
# confirms libtorch sees CUDA, extracts a synthetic 10k CIFAR-sized set with
# resnet18-cifar-stem in fp32 and bf16 on CUDA, prints images/s for each and the max
# relative difference between CUDA and CPU features, and fits a probe on CUDA.
# Without CUDA it says so and exits 0.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/env.sh"
bin=$CNNPROBE_ROOT/target/release/cnnprobe
[[ -x $bin ]] || "$here/setup.sh"
# GPU_CHECK_DEVICE=cpu GPU_CHECK_PER_FILE=200 runs the same steps on the CPU (to test this script).
dev=${GPU_CHECK_DEVICE:-cuda}
per_file=${GPU_CHECK_PER_FILE:-2000}
"$bin" info
if [[ $dev == cuda ]] && ! "$bin" info | grep -q '^cuda: available'; then
  echo "gpu_check: no CUDA device visible to libtorch; nothing to check"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$CNNPROBE_PYTHON" - "$work/data" "$per_file" <<'PY'
import sys, numpy as np, pathlib
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True); per_file = int(sys.argv[2])
rng = np.random.default_rng(0)
def batch(n):
    y = rng.integers(0, 10, n, dtype=np.uint8)
    # class-dependent mean colour plus noise, so the probe has something to learn
    base = (y[:, None].astype(np.int32) * np.array([25, 70, 130])) % 256
    x = np.clip(base[:, :, None] + rng.integers(0, 60, (n, 3, 1024)), 0, 255).astype(np.uint8)
    return np.concatenate([y[:, None], x.reshape(n, 3072)], 1)
for i in range(1, 6):
    batch(per_file).tofile(out / f"data_batch_{i}.bin")
batch(per_file).tofile(out / "test_batch.bin")
PY
common=(--data "$work/data" --arch resnet18 --stem cifar --seed 0 --format npy)
for p in fp32 bf16; do
  "$bin" extract "${common[@]}" --device "$dev" --precision "$p" --batch-size auto --output "$work/$p"
done
"$bin" extract "${common[@]}" --device cpu --limit $((per_file < 1000 ? per_file : 1000)) --output "$work/cpu"
"$CNNPROBE_PYTHON" - "$work" <<'PY'
import sys, json, numpy as np, pathlib
w = pathlib.Path(sys.argv[1])
for p in ("fp32", "bf16"):
    prov = dict(json.loads((w / p / "features.json").read_text())["provenance"])
    print(f"{prov['device']} {p}: {prov['images_per_s']} images/s ({prov['device']}, batch {prov['batch_size']})")
cpu = np.load(w / "cpu/train_features.npy")
for p in ("fp32", "bf16"):
    gpu = np.load(w / p / "train_features.npy")[: len(cpu)]
    print(f"max relative difference {p} vs cpu fp32: {np.abs(gpu - cpu).max() / np.abs(cpu).max():.3e}")
PY
"$bin" fit "$work/fp32" --device "$dev" --solver lbfgs --wd-search --out "$work/fit" --summary "$work/summary.csv"
echo "gpu_check: done"
