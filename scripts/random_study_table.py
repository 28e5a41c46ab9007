#!/usr/bin/env python3
"""Markdown tables of results/random_study.csv for results/random_study.md and the README.

    python3 scripts/random_study_table.py [results/random_study.csv]
    python3 scripts/random_study_table.py --splice [results/random_study.csv]

With --splice the tables are written into results/random_study.md in place of the ones
there: the screening table, then the finalists' table with its mean ± sd lines (each table
found by its header line).

Screening rows (val_only=true) are listed with their validation accuracy and the change
against the base point; finalist rows (scored on test) are summarised as mean ± sd, with the
wall time and peak RSS of each seed from random_study_wall.csv beside the CSV when present.
Standard library only.
"""
import csv
import os
import statistics
import sys

BASE = "taps-vgg11-w4-block1:4+block2:2"


def flips(r):
    """Which flipped views a run used (rows from before the flags existed have none)."""
    if r.get("hflip_test") == "true":
        return "train+test"
    return "train" if r.get("hflip") == "true" else "none"


def track(r):
    """Issue 13's tracks: "no-gradient" when a step used train images (BN statistics
    calibrated on them, ZCA whitening fitted on them, first-layer filters sampled from them),
    else "data-free" (weights drawn from a distribution; the probe alone sees data)."""
    if (r.get("bn", "").startswith("calibrate") or r.get("whiten", "none") not in ("", "none")
            or r.get("first_layer", "random") not in ("", "random")):
        return "no-gradient"
    return "data-free"


def readout(r):
    """The solver, with the kernel readout's kernel, feature precision and use of the
    mirrored views where not the defaults (arccos, fp32, mean; rows from before the columns
    existed have none of them)."""
    extra = [r.get("kernel", "")] if r.get("kernel", "") not in ("", "arccos") else []
    extra += ["bf16"] if r.get("kernel_precision") == "bf16" else []
    extra += ["view pairs"] if r.get("kernel_views") == "pairs" else []
    return " ".join([r["solver"]] + extra)


def pct(v):
    return f"{100 * float(v):.2f}" if v else ""


def tables(path):
    """The Markdown of `main`, as a string."""
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(path)
    return out.getvalue()


def splice(path, md="results/random_study.md"):
    """Replaces the screening and finalist tables (and the mean ± sd lines that follow the
    finalists) of `md` with fresh ones."""
    new = tables(path).split("\n\n")
    text = open(md).read().split("\n")
    for block in (new[0], new[1] + "\n\n" + new[2].rstrip("\n")):
        header = block.split("\n")[0]
        start = text.index(header)
        end = start
        # The old table, and for the finalists a blank line and the "- tag: …" lines.
        while end < len(text) and (text[end].startswith("|") or text[end].startswith("- final")
                                   or (text[end] == "" and end + 1 < len(text) and text[end + 1].startswith("- final"))):
            end += 1
        text[start:end] = block.split("\n")
    open(md, "w").write("\n".join(text))


def main(path):
    rows = list(csv.DictReader(open(path, newline="")))
    screen = [r for r in rows if r["val_only"] == "true"]
    base = next((float(r["val_acc"]) for r in screen if r["tag"] == BASE), None)
    print("| lever (tag) | track | arch | width | nets | features | dims | flip views | BN | whiten | first layer | encode | readout | L2 / λ (chosen) | val acc % | Δ vs base | extract s | fit s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in screen:
        delta = f"{100 * (float(r['val_acc']) - base):+.2f}" if base is not None else ""
        print(
            f"| {r['tag']} | {track(r)} | {r['arch']} {r['stem']} | {r['width_mult'] or 1} | {r.get('ensemble') or 1} | {r['features']} | {r['feature_dim']} "
            f"| {flips(r)} | {r['bn']} | {r.get('whiten') or 'none'} | {r.get('first_layer') or 'random'} | {r.get('encode') or 'none'} "
            f"| {readout(r)} | {r['chosen_weight_decay']} | {pct(r['val_acc'])} | {delta} "
            f"| {r['extract_s']} | {r['fit_s']} |"
        )
    finals = [r for r in rows if r["val_only"] != "true" and r["test_top1"]]
    wall_path = os.path.join(os.path.dirname(path), "random_study_wall.csv")
    wall = {}
    if os.path.exists(wall_path):
        wall = {(w["tag"], w["seed"]): w for w in csv.DictReader(open(wall_path, newline=""))}
    if finals:
        print()
        print("| finalist (tag) | track | seed | val acc % | test top-1 % | test top-5 % | extract s | fit s | wall s | peak RSS GB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in finals:
            w = wall.get((r["tag"], r["seed"]), {})
            print(
                f"| {r['tag']} | {track(r)} | {r['seed']} | {pct(r['val_acc'])} | {pct(r['test_top1'])} | {pct(r['test_top5'])} "
                f"| {r['extract_s']} | {r['fit_s']} | {w.get('wall_s', '')} | {w.get('peak_rss_gb', '')} |"
            )
        print()
        for tag in dict.fromkeys(r["tag"] for r in finals):
            top1 = [100 * float(r["test_top1"]) for r in finals if r["tag"] == tag]
            sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
            print(f"- {tag}: test top-1 {statistics.mean(top1):.2f} ± {sd:.2f} % (mean ± sd over {len(top1)} seed(s))")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--splice"]
    csv_path = args[0] if args else "results/random_study.csv"
    if "--splice" in sys.argv[1:]:
        splice(csv_path)
    else:
        main(csv_path)
