#!/usr/bin/env python3
"""Parity fixtures from torchvision itself, for tests/parity.rs.

For each architecture: a random-init torchvision model (torch.manual_seed(seed)), its
state dict saved with torch.save (an OrderedDict with _metadata, as every real checkpoint
is), input batches at 32x32 and 224x224, and torchvision's logits and penultimate features
(ResNet: the pooled layer4; VGG: the output of the classifier's second ReLU).

usage: make_parity_fixtures.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

ARCHS = {"resnet18": 0, "resnet50": 1, "vgg11_bn": 2, "vgg16": 3}


def penultimate(model, x):
    if hasattr(model, "fc"):
        body = torch.nn.Sequential(*list(model.children())[:-1])
        return torch.flatten(body(x), 1)
    f = torch.flatten(model.avgpool(model.features(x)), 1)
    return model.classifier[:5](f)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for arch, seed in ARCHS.items():
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)().eval()
        # Non-trivial BN statistics, so a loader that skipped buffers would fail.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        torch.save(model.state_dict(), out / f"{arch}.pth")
        arrays = {}
        g = torch.Generator().manual_seed(100 + seed)
        with torch.inference_mode():
            for size in (32, 224):
                x = torch.randn(2, 3, size, size, generator=g)
                arrays[f"input{size}"] = x.numpy()
                arrays[f"logits{size}"] = model(x).numpy()
                arrays[f"features{size}"] = penultimate(model, x).numpy()
        np.savez(out / f"{arch}.npz", **arrays)
        print(f"{arch}: {out / (arch + '.pth')}")
    (out / ".done").touch()


if __name__ == "__main__":
    main()
