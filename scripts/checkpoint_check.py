#!/usr/bin/env python3
"""Checkpoint check: for each of the 13 torchvision architectures, a random-init state dict
saved by torch.save in the legacy and in the zip container is loaded by
`cnnprobe extract --weights PATH`, and its features are compared with torchvision's
(scripts/checkpoint_fixture.py makes both). One architecture at a time; files are deleted
once read. Load time is cnnprobe's own report (reading the file and copying every tensor
into the network), taken as the best of --repeats loads.

usage: checkpoint_check.py --data DIR/cifar-10-batches-bin [--bin target/release/cnnprobe]
                           [--out results/checkpoint_check.csv] [--archs a,b,...]
"""
import argparse, csv, os, re, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint_fixture as fx  # noqa: E402

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
         "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
LIMIT = 8
TOL = 1e-4
LOAD_LINE = re.compile(r"weights: (\d+) tensors, ([\d.]+) MB from .* in ([\d.]+) s")


def extract(binary, data, arch, pth, out, fc2):
    cmd = [binary, "extract", "--data", data, "--arch", arch, "--weights", str(pth),
           "--input-size", "32", "--input-norm", "imagenet", "--limit", str(LIMIT),
           "--device", "cpu", "--threads", "2", "--output", str(out)]
    if fc2:
        cmd += ["--features", "fc2"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{arch} {pth.name}: {p.stderr.strip()}")
    m = LOAD_LINE.search(p.stderr)
    if not m:
        sys.exit(f"{arch}: no load report in stderr:\n{p.stderr}")
    return int(m.group(1)), float(m.group(3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "cnnprobe"))
    ap.add_argument("--out", default="results/checkpoint_check.csv")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for arch in a.archs.split(","):
        fc2 = arch.startswith("vgg")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            model = fx.make_model(arch, 1234)
            fx.save(model, tmp)
            want = fx.expected(model, a.data, LIMIT, 32, fc2)
            del model
            for fmt in ("legacy", "zip"):
                pth = tmp / f"{fmt}.pth"
                size_mb = pth.stat().st_size / 1e6
                loads = [extract(a.bin, a.data, arch, pth, tmp / fmt, fc2) for _ in range(a.repeats)]
                tensors, load_s = loads[0][0], min(s for _, s in loads)
                pth.unlink()
                rel = 0.0
                for split in ("train", "test"):
                    got = np.load(tmp / fmt / f"{split}_features.npy")
                    w = want[split]
                    rel = max(rel, float(np.abs(got - w).max() / np.abs(w).max()))
                row = {"arch": arch, "format": fmt, "file_mb": f"{size_mb:.1f}", "tensors": tensors,
                       "load_s": f"{load_s:.3f}", "features": "fc2" if fc2 else "layer4",
                       "images": 2 * LIMIT, "max_rel_diff": f"{rel:.2e}", "pass": rel <= TOL}
                rows.append(row)
                print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            print(f"{arch}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"→ {a.out}: {sum(r['pass'] for r in rows)}/{len(rows)} pass")
    sys.exit(0 if all(r["pass"] for r in rows) else 1)


if __name__ == "__main__":
    main()
