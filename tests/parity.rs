//! Parity with torchvision: state dicts saved by torchvision 0.28 (`torch.save`, random
//! init with perturbed BN statistics) load through the `--weights PATH` code path and give
//! torchvision's logits and penultimate features within 1e-4, at 32×32 and 224×224.
//! Fixtures are made at test time by scripts/make_parity_fixtures.py with the set-up venv
//! and cached under target/; skipped cleanly without the venv.
mod common;

use cnnprobe::features::{taps, Encode, FeatureSpec, Pool};
use cnnprobe::models::{Arch, ModelConfig, Network, Stem};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use tch::Tensor;

fn fixtures() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let py = common::python()?;
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("parity-fixtures");
        if !dir.join(".done").exists() {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/make_parity_fixtures.py");
            let out = Command::new(py).arg(script).arg(&dir).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        Some(dir)
    })
    .clone()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn check(arch: Arch) {
    let Some(dir) = fixtures() else {
        eprintln!("skipped: CNNPROBE_PYTHON not set (run through scripts/test.sh)");
        return;
    };
    // A different seed than the fixture's, so only loading can make the outputs match.
    let cfg = ModelConfig::torchvision(arch, Stem::Imagenet, 99);
    let mut net = Network::build(&cfg).unwrap();
    net.load_weights(&dir.join(format!("{}.pth", arch.name()))).unwrap();
    let arrays: std::collections::HashMap<String, Tensor> =
        Tensor::read_npz(dir.join(format!("{}.npz", arch.name()))).unwrap().into_iter().collect();
    let spec = FeatureSpec {
        taps: if arch.is_vgg() { vec!["fc2".into()] } else { vec![] },
        pool: Pool::Avg,
        pool_size: 1,
        encode: Encode::None,
    };
    // Unfolded, folded, then folded with oneDNN's fused convs (CPU fp32 ResNets).
    for (fold, fused) in [(false, false), (true, false), (true, true)] {
        if fold {
            net.fold_batchnorm();
        }
        net.fuse(fused);
        for size in [32, 224] {
            let x = &arrays[&format!("input{size}")];
            let (logits, feats) = tch::no_grad(|| (net.body.logits(x), taps::forward_batch(&net, &spec, x)));
            let (want_l, want_f) = (&arrays[&format!("logits{size}")], &arrays[&format!("features{size}")]);
            let mut dl = max_abs(&logits, want_l);
            let mut df = max_abs(&feats.unwrap(), want_f);
            if fold {
                // Folding reorders float arithmetic: judged relative to the output's scale.
                dl /= want_l.abs().max().double_value(&[]);
                df /= want_f.abs().max().double_value(&[]);
            }
            assert!(dl < 1e-4, "{} {size}px fold={fold} fused={fused}: logits differ by {dl:e}", arch.name());
            assert!(df < 1e-4, "{} {size}px fold={fold} fused={fused}: features differ by {df:e}", arch.name());
        }
    }
}

#[test]
fn resnet18_matches_torchvision() {
    check(Arch::Resnet18);
}

#[test]
fn resnet50_matches_torchvision() {
    check(Arch::Resnet50);
}

#[test]
fn vgg11_bn_matches_torchvision() {
    check(Arch::Vgg11Bn);
}

#[test]
fn vgg16_matches_torchvision() {
    check(Arch::Vgg16);
}
