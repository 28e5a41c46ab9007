#!/usr/bin/env python3
"""PyTorch + scikit-learn reference for cnnprobe's default recipe (issue 2).

Frozen random torchvision ResNet-18 (torchvision init, torch.manual_seed(seed)),
optionally with the CIFAR stem (3x3 stride-1 conv1, no max-pool), global-average-pooled
512-d penultimate features, standardised with the fit split's statistics, then
scikit-learn's multinomial LogisticRegression(lbfgs) with C chosen on a seeded stratified
10% validation split of train. The test split is only scored, never used to choose.

Appends one row to --out (CSV), with the same column names as cnnprobe's summary.
"""
import argparse, csv, os, time
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

# Per-channel CIFAR-10 train-set mean and std (population std over all train pixels),
# the same constants cnnprobe uses (src/data/normalize.rs).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def read_cifar10(folder: Path, names):
    raw = np.concatenate([np.fromfile(folder / n, dtype=np.uint8).reshape(-1, 3073) for n in names])
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def build(arch, stem, seed):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    if stem == "cifar":
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        torch.nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = torch.nn.Identity()
    model.fc = torch.nn.Identity()
    return model.eval()


@torch.inference_mode()
def extract(model, images, batch):
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).float().div_(255).sub_(mean).div_(std)
        out.append(model(x))
    return torch.cat(out).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path, help="cifar-10-batches-bin folder")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--c-grid", default="0.001,0.01,0.1,1,10")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N train/test images (smoke runs)")
    ap.add_argument("--out", type=Path, default=Path("results/reference.csv"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    xtr, ytr = read_cifar10(a.data, [f"data_batch_{i}.bin" for i in range(1, 6)])
    xte, yte = read_cifar10(a.data, ["test_batch.bin"])
    if a.limit:
        xtr, ytr, xte, yte = xtr[:a.limit], ytr[:a.limit], xte[:a.limit], yte[:a.limit]
    model = build(a.arch, a.stem, a.seed)
    t0 = time.perf_counter()
    ftr = extract(model, xtr, a.batch_size)
    fte = extract(model, xte, a.batch_size)
    extract_s = time.perf_counter() - t0

    fit_idx, val_idx = train_test_split(np.arange(len(ytr)), test_size=a.val_fraction,
                                        stratify=ytr, random_state=a.seed)
    mu, sd = ftr[fit_idx].mean(0), ftr[fit_idx].std(0) + 1e-6
    z = lambda f: (f - mu) / sd
    t0 = time.perf_counter()
    best = None
    for c in [float(v) for v in a.c_grid.split(",")]:
        clf = LogisticRegression(C=c, max_iter=1000).fit(z(ftr[fit_idx]), ytr[fit_idx])
        val = clf.score(z(ftr[val_idx]), ytr[val_idx])
        print(f"C={c:g} val_acc={val:.4f}", flush=True)
        if best is None or val > best[0]:
            best = (val, c, clf)
    fit_s = time.perf_counter() - t0
    val_acc, c, clf = best
    proba = clf.predict_proba(z(fte))
    top5 = np.argsort(-proba, axis=1)[:, :5]
    row = {
        "tool": "pytorch+sklearn", "dataset": "cifar10", "arch": a.arch, "stem": a.stem,
        "init": "torchvision", "seed": a.seed, "weights": "random", "device": "cpu",
        "feature_dim": ftr.shape[1], "n_train": len(fit_idx), "n_val": len(val_idx), "n_test": len(yte),
        "val_acc": round(val_acc, 4), "test_top1": round(float((proba.argmax(1) == yte).mean()), 4),
        "test_top5": round(float((top5 == yte[:, None]).any(1).mean()), 4),
        "extract_s": round(extract_s, 1), "images_per_s": round((len(ytr) + len(yte)) / extract_s, 1),
        "fit_s": round(fit_s, 1), "chosen_C": c, "threads": a.threads,
        "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
    }
    print(row)
    new = not a.out.exists()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


if __name__ == "__main__":
    main()
