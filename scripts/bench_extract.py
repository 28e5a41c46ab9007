#!/usr/bin/env python3
"""Extraction benchmark: `cnnprobe extract` vs the equivalent PyTorch eager torchvision
script, in one invocation, on the same machine, data, threads, batch size and model.

Each side runs in its own process (so peak RSS is its own). Throughput is images/s of the
extraction loop alone (both exclude start-up, model build and data loading). "GFLOP/s" is
torch's FlopCounterMode count of one forward pass (direct convolution's multiply-adds) times
images/s. No fraction of a machine peak is reported: oneDNN's Winograd 3×3 kernels do fewer
operations than that count, so such a fraction exceeds 1 and means nothing.

usage: bench_extract.py --data DIR/cifar-10-batches-bin [--out results/bench_extract.csv]
"""
import argparse, csv, json, os, subprocess, sys, tempfile, time
from pathlib import Path

# (name, cnnprobe flags, images per split: None = all 50k+10k, else a subset)
CASES = [
    ("resnet18-cifar-stem", ["--arch", "resnet18", "--stem", "cifar"], 10000),
    ("resnet18-imagenet-stem-32px", ["--arch", "resnet18", "--stem", "imagenet"], None),
    ("resnet50-imagenet-stem-32px", ["--arch", "resnet50", "--stem", "imagenet"], None),
    ("vgg11_bn-cifar-stem", ["--arch", "vgg11_bn", "--stem", "cifar"], 10000),
]

TORCH_CHILD = r'''
import sys, json, time, resource
import numpy as np, torch, torchvision
arch, stem, limit, threads, batch, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
def read(names):
    raw = np.concatenate([np.fromfile(f"{data}/{n}", dtype=np.uint8).reshape(-1, 3073) for n in names])
    return raw[:, 1:].reshape(-1, 3, 32, 32)
tr = read([f"data_batch_{i}.bin" for i in range(1, 6)]); te = read(["test_batch.bin"])
if limit: tr, te = tr[:limit], te[:limit]
images = torch.from_numpy(np.concatenate([tr, te]))
torch.manual_seed(0)
m = getattr(torchvision.models, arch)()
if arch.startswith("resnet"):
    if stem == "cifar":
        m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity()
    m.fc = torch.nn.Identity()
else:
    if stem == "cifar":
        m.avgpool = torch.nn.Identity()
    m.classifier = torch.nn.Identity()
    feats = m.features
    m = torch.nn.Sequential(feats, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
m.eval()
mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1); std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
out = torch.empty(len(images), 512 if arch != "resnet50" else 2048)
with torch.inference_mode():
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float().div_(255).sub_(mean).div_(std)
        out[i:i + len(x)] = m(x)
    secs = time.perf_counter() - t0
from torch.utils.flop_counter import FlopCounterMode
with torch.inference_mode(), FlopCounterMode(display=False) as fc:
    m(torch.zeros(1, 3, 32, 32))
print(json.dumps({"images": len(images), "secs": secs, "flops_per_image": fc.get_total_flops()}))
'''


def peak_rss_mb(cmd, env=None):
    """Runs cmd, returning (stdout, stderr, peak RSS in MiB) of that child alone."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = b"", b""
    # Read pipes to the end, then reap with wait4 to get this child's own rusage.
    out = p.stdout.read(); err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return out.decode(), err.decode(), ru.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--cnnprobe", default="target/release/cnnprobe")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES))
    ap.add_argument("--out", type=Path, default=Path("results/bench_extract.csv"))
    a = ap.parse_args()
    rows = []
    for name, flags, limit in CASES:
        if name not in a.cases.split(","):
            continue
        arch = flags[1]; stem = flags[3]
        with tempfile.TemporaryDirectory() as work:
            cmd = [a.cnnprobe, "extract", "--data", a.data, "--device", "cpu", "--threads", str(a.threads),
                   "--batch-size", str(a.batch_size), "--format", "npy", "--output", work, *flags]
            if limit:
                cmd += ["--limit", str(limit)]
            _, _, cp_rss = peak_rss_mb(cmd)
            prov = dict(json.loads((Path(work) / "features.json").read_text())["provenance"])
            cp_ips = float(prov["images_per_s"])
        out, _, pt_rss = peak_rss_mb([sys.executable, "-c", TORCH_CHILD, arch, stem, str(limit or 0), str(a.threads),
                                      str(a.batch_size), a.data])
        r = json.loads(out.strip().splitlines()[-1])
        pt_ips = r["images"] / r["secs"]
        gflop = r["flops_per_image"] / 1e9
        row = {
            "case": name, "images": r["images"], "threads": a.threads, "batch_size": a.batch_size,
            "cnnprobe_images_per_s": round(cp_ips, 1), "pytorch_images_per_s": round(pt_ips, 1),
            "speed_ratio": round(cp_ips / pt_ips, 3),
            "cnnprobe_peak_rss_mb": round(cp_rss), "pytorch_peak_rss_mb": round(pt_rss),
            "rss_ratio": round(cp_rss / pt_rss, 3), "gflop_per_image": round(gflop, 3),
            "cnnprobe_gflops": round(cp_ips * gflop, 1), "pytorch_gflops": round(pt_ips * gflop, 1),
        }
        print(row, flush=True)
        rows.append(row)
    new = not a.out.exists()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
