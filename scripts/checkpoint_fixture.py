#!/usr/bin/env python3
"""A torchvision state dict saved by torch.save in both containers, and the features
torchvision computes with it, for tests/checkpoint_parity.rs and scripts/checkpoint_check.py.

Writes OUT_DIR/legacy.pth (torch.save(..., _use_new_zipfile_serialization=False), the format
of torchvision's VGG downloads), OUT_DIR/zip.pth (torch.save's default), and
OUT_DIR/expected_{train,test}.npy: torchvision's features of the first LIMIT train and test
images of a CIFAR-10 binary folder, preprocessed as `cnnprobe extract --input-norm imagenet
--input-size SIZE` does (ImageNet mean/std, bilinear upsampling). The features are those
cnnprobe extracts by default, the average-pooled last stage (ResNet: layer4, VGG: the last
max-pool), or with --fc2 VGG's 4096-d classifier features after the second ReLU.

usage: checkpoint_fixture.py ARCH OUT_DIR --data CIFAR_DIR [--limit N] [--input-size S] [--fc2]
                            [--formats legacy,zip]
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision

MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation
STD = (0.229, 0.224, 0.225)


def make_model(arch, seed):
    """torchvision's random init, with non-trivial BN statistics so that a loader that
    skipped buffers would be caught."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def save(model, out, formats=("legacy", "zip")):
    sd = model.state_dict()
    if "legacy" in formats:
        torch.save(sd, out / "legacy.pth", _use_new_zipfile_serialization=False)
    if "zip" in formats:
        torch.save(sd, out / "zip.pth")


def read_cifar(folder, names, limit):
    raw = np.concatenate([np.fromfile(Path(folder) / n, dtype=np.uint8).reshape(-1, 3073) for n in names])
    return torch.from_numpy(raw[:limit, 1:].reshape(-1, 3, 32, 32).copy())


def preprocess(images, size):
    x = images.float()
    scale = torch.tensor([1 / (255 * s) for s in STD]).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    x = x * scale + shift
    if size != x.shape[-1]:
        assert size > x.shape[-1], "only upsampling is replicated here"
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def features(model, x, fc2):
    if hasattr(model, "fc"):
        body = torch.nn.Sequential(*list(model.children())[:-2])
        return body(x).mean((2, 3))
    f = model.features(x)
    if fc2:
        return model.classifier[:5](torch.flatten(model.avgpool(f), 1))
    return f.mean((2, 3))


def expected(model, data, limit, size, fc2):
    splits = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    out = {}
    with torch.inference_mode():
        for split, names in splits.items():
            out[split] = features(model, preprocess(read_cifar(data, names, limit), size), fc2).numpy()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch")
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--fc2", action="store_true")
    ap.add_argument("--formats", default="legacy,zip", help="which files to write (comma-separated)")
    # Not cnnprobe's default seed 0: only loading can make its features match.
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    torch.set_num_threads(2)
    a.out.mkdir(parents=True, exist_ok=True)
    model = make_model(a.arch, a.seed)
    save(model, a.out, a.formats.split(","))
    for split, f in expected(model, a.data, a.limit, a.input_size, a.fc2).items():
        np.save(a.out / f"expected_{split}.npy", f)


if __name__ == "__main__":
    main()
