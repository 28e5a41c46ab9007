#!/usr/bin/env python3
"""A synthetic image folder in torchvision's ImageFolder layout, for benchmarks of
`--dataset folder`: OUT/train/classNN/NNNNNN.jpg and OUT/test/classNN/NNNNNN.jpg.

Each image is a few random low-frequency 2-D sinusoids (1-4 cycles per image) plus a linear
gradient, mixed into three colour channels, saved as a JPEG (quality 90): smooth, so a
224x224 file is a few KB. The class sets a base colour and the orientation of the dominant
wave, so a probe has something to learn. Images are spread evenly over the classes (the
first N % classes classes get one more) and numbered from 000000 within each class folder.

Every image is drawn from its own generator seeded by (seed, split, class, index): the
output depends on the arguments only, not on the number of processes. OUT must be absent or
empty; OUT/make_image_folder.json (the arguments) is written last, so a folder without it is
incomplete.

Needs numpy and Pillow (the project's torch venv has both: torchvision brings Pillow).

usage: make_image_folder.py OUT --train N [--test M] [--size 224] [--classes 10] [--seed 0]
                            [--quality 90] [--procs 2]
"""
import argparse
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

# One BLAS thread per process: the processes are the parallelism (threaded BLAS on tiny
# matrices made synthesis 10x slower).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

try:
    from PIL import Image  # noqa: E402
except ImportError:
    sys.exit("error: Pillow is missing; install it into this Python with\n"
             f"  {sys.executable} -m pip install pillow")

MARKER = "make_image_folder.json"
SPLITS = ("train", "test")
WAVES = 4  # sinusoids per image (the first follows the class orientation)
CHUNK = 250  # images per task


def counts(n, classes):
    """Images per class: n spread evenly, the first n % classes classes get one more."""
    return [n // classes + (c < n % classes) for c in range(classes)]


def synth(rng, cls, classes, size):
    """One size x size x 3 uint8 image: a sum of separable sinusoids, a gradient and a colour."""
    t = np.arange(size, dtype=np.float32) / size  # 0..1 over the image
    one = np.ones((size, 1), np.float32)
    # Frequencies (cycles per image) and orientations; wave 0 follows the class.
    freq = rng.uniform(1.0, 4.0, WAVES)
    theta = rng.uniform(0.0, np.pi, WAVES)
    theta[0] = np.pi * cls / classes + rng.normal(0.0, 0.15)
    phase = rng.uniform(0.0, 2 * np.pi, WAVES).astype(np.float32)
    kx = (2 * np.pi * freq * np.cos(theta)).astype(np.float32)
    ky = (2 * np.pi * freq * np.sin(theta)).astype(np.float32)
    # sin(kx x + ky y + p) = sin(kx x) cos(ky y + p) + cos(kx x) sin(ky y + p): every wave,
    # the gradient and the constant colour are outer products of a row and a column factor,
    # so the image is one (size x T) @ (T x 3 size) product, T = 2 waves + 3.
    ax = np.outer(t, kx)  # size x waves
    ay = np.outer(t, ky) + phase
    rows = np.concatenate([np.cos(ay), np.sin(ay), t[:, None], one, one], axis=1)
    cols = np.concatenate([np.sin(ax), np.cos(ax), one, t[:, None], one], axis=1)
    # Per-channel weights: an amplitude per wave (the class wave strongest), a gradient, and
    # the class's base colour on a colour wheel with a little per-image jitter.
    amp = 38 * rng.uniform(0.3, 1.0, (3, WAVES)) * np.array([1.0, 0.6, 0.45, 0.3])
    grad = 38 * rng.uniform(-0.6, 0.6, (3, 2))
    base = 128 + 40 * np.cos(2 * np.pi * cls / classes + np.array([0, 2.09, 4.19])) + rng.normal(0, 8, 3)
    w = np.concatenate([amp, amp, grad, base[:, None]], axis=1).astype(np.float32)  # 3 x T
    # right[k, x, c] = cols[x, k] * w[c, k]: one product gives the three channels interleaved.
    right = (cols.T[:, :, None] * w.T[:, None, :]).reshape(len(w.T), size * 3)
    img = rows @ right
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8).reshape(size, size, 3)


def work(task):
    out, split_i, cls, start, stop, a = task
    folder = Path(out) / SPLITS[split_i] / f"class{cls:02d}"
    for j in range(start, stop):
        rng = np.random.default_rng([a["seed"], split_i, cls, j])
        img = synth(rng, cls, a["classes"], a["size"])
        Image.fromarray(img, "RGB").save(folder / f"{j:06d}.jpg", quality=a["quality"])
    return stop - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, required=True, help="train images in all")
    ap.add_argument("--test", type=int, default=1000, help="test images in all [1000]")
    ap.add_argument("--size", type=int, default=224, help="image side in pixels [224]")
    ap.add_argument("--classes", type=int, default=10, help="class folders [10]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality [90]")
    ap.add_argument("--procs", type=int, default=2, help="processes [2]")
    a = ap.parse_args()
    if a.train < a.classes or a.test < a.classes:
        ap.error(f"--train and --test need at least one image per class ({a.classes})")
    if not 1 <= a.classes <= 100 or a.size < 8 or a.procs < 1:
        ap.error("need 1 <= --classes <= 100, --size >= 8, --procs >= 1")
    if a.out.exists() and (not a.out.is_dir() or any(a.out.iterdir())):
        sys.exit(f"error: {a.out} exists and is not an empty folder; remove it first")

    params = {k: getattr(a, k) for k in ("train", "test", "size", "classes", "seed", "quality")}
    tasks = []
    for split_i, n in enumerate((a.train, a.test)):
        for cls, m in enumerate(counts(n, a.classes)):
            (a.out / SPLITS[split_i] / f"class{cls:02d}").mkdir(parents=True, exist_ok=True)
            tasks += [(str(a.out), split_i, cls, s, min(s + CHUNK, m), params) for s in range(0, m, CHUNK)]

    total, done, t0 = a.train + a.test, 0, time.perf_counter()
    with Pool(a.procs) as pool:
        for k in pool.imap_unordered(work, tasks):
            done += k
            if sys.stderr.isatty():
                print(f"\r{done}/{total} images", end="", file=sys.stderr, flush=True)
    secs = time.perf_counter() - t0
    if sys.stderr.isatty():
        print(file=sys.stderr)
    (a.out / MARKER).write_text(json.dumps(params, indent=1) + "\n")
    size_mb = sum(f.stat().st_size for d, _, fs in os.walk(a.out) for f in map(Path(d).joinpath, fs)) / 1e6
    print(f"made {total} images ({a.train} train, {a.test} test, {a.classes} classes, {a.size}x{a.size}) "
          f"in {a.out}: {size_mb:.1f} MB of files, {secs:.1f} s, {total / secs:.0f} images/s")


if __name__ == "__main__":
    main()
