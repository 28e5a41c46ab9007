//! The random-features levers of issue 7 through the real binary: flip augmentation,
//! validation-only screening runs, `--tag`, `--preset`, and study charts.
mod common;

use common::*;
use std::path::Path;

const FAST: &[&str] = &["--device", "cpu", "--threads", "2", "--batch-size", "64"];

/// A CIFAR-10 folder whose second train image is the mirror image of the first.
fn write_mirrored(dir: &Path) -> std::path::PathBuf {
    let folder = write_cifar10(dir, 20, 20);
    let path = folder.join("data_batch_1.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let rec = 3073;
    let first = bytes[..rec].to_vec();
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                bytes[rec + 1 + c * 1024 + y * 32 + x] = first[1 + c * 1024 + y * 32 + (31 - x)];
            }
        }
    }
    std::fs::write(&path, bytes).unwrap();
    folder
}

fn summary_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut rdr = csv::Reader::from_path(path).unwrap();
    let h = rdr.headers().unwrap().clone();
    rdr.records()
        .map(|r| h.iter().zip(r.unwrap().iter()).map(|(k, v)| (k.to_string(), v.to_string())).collect())
        .collect()
}

#[test]
fn hflip_features_are_those_of_the_mirrored_images() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mirrored(tmp.path());
    let mut args = vec!["extract", "--data", data.to_str().unwrap(), "--arch", "vgg11", "--stem", "cifar"];
    args.extend(["--features", "block1:4,block2:2", "--hflip", "--hflip-test", "--format", "npy", "--output", "f"]);
    args.extend_from_slice(FAST);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let read =
        |name: &str| cnnprobe::features::npy::read_npy(&tmp.path().join("f").join(name), tch::Kind::Float).unwrap();
    let (train, flip) = (read("train_features.npy"), read("train_flip_features.npy"));
    assert_eq!(train.size(), [100, 64 * 16 + 128 * 4]);
    assert_eq!(flip.size(), train.size());
    // Image 1 is image 0 mirrored, so the flipped view of image 0 is image 1 itself.
    let (a, b) = (flip.get(0), train.get(1));
    assert!(a.allclose(&b, 1e-5, 1e-5, false), "flipped features of image 0 differ from image 1's");
    assert!(!flip.get(2).allclose(&train.get(2), 1e-3, 1e-3, false), "flipping changed nothing");
    assert_eq!(read("test_flip_features.npy").size(), [20, 64 * 16 + 128 * 4]);
    let manifest = std::fs::read_to_string(tmp.path().join("f/features.json")).unwrap();
    assert!(manifest.contains("\"hflip\": true") && manifest.contains("\"hflip_test\": true"), "{manifest}");

    // `fit` reads the flipped rows back and trains on them: twice the fit rows.
    let o = cnnprobe(tmp.path(), &["fit", "f", "--solver", "lbfgs", "--out", "r", "--summary", "s.csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let row = &summary_rows(&tmp.path().join("s.csv"))[0];
    assert_eq!(row["n_train"], "180");
    assert_eq!(row["n_val"], "10");
    assert!(row["test_top1"].parse::<f64>().is_ok());

    // Test-time flip needs the flipped train images (its validation views come from them).
    let o = cnnprobe(tmp.path(), &["run", "--hflip-test"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--hflip"), "{}", stderr(&o));
}

#[test]
fn val_only_runs_never_score_the_test_split_and_carry_their_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    let mut args = vec!["run", "--data", data.to_str().unwrap(), "--arch", "vgg11", "--stem", "cifar"];
    args.extend(["--width-mult", "0.5", "--features", "block1:2,block2:1", "--solver", "lbfgs", "--wd-search"]);
    args.extend(["--val-only", "--hflip", "--tag", "lever-a", "--out", "r", "--summary", "s.csv"]);
    args.extend_from_slice(FAST);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("test not scored (--val-only)"));
    let row = &summary_rows(&tmp.path().join("s.csv"))[0];
    assert_eq!(row["tag"], "lever-a");
    assert_eq!(row["val_only"], "true");
    assert_eq!(row["test_top1"], "");
    assert_eq!(row["refit"], "false");
    assert_eq!(row["width_mult"], "0.5");
    assert_eq!(row["feature_dim"], (32 * 4 + 64).to_string());
    assert_eq!(row["n_train"], "180");
    assert!(row["val_acc"].parse::<f64>().unwrap() > 0.0);
    assert!(!tmp.path().join("r/per_class.csv").exists(), "per-class test accuracy of a val-only run");
    assert!(tmp.path().join("r/wd_search.csv").exists());

    // The study chart: validation accuracy by tag.
    let o = cnnprobe(tmp.path(), &["plot", "s.csv", "--by", "tag", "--metric", "val_acc", "-o", "c.svg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(tmp.path().join("c.svg")).unwrap();
    assert!(svg.contains("lever-a") && svg.contains("val acc (%)"));
}

#[test]
fn preset_sets_the_recipe_and_command_line_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    let base = ["run", "--preset", "random-best", "--data", data.to_str().unwrap(), "--summary", "s.csv"];
    let mut args = base.to_vec();
    // Narrower and one tap, so the fixture run stays fast; the rest comes from the preset.
    args.extend(["--width-mult", "0.25", "--features", "block1:2", "--out", "r"]);
    args.extend_from_slice(FAST);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let row = &summary_rows(&tmp.path().join("s.csv"))[0];
    for (col, want) in [
        ("preset", "random-best"),
        ("arch", "vgg11"),
        ("stem", "cifar"),
        ("width_mult", "0.25"),
        ("features", "block1:2"),
        ("feature_dim", "64"),
        ("hflip", "true"),
        ("hflip_test", "true"),
        ("solver", "kernel"),
        ("wd_search", "true"),
    ] {
        assert_eq!(row[col], want, "column {col}");
    }
    assert!(row["test_top1"].parse::<f64>().is_ok(), "a preset run is scored on test");

    // The no-gradient preset: the patch network with its data steps, labelled as such.
    let mut args = vec!["run", "--preset", "patches-best", "--data", data.to_str().unwrap(), "--summary", "p.csv"];
    args.extend(["--width-mult", "0.25", "--out", "p"]);
    args.extend_from_slice(FAST);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let row = &summary_rows(&tmp.path().join("p.csv"))[0];
    for (col, want) in [
        ("preset", "patches-best"),
        ("arch", "patchnet"),
        ("whiten", "patch-zca:0.1"),
        ("first_layer", "patches"),
        ("encode", "soft:0.25"),
        ("features", "encode:13/7"),
        ("feature_dim", "1152"), // 64 filters, 2 polarities, 3×3 windows of 13 at stride 7
        ("hflip_test", "true"),
        ("solver", "kernel"),
        ("kernel_precision", "bf16"),
        ("kernel_lean", "bf16, views averaged at extraction"),
    ] {
        assert_eq!(row[col], want, "column {col}");
    }
    assert!(row["test_top1"].parse::<f64>().is_ok(), "a preset run is scored on test");

    let o = cnnprobe(tmp.path(), &["run", "--preset", "best"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no preset 'best'; choose from random-best"), "{}", stderr(&o));
    // Pretrained widths cannot change.
    let o = cnnprobe(tmp.path(), &["run", "--arch", "vgg11", "--weights", "imagenet", "--width-mult", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--width-mult 2 changes every layer's shape; it needs --weights random"));
}

/// `--resize bicubic` (the transfer protocol's) runs and gives other features than bilinear.
#[test]
fn bicubic_resize_is_its_own_interpolation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 2, 4);
    let features = |resize: &str| {
        let out = format!("f-{resize}");
        let args = ["extract", "--data", data.to_str().unwrap(), "--arch", "resnet18", "--input-size", "48"];
        let mut args = args.to_vec();
        args.extend(["--resize", resize, "-o", &out, "--device", "cpu", "--format", "npy"]);
        let o = cnnprobe(tmp.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        cnnprobe::features::npy::read_npy(&tmp.path().join(&out).join("train_features.npy"), tch::Kind::Float).unwrap()
    };
    let (lin, cub) = (features("bilinear"), features("bicubic"));
    assert_eq!(lin.size(), cub.size());
    assert!(lin.isfinite().all().int64_value(&[]) == 1 && cub.isfinite().all().int64_value(&[]) == 1);
    assert!((&lin - &cub).abs().max().double_value(&[]) > 1e-4, "bicubic gave bilinear's features");
}

#[test]
fn an_ensemble_is_its_members_features_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    let d = data.to_str().unwrap();
    let net = ["--arch", "vgg11", "--stem", "cifar", "--width-mult", "0.25", "--features", "block1:2,block2:5/3"];
    let extract = |out: &str, extra: &[&str]| {
        let args = [&["extract", "--data", d, "--format", "npy", "--output", out][..], &net, FAST, extra].concat();
        let o = cnnprobe(tmp.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        cnnprobe::features::npy::read_npy(&tmp.path().join(out).join("train_features.npy"), tch::Kind::Float).unwrap()
    };
    let both = extract("e", &["--seed", "3", "--ensemble", "2"]);
    let (first, second) = (extract("a", &["--seed", "3"]), extract("b", &["--seed", "1003"]));
    // block1 pooled 2×2 (16 channels) + block2's 8×8 map over 5×5 windows at stride 3 (32 channels, 2×2).
    let dim = 16 * 4 + 32 * 4;
    assert_eq!(first.size(), [100, dim]);
    assert_eq!(both.size(), [100, 2 * dim]);
    assert!(both.narrow(1, 0, dim).equal(&first), "member 0 is not the seed-3 network");
    assert!(both.narrow(1, dim, dim).equal(&second), "member 1 is not the seed-1003 network");
    assert!(!first.allclose(&second, 1e-3, 1e-3, false), "the members drew the same weights");
    assert_eq!(provenance(&tmp.path().join("e"), "ensemble"), "2");
    // Several copies of one checkpoint would be one network.
    let o = cnnprobe(tmp.path(), &["extract", "--data", d, "-o", "bad", "--ensemble", "2", "--weights", "imagenet"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--ensemble 2 draws several networks"), "{}", stderr(&o));
}

#[test]
fn the_kernel_readout_runs_one_row_per_image_and_saves_its_support() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    let mut args = vec!["run", "--data", data.to_str().unwrap(), "--arch", "vgg11", "--stem", "cifar"];
    args.extend(["--width-mult", "0.25", "--features", "block1:2", "--solver", "kernel", "--wd-search"]);
    args.extend(["--hflip", "--hflip-test", "--save-head", "h.safetensors", "--out", "r", "--summary", "s.csv"]);
    args.extend_from_slice(FAST);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let row = &summary_rows(&tmp.path().join("s.csv"))[0];
    assert_eq!(row["solver"], "kernel");
    assert_eq!(row["refit"], "true");
    // 100 train images less 10 for validation: the mirrored views are averaged, not added.
    assert_eq!(row["n_train"], "90");
    assert!(!row["test_top1"].is_empty());
    let grid = std::fs::read_to_string(tmp.path().join("r/wd_search.csv")).unwrap();
    assert_eq!(grid.lines().filter(|l| l.starts_with("kernel,")).count(), cnnprobe::probe::kernel::GRID.len());
    let head = tch::Tensor::read_safetensors(tmp.path().join("h.safetensors")).unwrap();
    let get = |k: &str| head.iter().find(|(n, _)| n == k).map(|(_, t)| t.size()).unwrap_or_default();
    assert_eq!(get("kernel_support"), [100, 16 * 4], "the refit's rows: every train image");
    assert_eq!(get("weight"), [10, 100]);
}

/// `--kernel-views pairs` through the binary: one weight per image, both views of each kept
/// as support, the summary says so; and the combinations that cannot work are refused.
#[test]
fn the_pair_kernel_keeps_both_views_of_each_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    let d = data.to_str().unwrap();
    let mut args = vec!["run", "--data", d, "--arch", "vgg11", "--stem", "cifar", "--width-mult", "0.25"];
    args.extend(["--features", "block1:2", "--solver", "kernel", "--wd-search", "--kernel-views", "pairs"]);
    args.extend(["--kernel-precision", "bf16", "--hflip", "--hflip-test", "--save-head", "h.safetensors"]);
    args.extend(["--out", "r", "--summary", "s.csv"]);
    args.extend_from_slice(FAST);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("averaged over the four pairs of mirrored views"), "{}", stderr(&o));
    let row = &summary_rows(&tmp.path().join("s.csv"))[0];
    assert_eq!((row["kernel_views"].as_str(), row["n_train"].as_str()), ("pairs", "90"));
    assert!(row["test_top1"].parse::<f64>().unwrap() > 0.0);
    let head = tch::Tensor::read_safetensors(tmp.path().join("h.safetensors")).unwrap();
    let get = |k: &str| head.iter().find(|(n, _)| n == k).map(|(_, t)| t.size()).unwrap_or_default();
    assert_eq!(get("kernel_support"), [100, 64]);
    assert_eq!(get("kernel_support_flip"), [100, 64]);
    assert_eq!(get("weight"), [10, 100], "one weight per image, not per view");

    // With bf16-lean rows each view is kept apart, rounded to bf16 as it is extracted: bit
    // for bit the float32 views rounded.
    {
        use clap::Parser;
        use cnnprobe::config::Job;
        use cnnprobe::features::{extract_features, ExtractConfig};
        use tch::{Device, Kind};
        let mut lean = vec!["cnnprobe"];
        lean.extend(args.iter().map(|&a| match a {
            "bf16" => "bf16-lean",
            "s.csv" => "lean.csv",
            "r" => "r-lean",
            _ => a,
        }));
        let Job::Run(cfg) = cnnprobe::cli::Cli::parse_from(&lean).into_job().unwrap() else { panic!("a run") };
        assert!(cfg.extract.lean && cfg.extract.lean_views);
        let rows = extract_features(&cfg.extract, Device::Cpu).unwrap();
        let plain = ExtractConfig { lean: false, lean_views: false, ..cfg.extract.clone() };
        let both = extract_features(&plain, Device::Cpu).unwrap();
        for (got, want) in [
            (&rows.train, &both.train),
            (&rows.test, &both.test),
            (rows.train_flip.as_ref().unwrap(), both.train_flip.as_ref().unwrap()),
            (rows.test_flip.as_ref().unwrap(), both.test_flip.as_ref().unwrap()),
        ] {
            assert_eq!(got.x.kind(), Kind::BFloat16);
            assert!(got.x.equal(&want.x.to_kind(Kind::BFloat16)), "a lean view differs from the rounded view");
        }
        let o = cnnprobe(tmp.path(), &lean[1..]);
        assert!(o.status.success(), "{}", stderr(&o));
        let row = &summary_rows(&tmp.path().join("lean.csv"))[0];
        assert_eq!((row["kernel_lean"].as_str(), row["kernel_views"].as_str()), ("bf16, views kept apart", "pairs"));
        assert!(row["test_top1"].parse::<f64>().unwrap() > 0.0);
    }

    for (flags, says) in [
        (&["--solver", "lbfgs", "--kernel-views", "pairs", "--hflip"][..], "is --solver kernel's"),
        (&["--solver", "kernel", "--kernel-views", "pairs"][..], "add --hflip"),
    ] {
        let mut bad = vec!["run", "--data", d];
        bad.extend_from_slice(flags);
        let o = cnnprobe(tmp.path(), &bad);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{flags:?}: {}", stderr(&o));
    }
}

/// `--kernel-precision bf16-lean`: each row is the float32 mean of the image's two views' features, rounded
/// once to bf16, bit for bit what the two-part extraction gives when merged and rounded; no
/// flipped part is kept, and the run bypasses the feature cache.
#[test]
fn lean_rows_are_the_rounded_mean_of_both_views() {
    use clap::Parser;
    use cnnprobe::config::Job;
    use cnnprobe::features::{extract_features, ExtractConfig};
    use tch::{Device, Kind};
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mirrored(tmp.path());
    let mut args = vec!["cnnprobe", "run", "--data", data.to_str().unwrap(), "--arch", "vgg11", "--stem", "cifar"];
    args.extend(["--width-mult", "0.5", "--features", "block1:2,block2:1", "--hflip", "--hflip-test"]);
    args.extend(["--solver", "kernel", "--kernel-precision", "bf16-lean"]);
    args.extend_from_slice(FAST);
    let Job::Run(cfg) = cnnprobe::cli::Cli::parse_from(&args).into_job().unwrap() else { panic!("a run") };
    assert!(cfg.extract.lean);
    let lean = extract_features(&cfg.extract, Device::Cpu).unwrap();
    let both = extract_features(&ExtractConfig { lean: false, ..cfg.extract.clone() }, Device::Cpu).unwrap();
    assert!(!cfg.extract.lean_views, "views averaged unless --kernel-views pairs");
    assert!(lean.train_flip.is_none() && lean.test_flip.is_none(), "no flipped part is kept");
    for (got, a, b) in [
        (&lean.train, &both.train, both.train_flip.as_ref().unwrap()),
        (&lean.test, &both.test, both.test_flip.as_ref().unwrap()),
    ] {
        assert_eq!(got.x.kind(), Kind::BFloat16);
        let want = ((&a.x + &b.x) / 2.0).to_kind(Kind::BFloat16);
        assert!(got.x.equal(&want), "lean rows differ from the rounded mean of the views");
        assert!(got.y.equal(&a.y));
    }
    // Image 1 mirrors image 0, so their mean views are the same row.
    let rows = lean.train.x.to_kind(Kind::Float);
    assert!(rows.get(0).allclose(&rows.get(1), 1e-2, 1e-2, false));

    // Through the binary: a result, the provenance column, and nothing in the cache.
    let mut run = args[1..].to_vec();
    run.extend(["--wd-search", "--out", "r", "--summary", "s.csv", "--cache-dir", "cache"]);
    let o = cnnprobe(tmp.path(), &run);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("without the cache"), "{}", stderr(&o));
    assert!(!tmp.path().join("cache").exists(), "a lean run wrote to the cache");
    let row = &summary_rows(&tmp.path().join("s.csv"))[0];
    assert_eq!(row["kernel_lean"], "bf16, views averaged at extraction");
    assert_eq!(row["kernel_precision"], "bf16");
    assert!(row["test_top1"].parse::<f64>().unwrap() > 0.0);

    // It needs the kernel readout; a preset's choice is undone with another value.
    for (flags, says) in [
        (&["--solver", "lbfgs", "--kernel-precision", "bf16-lean"][..], "add --kernel-precision fp32"),
        (&["--preset", "patches-best", "--solver", "lbfgs"][..], "--kernel-precision bf16-lean sets how"),
    ] {
        let mut bad = vec!["run", "--data", data.to_str().unwrap(), "--hflip"];
        bad.extend_from_slice(flags);
        let o = cnnprobe(tmp.path(), &bad);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
}
