#!/usr/bin/env python3
"""Numbers for gpu_check.sh, from cnnprobe's output files. Standard library only (numpy is
used when present), so it runs on any machine's Python 3.8+.

  gpu_check_stats.py maxdiff DIR REF N   max |a - b| / max |b| over the first N train rows of
                                         DIR/train_features.npy (a) and REF's (b)
  gpu_check_stats.py provenance DIR KEY  a value of DIR/features.json's provenance
  gpu_check_stats.py summary CSV COLUMN  a column of CSV's last row
"""
import ast
import csv
import json
import struct
import sys


def npy_rows(path, n):
    """The first n rows of a float32 C-order 2-D .npy file, as (rows, cols, flat list)."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise SystemExit(f"error: {path} is not a .npy file")
        major = f.read(2)[0]
        (hlen,) = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))
        header = ast.literal_eval(f.read(hlen).decode("latin1"))
        if header["descr"] != "<f4" or header["fortran_order"] or len(header["shape"]) != 2:
            raise SystemExit(f"error: {path}: expected a float32 C-order matrix, got {header}")
        rows, cols = min(n, header["shape"][0]), header["shape"][1]
        data = f.read(4 * rows * cols)
    try:
        import numpy as np

        return rows, cols, np.frombuffer(data, dtype="<f4")
    except ImportError:
        return rows, cols, struct.unpack(f"<{rows * cols}f", data)


def maxdiff(dir_a, dir_ref, n):
    ra, ca, a = npy_rows(f"{dir_a}/train_features.npy", n)
    rb, cb, b = npy_rows(f"{dir_ref}/train_features.npy", n)
    if (ra, ca) != (rb, cb):
        raise SystemExit(f"error: {ra}x{ca} features in {dir_a} but {rb}x{cb} in {dir_ref}")
    if hasattr(a, "dtype"):
        scale, diff = float(abs(b).max()), float(abs(a.astype("f8") - b.astype("f8")).max())
    else:
        scale, diff = max(map(abs, b)), max(abs(x - y) for x, y in zip(a, b))
    if scale == 0.0:
        raise SystemExit(f"error: the reference features in {dir_ref} are all zero")
    return diff / scale


def main():
    cmd, args = sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:]
    if cmd == "maxdiff" and len(args) == 3:
        print(f"{maxdiff(args[0], args[1], int(args[2])):.3e}")
    elif cmd == "provenance" and len(args) == 2:
        with open(f"{args[0]}/features.json") as f:
            print(dict(json.load(f)["provenance"])[args[1]])
    elif cmd == "summary" and len(args) == 2:
        with open(args[0], newline="") as f:
            rows = list(csv.DictReader(f))
        print(rows[-1][args[1]])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
