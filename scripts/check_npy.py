#!/usr/bin/env python3
"""numpy reads what `cnnprobe extract --format npy` wrote: shape, dtype and first row,
compared with cnnprobe's own manifest and its CSV export of the same features when present.

usage: check_npy.py DIR [--out results/npy_check.md]
"""
import argparse, json
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("dir", type=Path)
ap.add_argument("--out", type=Path)
ap.add_argument("--csv-dir", type=Path, help="a `--format csv --limit N` export of the same configuration, to compare rows")
a = ap.parse_args()
m = json.loads((a.dir / "features.json").read_text())
lines = [f"Directory: `{a.dir.name}` ({dict(m['provenance'])['arch']}, {dict(m['provenance'])['stem']} stem, "
         f"pool {dict(m['provenance'])['pool_size']}), features.json: n_train={m['n_train']}, n_test={m['n_test']}, "
         f"feature_dim={m['feature_dim']}", "", "| file | shape | dtype | matches features.json |", "| --- | --- | --- | --- |"]
for split, n in (("train", m["n_train"]), ("test", m["n_test"])):
    x = np.load(a.dir / f"{split}_features.npy"); y = np.load(a.dir / f"{split}_labels.npy")
    lines.append(f"| {split}_features.npy | {x.shape} | {x.dtype} | {x.shape == (n, m['feature_dim']) and x.dtype == np.float32} |")
    lines.append(f"| {split}_labels.npy | {y.shape} | {y.dtype} | {y.shape == (n,) and y.dtype == np.int64} |")
x = np.load(a.dir / "train_features.npy")
lines += ["", f"First train row, first 8 of {x.shape[1]} values: {np.array2string(x[0, :8], precision=6)}",
          f"First train label: {np.load(a.dir / 'train_labels.npy')[0]}"]
if a.csv_dir:
    import csv
    with open(a.csv_dir / "features.csv") as f:
        r = csv.reader(f); next(r); first = next(r)
    row = np.array([float(v) for v in first[3:]], dtype=np.float32)
    lines += [f"cnnprobe's CSV export of the same configuration (`{a.csv_dir.name}`), first train row: split={first[0]}, "
              f"index={first[1]}, label={first[2]}; max |numpy row − CSV row| = {np.abs(row - x[0]).max():.3e}"]
text = "\n".join(lines) + "\n"
print(text)
if a.out:
    a.out.write_text(text)
