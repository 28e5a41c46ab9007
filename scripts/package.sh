#!/usr/bin/env bash
# A portable cnnprobe for machines that have PyTorch but no Rust: the release binary built
# against the chosen torch, a launcher that loads the target machine's torch libraries
# after checking their version, and gpu_check.sh with its Python helpers. Writes the folder
# and a .tar.gz of it, and fails if they pass 64 MiB.
#
#   usage: package.sh [--torch existing|PYTHON] [--out DIR]
#   --torch  build against that Python's PyTorch 2.11–2.13 (as setup.sh --torch)
#            [default: the set-up's torch: CNNPROBE_TORCH, else the pinned 2.13.0]
#   --out    [default: target/dist/cnnprobe-<version>-torch-<torch version>]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=""
while (($#)); do
  case $1 in
    --torch) export CNNPROBE_TORCH=${2:?usage: package.sh [--torch existing|PYTHON] [--out DIR]}; shift ;;
    --out) out=${2:?usage: package.sh [--torch existing|PYTHON] [--out DIR]}; shift ;;
    *) echo "usage: package.sh [--torch existing|PYTHON] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
"$here/setup.sh"
source "$here/env.sh"

version=$("$CNNPROBE_BIN" --version | awk '{ print $2 }')
torch=$("$CNNPROBE_BIN" info | sed -n 's/^built against libtorch: //p')
out=$(realpath -m "${out:-$CNNPROBE_ROOT/target/dist/cnnprobe-$version-torch-${torch//+/-}}")
rm -rf "$out" "$out.tar.gz"
mkdir -p "$out/bin"
cp "$CNNPROBE_BIN" "$out/bin/cnnprobe"
# Symbols are a third of the binary and no use to a user.
strip "$out/bin/cnnprobe"
cp "$here/launcher.sh" "$out/cnnprobe"
cp "$here/gpu_check.sh" "$here/prepare_cifar10.py" "$here/gpu_check_stats.py" "$here/gpu_bench_torch.py" "$out/"

# What the target machine must have, read from the binary itself.
needs_cuda=$(readelf -d "$out/bin/cnnprobe" | grep -q 'libtorch_cuda\.so' && echo yes || echo no)
newest() { objdump -T "$out/bin/cnnprobe" | grep -o "$1_[0-9.]*" | sed "s/^$1_//" | sort -uV | tail -1; }
cat >"$out/BUILD-INFO" <<EOF
cnnprobe=$version
torch_version=$torch
needs_torch_cuda=$needs_cuda
glibc=$(newest GLIBC)
glibcxx=$(newest GLIBCXX)
built=$(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m)
EOF
cat >"$out/README.txt" <<EOF
cnnprobe $version for PyTorch ${torch%%+*} (built against $torch; CUDA build: $needs_cuda).
Needs on the target machine: Linux $(uname -m), glibc $(newest GLIBC)+, libstdc++ with GLIBCXX_$(newest GLIBCXX),
and PyTorch ${torch%%+*} (any CUDA variant$([[ $needs_cuda == yes ]] && echo ", but not the CPU-only build")). No Rust, no network.

  ./cnnprobe info                      versions, threads, CUDA devices
  ./cnnprobe run --data DIR ...        see ./cnnprobe --help
  ./gpu_check.sh cifar10-jpeg.tar.gz   end-to-end GPU check, writes gpu_check.csv (--cpu: no GPU)

The launcher uses the torch of \`python3\` on PATH, or CNNPROBE_LIBTORCH_DIR=/path/to/torch/lib.
EOF
tar -czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"

limit=$((64 * 1024 * 1024))
size=$(du -sb "$out" | cut -f1)
packed=$(stat -c %s "$out.tar.gz")
echo "package: $out ($((size / 1024 / 1024)) MiB; $out.tar.gz $((packed / 1024 / 1024)) MiB)"
if ((size > limit || packed > limit)); then
  echo "error: the package passes 64 MiB" >&2
  exit 1
fi
