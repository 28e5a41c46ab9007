#!/usr/bin/env python3
"""PyTorch's eager extraction of the same features as `cnnprobe extract --arch resnet18
--stem cifar` (global-average-pooled layer4, 512 dims), the peer gpu_check.sh compares
cnnprobe's CUDA extraction with (issue 15: >= 1.3x eager, same GPU, same precision).

The strongest eager path we know: channels-last weights and input, BatchNorm folded by
torch.fx's fuser, inference_mode, cuDNN benchmark on, the model cast to the precision (no
autocast), uint8 images uploaded from pinned memory asynchronously and normalised on the GPU,
features copied back per batch. Two passes over every image, model build and data reading
excluded: "cold" from the first batch on (cuDNN's kernel search for each new shape included,
as in cnnprobe's own images/s), then "warm" (every shape searched already).

usage: gpu_bench_torch.py CIFAR_BIN_DIR --precision fp32|bf16|fp16 [--batch 1024]
                          [--device cuda] [--limit N] [--cudnn-benchmark 1|0]
prints one line: images_per_s=COLD warm_images_per_s=WARM images=N
"""
import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torch.fx.experimental.optimization import fuse

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def read(data, names, limit):
    raw = np.concatenate([np.fromfile(f"{data}/{n}", dtype=np.uint8).reshape(-1, 3073) for n in names])
    return raw[:limit, 1:].reshape(-1, 3, 32, 32)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--cudnn-benchmark", type=int, choices=[0, 1], default=1)
    a = p.parse_args()
    dev = torch.device(a.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.precision]
    torch.backends.cudnn.benchmark = bool(a.cudnn_benchmark)

    tr = read(a.data, [f"data_batch_{i}.bin" for i in range(1, 6)], a.limit)
    te = read(a.data, ["test_batch.bin"], a.limit)
    images = torch.from_numpy(np.concatenate([tr, te]))
    if dev.type == "cuda":
        images = images.pin_memory()

    torch.manual_seed(0)
    m = torchvision.models.resnet18()
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    m = fuse(m.eval()).to(dev, dtype).to(memory_format=torch.channels_last)
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1) * 255
    inv = 1 / (torch.tensor(STD, device=dev).view(1, 3, 1, 1) * 255)

    def batch(x):
        x = x.to(dev, non_blocking=True).float()
        x = ((x - mean) * inv).to(dtype).contiguous(memory_format=torch.channels_last)
        return m(x).float().to("cpu", non_blocking=False)

    def one_pass():
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = [batch(images[i : i + a.batch]) for i in range(0, len(images), a.batch)]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return torch.cat(out), time.perf_counter() - t0

    with torch.inference_mode():
        feats, cold = one_pass()
        _, warm = one_pass()
    assert feats.shape == (len(images), 512) and torch.isfinite(feats).all(), feats.shape
    n = len(images)
    print(f"images_per_s={n / cold:.1f} warm_images_per_s={n / warm:.1f} images={n}")

if __name__ == "__main__":
    main()
