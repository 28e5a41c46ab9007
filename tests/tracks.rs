//! Issue 13's two tracks: the data-free presets' networks owe nothing to the data, and the
//! no-gradient lever `--first-layer patches` samples its filters reproducibly.
mod common;

use cnnprobe::cli::presets;
use cnnprobe::data::normalize::CIFAR10;
use cnnprobe::data::{Source, Split};
use cnnprobe::features::patches::{self, FirstLayer};
use cnnprobe::features::{Precision, Preprocess, Resize};
use cnnprobe::models::init::InitScheme;
use cnnprobe::models::{Arch, ModelConfig, Network, Stem};
use common::*;
use std::path::Path;
use tch::{Kind, Tensor};

/// Two CIFAR-10 folders with the same test images and different train images.
fn two_datasets(root: &Path) -> (String, String) {
    let a = write_cifar10(&root.join("a"), 20, 10);
    let b = write_cifar10(&root.join("b"), 20, 10);
    let mut rng = Bytes::new(99);
    let other: Vec<u8> = (0..20).flat_map(|i| record((i % 10) as u8, &mut rng)).collect();
    std::fs::write(b.join("data_batch_1.bin"), other).unwrap();
    assert_ne!(std::fs::read(a.join("data_batch_1.bin")).unwrap(), std::fs::read(b.join("data_batch_1.bin")).unwrap());
    assert_eq!(std::fs::read(a.join("test_batch.bin")).unwrap(), std::fs::read(b.join("test_batch.bin")).unwrap());
    (a.to_str().unwrap().to_string(), b.to_str().unwrap().to_string())
}

/// A preset's network flags (the preset's, less the probe's), for `extract`.
fn network_flags(preset: &str) -> Vec<&'static str> {
    let p = presets::find(preset).expect("the preset exists");
    let probe_flags = ["--solver", "--wd-search", "--normalize", "--kernel-precision", "--kernel-views"];
    let mut out = vec![];
    let mut it = p.flags.iter().chain(p.random_only).peekable();
    while let Some(&f) = it.next() {
        let takes_value = it.peek().is_some_and(|v| !v.starts_with("--"));
        if probe_flags.contains(&f) {
            if takes_value {
                it.next();
            }
            continue;
        }
        out.push(f);
    }
    assert!(out.contains(&"--width-mult") && out.contains(&"--features"), "{out:?}");
    out
}

fn test_features(tmp: &Path, data: &str, out: &str, preset: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["extract", "--data", data, "--device", "cpu", "--format", "npy", "--output", out];
    args.extend(network_flags(preset));
    args.extend_from_slice(extra);
    let o = cnnprobe(tmp, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read(tmp.join(out).join("test_features.npy")).unwrap()
}

#[test]
fn the_data_free_presets_owe_nothing_to_the_train_images_and_patches_do() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_datasets(tmp.path());
    for preset in ["random-best", "random-patches"] {
        let (fa, fb, pa, pb) =
            (format!("{preset}-fa"), format!("{preset}-fb"), format!("{preset}-pa"), format!("{preset}-pb"));
        // Same test images, other train images: a data-free network gives the same bytes.
        let same = test_features(tmp.path(), &a, &fa, preset, &[]);
        assert_eq!(same, test_features(tmp.path(), &b, &fb, preset, &[]), "{preset}");
        // The check can fail: filters sampled from the train images change the test features.
        let pa = test_features(tmp.path(), &a, &pa, preset, &["--first-layer", "patches"]);
        let pb = test_features(tmp.path(), &b, &pb, preset, &["--first-layer", "patches"]);
        assert_ne!(pa, pb, "{preset}: patch filters did not depend on the train images");
    }
}

#[test]
fn patch_filters_are_seeded_reproducible_and_labelled() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 10);
    let d = data.to_str().unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec!["extract", "--data", d, "--device", "cpu", "--arch", "vgg11", "--stem", "cifar"];
        args.extend_from_slice(&["--features", "block1:2", "--format", "npy", "--output", out]);
        args.extend_from_slice(extra);
        let o = cnnprobe(tmp.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(tmp.path().join(out).join("train_features.npy")).unwrap()
    };
    let first = run("p1", &["--first-layer", "signed-patches", "--seed", "3"]);
    assert_eq!(first, run("p2", &["--first-layer", "signed-patches", "--seed", "3"]));
    assert_ne!(first, run("p3", &["--first-layer", "signed-patches", "--seed", "4"]));
    assert_eq!(provenance(&tmp.path().join("p1"), "first_layer"), "signed-patches");
    // Pretrained filters are not replaced.
    let o =
        cnnprobe(tmp.path(), &["extract", "--data", d, "--weights", "imagenet", "--first-layer", "patches", "-o", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs --weights random"), "{}", stderr(&o));
}

fn memory_source(n: i64, seed: i64) -> Source {
    tch::manual_seed(seed);
    let images = Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, tch::Device::Cpu));
    Source::Memory(std::rc::Rc::new(Split { labels: Tensor::zeros([n], (Kind::Int64, tch::Device::Cpu)), images }))
}

fn preprocess() -> Preprocess {
    Preprocess { stats: CIFAR10, input_size: 32, resize: Resize::Bilinear, precision: Precision::Fp32, zca: None }
}

#[test]
fn sampled_patches_are_windows_of_the_normalised_images_and_depend_on_the_seed() {
    let train = memory_source(40, 1);
    let pre = preprocess();
    let p = patches::sample(&train, 50, 3, 7, &pre).unwrap();
    assert_eq!(p.size(), [50, 3, 3, 3]);
    assert!(p.equal(&patches::sample(&train, 50, 3, 7, &pre).unwrap()), "same seed, other patches");
    assert!(!p.equal(&patches::sample(&train, 50, 3, 8, &pre).unwrap()), "another seed, same patches");
    // Every patch is a window of some normalised train image (50 patches from 40 images:
    // the sample cycles through them).
    let Source::Memory(split) = &train else { unreachable!() };
    let (scale, shift) = CIFAR10.u8_affine();
    let images = split.images.to_kind(Kind::Float) * scale + shift;
    for k in 0..50 {
        let patch = p.get(k);
        let found = (0..40).any(|i| {
            (0..30).any(|y| {
                (0..30).any(|x| images.get(i).narrow(1, y, 3).narrow(2, x, 3).allclose(&patch, 1e-6, 1e-6, false))
            })
        });
        assert!(found, "patch {k} is no window of a train image");
    }
}

#[test]
fn signed_patches_pair_each_filter_with_its_negative() {
    let train = memory_source(20, 2);
    let cfg = ModelConfig {
        arch: Arch::Vgg11,
        stem: Stem::Cifar,
        init: InitScheme::Torchvision,
        zero_init_residual: false,
        seed: 0,
        width_mult: 1.0,
    };
    let mut net = Network::build(&cfg).unwrap();
    let before = net.body.units_mut()[0].conv.weight.copy();
    patches::init_first_layer(&mut net, FirstLayer::SignedPatches, &train, 0, &preprocess()).unwrap();
    let w = net.body.units_mut()[0].conv.weight.copy();
    assert!(w.narrow(0, 0, 32).equal(&-w.narrow(0, 32, 32)), "second half is not the first negated");
    // Scaled to the random filters' mean norm.
    let norms = |t: &Tensor| t.flatten(1, -1).norm_scalaropt_dim(2.0, [1], false);
    let (got, want) =
        (norms(&w).mean(Kind::Float).double_value(&[]), norms(&before).mean(Kind::Float).double_value(&[]));
    assert!((got - want).abs() < 1e-4 * want, "mean filter norm {got}, random filters' {want}");
}
