#!/usr/bin/env python3
"""Runs the real binary on each bad input of the reliability catalogue and writes the
table of messages and exit codes (printed; results/reliability.md's catalogue section is it).
The same cases are asserted by the test suite (tests/errors.rs, reliability.rs, export.rs,
folder.rs, weights_cli.rs); this script shows what a user sees.

usage: reliability_catalogue.py [--cnnprobe target/release/cnnprobe] [--out TABLE.md]
"""
import argparse, os, subprocess, tempfile
from pathlib import Path

import numpy as np


def cifar(folder: Path, per_file=10, test=10):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    def write(name, n):
        rec = np.concatenate([(np.arange(n) % 10).astype(np.uint8)[:, None], rng.integers(0, 255, (n, 3072), dtype=np.uint8)], 1)
        rec.tofile(folder / name)
    for i in range(1, 6):
        write(f"data_batch_{i}.bin", per_file)
    write("test_batch.bin", test)
    return folder


def legacy_cases(torch, t):
    """A legacy torch.save file (the format of torchvision's VGG downloads), damaged in each
    way the reader checks: (name, bytes)."""
    import io, pickle
    torch.save({"w": torch.arange(12.).reshape(3, 4), "b": torch.arange(3.)}, t / "legacy_ok.pth",
               _use_new_zipfile_serialization=False)
    raw = (t / "legacy_ok.pth").read_bytes()
    f = io.BytesIO(raw)
    ends = []
    for _ in range(3):  # magic number, protocol version, sys_info
        pickle.load(f)
        ends.append(f.tell())
    class Anything(dict):  # stands for every global: only the pickle's length matters here
        def __init__(self, *args, **kwargs):
            pass
    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return pid
        def find_class(self, module, name):
            return Anything
    Unpickler(f).load()
    keys_at = f.tell()
    keys = pickle.load(f)
    data_at = f.tell()
    first = 8 + int.from_bytes(raw[data_at:data_at + 8], "little") * 4  # float32 storages
    big_endian = pickle.dumps({"protocol_version": 1001, "little_endian": False,
                               "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    count = (int.from_bytes(raw[data_at:data_at + 8], "little") + 1).to_bytes(8, "little")
    magic = bytearray(raw); magic[6] ^= 1
    return [
        ("truncated storage", raw[:-5]),
        ("wrong magic number", bytes(magic)),
        ("storage count mismatch", raw[:keys_at] + pickle.dumps(keys[:1], protocol=2) + raw[data_at:data_at + first]),
        ("element count mismatch", raw[:data_at] + count + raw[data_at + 8:]),
        ("big-endian writer", raw[:ends[1]] + big_endian + raw[ends[2]:]),
        ("bytes after the last storage", raw + b"\0" * 16),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cnnprobe", default=str(Path("target/release/cnnprobe").resolve()))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    quick = ["--device", "cpu", "--epochs", "2", "--no-cache"]
    rows = []
    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        good = cifar(t / "good")
        def case(name, args, setup=None, cwd=t):
            if setup:
                setup()
            p = subprocess.run([a.cnnprobe, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "CNNPROBE_CACHE_DIR": str(t / "cache")})
            errs = [l for l in p.stderr.splitlines() if l.startswith("error")]
            msg = errs[-1] if errs else (p.stderr.strip().splitlines() or [""])[-1]
            msg = msg.replace(str(t) + "/", "").replace(str(t), ".")
            rows.append((name, p.returncode, msg))
        (t / "empty").mkdir()
        case("missing data dir", ["run", "--data", "nowhere", *quick])
        case("empty data dir", ["run", "--data", "empty", *quick])
        trunc = cifar(t / "trunc")
        (trunc / "data_batch_2.bin").write_bytes((trunc / "data_batch_2.bin").read_bytes()[:-100])
        case("truncated CIFAR file", ["run", "--data", "trunc", *quick])
        over = cifar(t / "over")
        with open(over / "data_batch_5.bin", "ab") as f:
            f.write(b"\0" * 10)
        case("oversized CIFAR file", ["run", "--data", "over", *quick])
        lab = cifar(t / "label")
        b = bytearray((lab / "test_batch.bin").read_bytes()); b[3 * 3073] = 42; (lab / "test_batch.bin").write_bytes(b)
        case("label out of range", ["run", "--data", "label", *quick])
        case("unknown arch", ["run", "--data", "good", "--arch", "resnet19", *quick])
        case("unknown init", ["run", "--data", "good", "--init", "he", *quick])
        case("zero numeric flag", ["run", "--data", "good", "--epochs=0"])
        case("negative numeric flag", ["run", "--data", "good", "--lr=-1"])
        case("NaN numeric flag", ["run", "--data", "good", "--lr=NaN"])
        case("--pool-size larger than the map", ["run", "--data", "good", "--pool-size", "3", *quick])
        case("--device cuda:7 without it", ["run", "--data", "good", "--device", "cuda:7"])
        (t / "afile").write_text("x")
        case("unwritable --out", ["run", "--data", "good", "--out", "afile/run", *quick])
        (t / "bad.pth").write_bytes(b"PK\x03\x04 broken")
        case("corrupt .pth", ["run", "--data", "good", "--weights", "bad.pth", *quick])
        # weights that do not fit: a resnet50 state dict saved as safetensors by cnnprobe itself is not at hand
        # without Python torch; a torchvision one is written when torch is importable.
        try:
            import torch, torchvision
            torch.save(torchvision.models.resnet34().state_dict(), t / "r34.pth")
            case("weights with missing/unexpected/wrong-shaped keys", ["run", "--data", "good", "--weights", "r34.pth", *quick])
            for name, raw in legacy_cases(torch, t):
                (t / "legacy.pth").write_bytes(raw)
                case(f"legacy .pth: {name}", ["run", "--data", "good", "--weights", "legacy.pth", *quick])
        except ImportError:
            pass
        case("--weights imagenet offline", ["run", "--data", "good", "--weights", "imagenet", "--weights-mirror", "http://127.0.0.1:9", *quick],
             cwd=t)
        for fmt in ["npy", "csv", "safetensors"]:
            subprocess.run([a.cnnprobe, "extract", "--data", "good", "--format", fmt, "--output", f"f_{fmt}", "--device", "cpu"], cwd=t, capture_output=True, check=True)
        p = t / "f_npy/train_features.npy"; p.write_bytes(p.read_bytes()[:-8])
        case("corrupt .npy (truncated)", ["fit", "f_npy", "--device", "cpu"])
        p = t / "f_safetensors/features.safetensors"; p.write_bytes(b"garbage")
        case("corrupt safetensors", ["fit", "f_safetensors", "--device", "cpu"])
        lines = (t / "f_csv/features.csv").read_text().splitlines()
        ragged = lines.copy(); ragged[2] = ragged[2].rsplit(",", 1)[0]
        (t / "f_csv/features.csv").write_text("\n".join(ragged) + "\n")
        case("CSV feature file with a ragged row", ["fit", "f_csv", "--device", "cpu"])
        nonnum = lines.copy(); cells = nonnum[3].split(","); cells[4] = "abc"; nonnum[3] = ",".join(cells)
        (t / "f_csv/features.csv").write_text("\n".join(nonnum) + "\n")
        case("CSV feature file with a non-numeric cell", ["fit", "f_csv", "--device", "cpu"])
        (t / "f_csv/features.csv").write_text("garbage\n")
        case("corrupt CSV feature file", ["fit", "f_csv", "--device", "cpu"])
        # image folders
        from PIL import Image
        def folder(root, classes=("a", "b")):
            for s in ("train", "test"):
                for c in classes:
                    d = root / s / c; d.mkdir(parents=True, exist_ok=True)
                    for i in range(3):
                        Image.new("RGB", (32, 32), (i * 40, 100, 50)).save(d / f"{i}.png")
        folder(t / "img0"); (t / "img0/train/a/9.jpg").write_bytes(b"")
        case("zero-byte image in a folder dataset", ["run", "--dataset", "folder", "--data", "img0", *quick])
        folder(t / "img1"); (t / "img1/train/b/9.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        case("corrupt image in a folder dataset", ["run", "--dataset", "folder", "--data", "img1", *quick])
        folder(t / "img2"); (t / "img2/train/c").mkdir(); (t / "img2/test/c").mkdir()
        case("empty class folder", ["run", "--dataset", "folder", "--data", "img2", *quick])
        case("exploding random network (vgg19, normal:1000)", ["run", "--data", "good", "--arch", "vgg19", "--stem", "cifar", "--init", "normal:1000", *quick])
        case("vanishing random network (vgg19, normal:1e-9)", ["run", "--data", "good", "--arch", "vgg19", "--stem", "cifar", "--init", "normal:1e-9", *quick])
        tiny = t / "tiny"; tiny.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True).returncode == 0:
            try:
                case("full disk (64 KiB tmpfs)", ["extract", "--data", "good", "--format", "csv", "--device", "cpu", "--output", "tiny/x"])
            finally:
                subprocess.run(["umount", str(tiny)])
    table = "| case | exit code | message (last line of stderr) |\n| --- | --- | --- |\n"
    for name, code, msg in rows:
        table += f"| {name} | {code} | `{msg.replace('|', '/')}` |\n"
    if a.out:
        a.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
