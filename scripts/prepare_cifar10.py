#!/usr/bin/env python3
"""CIFAR-10 from the JPEG archive (train/<class>/*.jpg, test/<class>/*.jpg, as .tar.gz) to
the official binary layout that `cnnprobe --data` reads: OUT/cifar-10-batches-bin/
data_batch_1..5.bin, test_batch.bin (records of 1 label byte + R, G, B planes of 32x32)
and batches.meta.txt. The archive is read in place, nothing is unpacked.

Needs only the standard library and Pillow (Python 3.8+). Without Pillow it exits with
status 3, so a caller can fall back to unpacking the JPEGs for `--dataset folder`.

usage: prepare_cifar10.py ARCHIVE OUT
"""
import io
import os
import random
import sys
import tarfile

NO_PILLOW = 3
SIDE = 32
TRAIN_FILES = 5


def read_archive(path):
    """{'train': [(class, file name, image bytes)], 'test': [...]}."""
    splits = {"train": [], "test": []}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            parts = name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in splits:
                continue
            if not parts[2].lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            splits[parts[0]].append((parts[1], parts[2], tar.extractfile(member).read()))
    return splits


def record(image_cls, data, label, name):
    img = image_cls.open(io.BytesIO(data)).convert("RGB")
    if img.size != (SIDE, SIDE):
        raise SystemExit(f"error: {name} is {img.size[0]}x{img.size[1]}, not {SIDE}x{SIDE}")
    return bytes([label]) + b"".join(band.tobytes() for band in img.split())


def write_atomic(path, chunks):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    archive, out = sys.argv[1], os.path.join(sys.argv[2], "cifar-10-batches-bin")
    if os.path.exists(os.path.join(out, ".done")):
        print(f"prepare_cifar10: {out} is ready")
        return
    try:
        from PIL import Image
    except ImportError:
        print("prepare_cifar10: Pillow is not installed", file=sys.stderr)
        sys.exit(NO_PILLOW)
    splits = read_archive(archive)
    classes = sorted({c for c, _, _ in splits["train"]})
    if len(classes) != 10 or not splits["test"]:
        raise SystemExit(f"error: {archive} is not the CIFAR-10 JPEG archive ({len(classes)} train classes)")
    label = {c: i for i, c in enumerate(classes)}
    os.makedirs(out, exist_ok=True)
    # The archive is grouped by class: shuffle both splits (fixed seeds), so that the first
    # N images (`--limit N`) hold every class, as the official files do.
    for split, seed in (("train", 0), ("test", 1)):
        items = sorted(splits[split], key=lambda item: item[:2])
        random.Random(seed).shuffle(items)
        recs = [record(Image, data, label[c], f"{split}/{c}/{name}") for c, name, data in items]
        if split == "train":
            per = -(-len(recs) // TRAIN_FILES)
            for k in range(TRAIN_FILES):
                write_atomic(os.path.join(out, f"data_batch_{k + 1}.bin"), recs[k * per : (k + 1) * per])
        else:
            write_atomic(os.path.join(out, "test_batch.bin"), recs)
        print(f"prepare_cifar10: {split}: {len(recs)} images")
    write_atomic(os.path.join(out, "batches.meta.txt"), ["\n".join(classes).encode() + b"\n"])
    open(os.path.join(out, ".done"), "w").close()


if __name__ == "__main__":
    main()
