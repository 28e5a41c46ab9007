#!/usr/bin/env python3
"""Extraction benchmark: `cnnprobe extract` beside PyTorch's CPU inference paths, in one
invocation, on the same machine, data, threads, batch size and network shape (issue 17).

PyTorch paths, all in one child process per case (built once, then timed):
  eager         torchvision module, inference_mode
  eager_cl_fold torch.fx BN folding + channels-last weights and input
  compile       torch.compile (inductor), skipped with a note where it fails
  ts            TorchScript trace + freeze + optimize_for_inference (oneDNN fused convs)
Runs alternate: each repetition runs cnnprobe once (its own process), then every PyTorch path
once (order reversed on odd repetitions), so drift in the machine's load hits all alike.
Reported: the median over repetitions of images/s of the extraction loop alone (model build,
compilation and data loading excluded on both sides), cnnprobe's ratio to each path and to
the fastest, and peak RSS: cnnprobe's process, and the PyTorch process holding all its paths
(an upper bound for any one of them). "GFLOP/s" is torch's FlopCounterMode count of one forward
pass times images/s; no fraction of a machine peak is given (oneDNN's Winograd kernels do
fewer operations than that count, so such a fraction can exceed 1 and means nothing).

usage: bench_extract.py --data DIR/cifar-10-batches-bin [--reps 3] [--limit N] [--cases a,b]
                        [--paths eager,eager_cl_fold,compile,ts] [--out results/bench_extract.csv]
                        [--torch-thp on|off]
"""
import argparse, csv, json, os, statistics, subprocess, sys, tempfile
from pathlib import Path

# (name, cnnprobe flags, images per split by default: train and test each)
CASES = [
    ("resnet18-cifar-stem", ["--arch", "resnet18", "--stem", "cifar"], 5000),
    ("resnet50-imagenet-stem-32px", ["--arch", "resnet50", "--stem", "imagenet"], 10000),
    ("vgg11_bn-cifar-stem", ["--arch", "vgg11_bn", "--stem", "cifar"], 10000),
    # --preset random-best's network and taps (src/cli/presets.rs), without the mirrored views.
    ("random-best-vgg11x4-block1:4+block2:2",
     ["--arch", "vgg11", "--stem", "cifar", "--width-mult", "4", "--features", "block1:4,block2:2"], 2000),
]
PATHS = ["eager", "eager_cl_fold", "compile", "ts"]

TORCH_CHILD = r'''
import sys, json, time, resource
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F, torchvision
case, limit, threads, batch, data, paths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6].split(",")
torch.set_num_threads(threads)
def read(names):
    raw = np.concatenate([np.fromfile(f"{data}/{n}", dtype=np.uint8).reshape(-1, 3073) for n in names])
    return raw[:, 1:].reshape(-1, 3, 32, 32)
tr = read([f"data_batch_{i}.bin" for i in range(1, 6)]); te = read(["test_batch.bin"])
images = torch.from_numpy(np.concatenate([tr[:limit], te[:limit]]))
torch.manual_seed(0)

class Taps(nn.Module):  # random-best: VGG-11 blocks 1-2 at 4x width, block1 pooled 4x4 + block2 2x2
    def __init__(s):
        super().__init__()
        s.b1 = nn.Sequential(nn.Conv2d(3, 256, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        s.b2 = nn.Sequential(nn.Conv2d(256, 512, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
    def forward(s, x):
        b1 = s.b1(x); b2 = s.b2(b1)
        return torch.cat([F.adaptive_avg_pool2d(b1, 4).flatten(1), F.adaptive_avg_pool2d(b2, 2).flatten(1)], 1)

def build():
    if case.startswith("random-best"):
        return Taps().eval()
    arch = case.split("-")[0]
    m = getattr(torchvision.models, arch)()
    if arch.startswith("resnet"):
        if "cifar-stem" in case:
            m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity()
        m.fc = nn.Identity()
        return m.eval()
    return nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()

model = build()
mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1); std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
def norm(u8): return u8.float().div_(255).sub_(mean).div_(std)
probe = norm(images[:batch])

def make(path):
    """(forward, grad context) of one path, built and warmed up."""
    if path == "eager":
        return model, torch.inference_mode
    if path == "eager_cl_fold":
        from torch.fx.experimental.optimization import fuse
        m = fuse(model).to(memory_format=torch.channels_last)  # fuse() works on a copy
        return (lambda x: m(x.contiguous(memory_format=torch.channels_last))), torch.inference_mode
    if path == "compile":
        m = torch.compile(model)
        with torch.no_grad(): m(probe); m(probe)
        return m, torch.no_grad
    if path == "ts":
        with torch.no_grad():
            m = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, probe[:8])))
            m(probe); m(probe)
        return m, torch.no_grad
    raise SystemExit(f"unknown path {path}")

built, notes = {}, {}
for p in paths:
    try:
        built[p] = make(p)
    except Exception as e:  # e.g. inductor without a C++ compiler
        notes[p] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
dim = None
def run(p):
    global dim
    f, ctx = built[p]
    with ctx():
        f(probe)  # warm-up at the timed shapes
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            y = f(norm(images[i:i + batch]))
        secs = time.perf_counter() - t0
    dim = y.shape[1]
    return len(images) / secs
from torch.utils.flop_counter import FlopCounterMode
with torch.inference_mode(), FlopCounterMode(display=False) as fc:
    model(probe[:1])
print(json.dumps({"ready": True, "notes": notes, "flops_per_image": fc.get_total_flops()}), flush=True)
for line in sys.stdin:  # one repetition per line from the parent: "0" forward order, "1" reversed
    order = list(built) if line.strip() == "0" else list(built)[::-1]
    ips = {p: run(p) for p in order}
    print(json.dumps({"ips": ips, "dim": dim, "images": len(images),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
'''


def run_cnnprobe(a, flags, limit, work):
    """One `cnnprobe extract` process: (images/s, feature dim, peak RSS MiB, path that ran)."""
    cmd = [a.cnnprobe, "extract", "--data", a.data, "--device", "cpu", "--threads", str(a.threads),
           "--batch-size", str(a.batch_size), "--fused", "auto", "--format", "npy", "--output", work, "--limit", str(limit), *flags]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    # wait4: this child's own peak RSS.
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    prov = dict(json.loads((Path(work) / "features.json").read_text())["provenance"])
    return float(prov["images_per_s"]), int(prov["feature_dim"]), ru.ru_maxrss / 1024, prov.get("convs", "")


def bench_case(a, name, flags, limit):
    # PyTorch's own allocator knob, on by default: cnnprobe sets it for itself, and with it
    # PyTorch's eager paths ran up to a third faster here (fewer page faults), so the
    # strongest peer has it too.
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if a.torch_thp == "on" else "0")
    child = subprocess.Popen([sys.executable, "-c", TORCH_CHILD, name, str(limit), str(a.threads),
                              str(a.batch_size), a.data, a.paths], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env)
    head = json.loads(child.stdout.readline() or sys.exit(f"{name}: the PyTorch child failed"))
    cp, pt, pt_rss, cp_rss, dims = [], {}, 0.0, 0.0, set()
    with tempfile.TemporaryDirectory() as work:
        for r in range(a.reps):
            ips, dim, rss, convs = run_cnnprobe(a, flags, limit, work)
            cp.append(ips); cp_rss = max(cp_rss, rss); dims.add(dim)
            child.stdin.write(f"{r % 2}\n"); child.stdin.flush()
            out = json.loads(child.stdout.readline() or sys.exit(f"{name}: the PyTorch child failed"))
            for p, v in out["ips"].items():
                pt.setdefault(p, []).append(v)
            pt_rss = out["peak_rss_mb"]; dims.add(out["dim"])
    child.stdin.close(); child.wait()
    if len(dims) != 1:
        sys.exit(f"{name}: cnnprobe and PyTorch features differ in width {sorted(dims)}: not the same network")
    med = {p: statistics.median(v) for p, v in pt.items()}
    cp_med, gflop = statistics.median(cp), head["flops_per_image"] / 1e9
    row = {"case": name, "images": out["images"], "threads": a.threads, "batch_size": a.batch_size, "reps": a.reps,
           "pytorch_thp": a.torch_thp,
           "cnnprobe_convs": convs, "cnnprobe_images_per_s": round(cp_med, 1)}
    for p in PATHS:
        row[f"{p}_images_per_s"] = round(med[p], 1) if p in med else ""
    fastest = max(med, key=med.get) if med else ""
    for p in PATHS:
        row[f"ratio_vs_{p}"] = round(cp_med / med[p], 3) if p in med else ""
    row.update({"fastest_pytorch": fastest, "ratio_vs_fastest": round(cp_med / med[fastest], 3) if fastest else "",
                "cnnprobe_peak_rss_mb": round(cp_rss), "pytorch_process_peak_rss_mb": round(pt_rss),
                "gflop_per_image": round(gflop, 3), "cnnprobe_gflops": round(cp_med * gflop, 1),
                "cnnprobe_runs": " ".join(f"{v:.1f}" for v in cp),
                "pytorch_runs": "; ".join(f"{p} " + " ".join(f"{v:.1f}" for v in pt[p]) for p in pt),
                "load1_after": round(os.getloadavg()[0], 2),
                "notes": "; ".join(f"{p}: {n}" for p, n in head["notes"].items())})
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--cnnprobe", default=os.environ.get("CNNPROBE_BIN", "target/release/cnnprobe"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3, help="alternated repetitions (median reported)")
    ap.add_argument("--limit", type=int, help="images per split for every case (default: per case)")
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--out", type=Path, default=Path("results/bench_extract.csv"))
    ap.add_argument("--torch-thp", choices=["on", "off"], default="on",
                    help="THP_MEM_ALLOC_ENABLE for the PyTorch process (cnnprobe sets it for itself)")
    a = ap.parse_args()
    rows = []
    for name, flags, limit in CASES:
        if name in a.cases.split(","):
            rows.append(bench_case(a, name, flags, a.limit or limit))
            print(rows[-1], flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    # One table per invocation: its columns changed with the PyTorch paths (issue 17).
    with a.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
