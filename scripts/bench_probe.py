#!/usr/bin/env python3
"""Linear-probe benchmark: cnnprobe's probe vs scikit-learn's LogisticRegression(lbfgs),
in one invocation, on one feature set exported by `cnnprobe extract --format npy`.

Both use the same validation split (cnnprobe writes it to val_indices.csv) and the same
grid of L2 strengths (cnnprobe's coarse-to-fine search, read back from wd_search.csv;
scikit-learn's C = 1/(lambda * n_rows) gives the same objective), both standardise with the
fit part's statistics, choose on validation accuracy and refit on train+val. The test split
is scored once per tool. Wall seconds cover the whole probe (cnnprobe: the `fit` process;
scikit-learn: the grid plus the refit, data already in memory).

Appends rows to --out: one for scikit-learn and one per cnnprobe solver, with the time ratio.
"""
import argparse, csv, json, os, subprocess, tempfile, time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression


def cnnprobe_fit(binary, features, solver, threads, workdir):
    out = Path(workdir) / f"fit-{solver}"
    cmd = [binary, "fit", str(features), "--solver", solver, "--wd-search", "--device", "cpu",
           "--threads", str(threads), "--out", str(out), "--summary", str(Path(workdir) / "summary.csv")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    with open(out / "result.csv") as f:
        row = next(csv.DictReader(f))
    with open(out / "wd_search.csv") as f:
        grid = [float(r["weight_decay"]) for r in csv.DictReader(f)]
    val_idx = np.loadtxt(out / "val_indices.csv", skiprows=1, dtype=np.int64)
    return wall, row, grid, val_idx


def sklearn_probe(xtr, ytr, xte, yte, val_idx, grid, max_iter):
    t0 = time.perf_counter()
    fit_mask = np.ones(len(ytr), bool)
    fit_mask[val_idx] = False
    xf, yf, xv, yv = xtr[fit_mask], ytr[fit_mask], xtr[val_idx], ytr[val_idx]
    mu, sd = xf.mean(0), np.maximum(xf.std(0), 1e-6)
    best = None
    for lam in grid:
        clf = LogisticRegression(C=1.0 / (lam * len(yf)), max_iter=max_iter)
        clf.fit((xf - mu) / sd, yf)
        acc = clf.score((xv - mu) / sd, yv)
        if best is None or acc > best[0] or (acc == best[0] and lam > best[1]):
            best = (acc, lam)
    mu, sd = xtr.mean(0), np.maximum(xtr.std(0), 1e-6)
    clf = LogisticRegression(C=1.0 / (best[1] * len(ytr)), max_iter=max_iter).fit((xtr - mu) / sd, ytr)
    top1 = clf.score((xte - mu) / sd, yte)
    return time.perf_counter() - t0, best[0], best[1], top1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True, type=Path, help="a `cnnprobe extract --format npy` directory")
    ap.add_argument("--cnnprobe", default="target/release/cnnprobe")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--solvers", default="lbfgs,adamw")
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("results/bench_probe.csv"))
    a = ap.parse_args()

    meta = json.loads((a.features / "features.json").read_text())
    prov = dict(meta["provenance"])
    xtr = np.load(a.features / "train_features.npy"); ytr = np.load(a.features / "train_labels.npy")
    xte = np.load(a.features / "test_features.npy"); yte = np.load(a.features / "test_labels.npy")
    feature_set = f"{prov['arch']}-{prov['stem']}-pool{prov['pool_size']} {xtr.shape[0]}x{xtr.shape[1]}"
    rows = []
    with tempfile.TemporaryDirectory() as work:
        results = {}
        for solver in a.solvers.split(","):
            results[solver] = cnnprobe_fit(a.cnnprobe, a.features, solver, a.threads, work)
        # scikit-learn gets L-BFGS's grid and split (the grids differ only if the searches diverged).
        _, _, grid, val_idx = results[a.solvers.split(",")[0]]
        sk_s, sk_val, sk_lam, sk_top1 = sklearn_probe(xtr, ytr, xte, yte, val_idx, grid, a.max_iter)
        try:
            from threadpoolctl import threadpool_info
            blas = ";".join(f"{i.get('internal_api')}:{i.get('architecture')}:{i.get('num_threads')}" for i in threadpool_info())
        except Exception:
            blas = "unknown"
        base = {"feature_set": feature_set, "threads": a.threads, "grid_points": len(grid)}
        rows.append({**base, "tool": "scikit-learn LogisticRegression(lbfgs)", "wall_s": round(sk_s, 2),
                     "val_acc": round(sk_val, 4), "test_top1": round(sk_top1, 4), "chosen_l2": f"{sk_lam:.3e}",
                     "time_ratio_vs_sklearn": 1.0, "top1_minus_sklearn": 0.0, "blas": blas})
        for solver, (wall, row, _, _) in results.items():
            top1 = float(row["test_top1"])
            rows.append({**base, "tool": f"cnnprobe fit --solver {solver} --wd-search", "wall_s": round(wall, 2),
                         "val_acc": float(row["val_acc"]), "test_top1": top1,
                         "chosen_l2": row["chosen_weight_decay"],
                         "time_ratio_vs_sklearn": round(wall / sk_s, 4),
                         "top1_minus_sklearn": round(100 * (top1 - sk_top1), 2), "blas": ""})
    new = not a.out.exists()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
