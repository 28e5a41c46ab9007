#!/usr/bin/env python3
"""Decoding throughput of PyTorch's DataLoader on an image folder: the peer of
`cnnprobe scan --dataset folder`. The same files in the same order as cnnprobe's folder
reader (classes: the train folder names, sorted; files: .jpg/.jpeg/.png sorted by name;
train, then test), each `Image.open(p).convert("RGB")`, resized with PIL's bilinear filter
to SIZE x SIZE (or, with --center-crop, torchvision's Resize(round(SIZE*256/224)) +
CenterCrop(SIZE)), to a uint8 CHW tensor, batched by a DataLoader with N worker processes
(one torch thread each). The timer runs from the start of the iteration (worker start-up
included) to the last batch. Prints one line to stdout:

    dataloader: <n> images, <secs> s, <rate> images/s

usage: bench_decode_dataloader.py DIR --workers N [--input-size 64] [--batch 256]
                                  [--center-crop]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

EXTENSIONS = {".jpg", ".jpeg", ".png"}


def files_of(root):
    """Every image of root/train then root/test, in cnnprobe's folder-reader order."""
    for s in ("train", "test"):
        if not (root / s).is_dir():
            sys.exit(f"error: {root} has no {s}/ folder (expected {s}/<class>/<image>)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        sys.exit(f"error: {root / 'train'} has no class folders")
    files = []
    for s in ("train", "test"):
        for c in classes:
            d = root / s / c
            if d.is_dir():
                files += sorted((p for p in d.iterdir() if p.suffix.lower() in EXTENSIONS), key=lambda p: p.name)
    return files


class Images(Dataset):
    def __init__(self, files, size, center_crop):
        self.files, self.size, self.center_crop = files, size, center_crop

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = Image.open(self.files[i]).convert("RGB")
        s = self.size
        if self.center_crop:
            # torchvision's Resize(r): the shorter side to r, the longer to int(r * long / short);
            # CenterCrop(s): offsets int(round((side - s) / 2)).
            r = round(s * 256 / 224)
            w, h = img.size
            nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.BILINEAR)
            left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
        elif img.size != (s, s):
            img = img.resize((s, s), Image.BILINEAR)
        # np.array copies (as torchvision's PILToTensor does): np.asarray's view of a PIL
        # image is read-only, which torch.from_numpy warns about.
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def one_thread(_):
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--workers", type=int, required=True, help="DataLoader worker processes (0: the main process)")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--center-crop", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    files = files_of(a.dir)
    loader = DataLoader(Images(files, a.input_size, a.center_crop), batch_size=a.batch, shuffle=False,
                        num_workers=a.workers, worker_init_fn=one_thread if a.workers else None)
    n, t0 = 0, time.perf_counter()
    for batch in loader:
        n += batch.shape[0]
    secs = time.perf_counter() - t0
    assert n == len(files), (n, len(files))
    print(f"dataloader: {n} images, {secs:.2f} s, {n / secs:.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
