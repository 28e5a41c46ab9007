//! `--arch patchnet` (issue 13): its patch ZCA against numpy's, its fast features against the
//! plain map-then-pool path, its patch filters, and the flags through the binary.
mod common;

use cnnprobe::data::normalize::CIFAR10;
use cnnprobe::data::{Source, Split};
use cnnprobe::features::patches::{self, FirstLayer};
use cnnprobe::features::{taps, Encode, FeatureSpec, Pool, Precision, Preprocess, Resize};
use cnnprobe::models::init::InitScheme;
use cnnprobe::models::layers::BnMode;
use cnnprobe::models::pooling::Grid;
use cnnprobe::models::{Arch, ModelConfig, Network, Stem};
use common::*;
use tch::{Kind, Tensor};

fn patchnet(width_mult: f64, seed: u64) -> Network {
    let cfg = ModelConfig {
        arch: Arch::Patchnet,
        stem: Stem::Cifar,
        init: InitScheme::Torchvision,
        zero_init_residual: false,
        seed,
        width_mult,
    };
    Network::build(&cfg).unwrap()
}

/// `n` 32×32 uint8 images with correlated pixels (a shared grey base plus colour noise).
fn images(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let base = Tensor::rand([n, 1, 32, 32], (Kind::Float, tch::Device::Cpu));
    let noise = Tensor::rand([n, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
    ((base * 0.7 + noise * 0.3) * 255.0).to_kind(Kind::Uint8)
}

fn source(images: &Tensor) -> Source {
    let n = images.size()[0];
    let labels = Tensor::zeros([n], (Kind::Int64, tch::Device::Cpu));
    Source::Memory(std::rc::Rc::new(Split { labels, images: images.shallow_clone() }))
}

fn preprocess() -> Preprocess {
    Preprocess { stats: CIFAR10, input_size: 32, resize: Resize::Bilinear, precision: Precision::Fp32, zca: None }
}

fn normalised(images: &Tensor) -> Tensor {
    let (scale, shift) = CIFAR10.u8_affine();
    images.to_kind(Kind::Float) * scale + shift
}

fn var(net: &Network, name: &str) -> Tensor {
    net.vs.variables()[name].copy()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

#[test]
fn patch_zca_matches_numpy() {
    let Some(py) = require_python("patch_zca_matches_numpy") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let imgs = images(60, 3);
    imgs.write_npy(tmp.path().join("images.npy")).unwrap();
    let mut net = patchnet(1.0, 0);
    patches::whiten_patchnet(&mut net, 0.1, &source(&imgs), &preprocess(), 1).unwrap();
    // Every 6×6 window in im2col order (channel, row, column), the population covariance,
    // ZCA with eps relative to the mean eigenvalue, and the norm floor: a tenth of the
    // whitened patches' mean squared norm.
    let script = r#"
import numpy as np
mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
x = np.load("images.npy").astype(np.float64) / 255.0
x = (x - mean[None, :, None, None]) / std[None, :, None, None]
p = np.stack([x[:, :, i:i + 6, j:j + 6].reshape(len(x), -1) for i in range(27) for j in range(27)], 1).reshape(-1, 108)
mu = p.mean(0)
lam, u = np.linalg.eigh(np.cov(p, rowvar=False, bias=True))
lam = np.clip(lam, 0, None)
w = (u / np.sqrt(lam + 0.1 * lam.mean())) @ u.T
v = (p - mu) @ w.T
np.save("matrix.npy", w.astype(np.float32))
np.save("bias.npy", (-w @ mu).astype(np.float32))
np.save("floor.npy", np.array([0.1 * (v ** 2).sum(1).mean()], np.float32))
"#;
    run_python(&py, tmp.path(), script, &[]);
    let load = |f: &str| Tensor::read_npy(tmp.path().join(f)).unwrap();
    let (matrix, bias, floor) = (load("matrix.npy"), load("bias.npy"), load("floor.npy"));
    let err = rel_err(&var(&net, "whiten.weight"), &matrix);
    assert!(err < 1e-3, "ZCA matrix off numpy's by {err} (relative)");
    let err = rel_err(&var(&net, "whiten.bias").view([-1]), &bias);
    assert!(err < 1e-3, "ZCA shift off numpy's by {err} (relative)");
    let err = rel_err(&var(&net, "norm.floor"), &floor);
    assert!(err < 1e-3, "norm floor off numpy's by {err} (relative)");
}

/// The features as any network's: the `encode` map, thresholded, then libtorch's pooling.
fn generic(net: &Network, x: &Tensor, encode: Encode, grid: Grid) -> Tensor {
    let z = &net.body.forward_stages(x, BnMode::Eval, 0)[0];
    let pool = |t: &Tensor| match grid {
        Grid::Cells(k) => t.adaptive_avg_pool2d([k, k]).flatten(1, -1),
        Grid::Window { size, stride } => {
            t.avg_pool2d([size, size], [stride, stride], [0, 0], false, true, None).flatten(1, -1)
        }
    };
    match encode {
        Encode::None => pool(z),
        Encode::Soft(a) => Tensor::cat(&[pool(&(z - a).relu()), pool(&(-z - a).relu())], 1),
    }
}

#[test]
fn fast_features_equal_mapping_then_pooling() {
    let imgs = images(40, 5);
    let train = source(&imgs);
    let mut net = patchnet(0.5, 1);
    patches::whiten_patchnet(&mut net, 0.01, &train, &preprocess(), 1).unwrap();
    patches::init_first_layer(&mut net, FirstLayer::Patches, &train, 1, &preprocess()).unwrap();
    // 21 images: one full chunk of 16 and a short one.
    let x = normalised(&imgs.narrow(0, 0, 21));
    let window = |size, stride| Grid::Window { size, stride };
    for (encode, k) in [
        (Encode::Soft(0.2), Grid::Cells(2)),
        (Encode::Soft(0.0), Grid::Cells(3)),
        (Encode::None, Grid::Cells(1)),
        (Encode::Soft(0.1), Grid::Cells(27)),
        (Encode::Soft(0.2), window(5, 3)),
        (Encode::None, window(13, 7)),
    ] {
        let want = tch::no_grad(|| generic(&net, &x, encode, k));
        let spec = FeatureSpec { taps: vec![format!("encode:{k}")], pool: Pool::Avg, pool_size: 1, encode };
        let got = taps::forward_batch(&net, &spec, &x).unwrap();
        assert_eq!(got.size(), want.size(), "{encode} k={k}");
        assert!(rel_err(&got, &want) < 1e-4, "{encode} k={k}: off by {}", rel_err(&got, &want));
        // libtorch's ops (CUDA's path) give the same.
        let body = net.body.pooled_features(&x, encode.threshold(), k).unwrap().unwrap();
        assert!(rel_err(&body, &want) < 1e-4);
        // The check can fail: another threshold gives other features.
        if let Encode::Soft(a) = encode {
            let other = tch::no_grad(|| generic(&net, &x, Encode::Soft(a + 0.05), k));
            assert!(rel_err(&got, &other) > 1e-3, "threshold made no difference");
        }
    }
    let mut by_ops = net;
    let pn = by_ops.body.as_patchnet_mut().unwrap();
    let ops = tch::no_grad(|| pn.pooled_with(&x, Some(0.2), Grid::Cells(2), false).unwrap());
    let shim = tch::no_grad(|| pn.pooled_with(&x, Some(0.2), Grid::Cells(2), true).unwrap());
    assert!(rel_err(&ops, &shim) < 1e-4, "libtorch ops and the shim differ by {}", rel_err(&ops, &shim));
}

#[test]
fn patch_filters_are_whitened_train_patches_of_unit_norm() {
    let imgs = images(30, 9);
    let train = source(&imgs);
    let mut net = patchnet(0.25, 2); // 64 filters
    let random = var(&net, "filters.weight");
    patches::whiten_patchnet(&mut net, 0.1, &train, &preprocess(), 1).unwrap();
    patches::init_first_layer(&mut net, FirstLayer::Patches, &train, 2, &preprocess()).unwrap();
    let f = var(&net, "filters.weight");
    assert_eq!(f.size(), [64, 108]);
    assert!(!f.allclose(&random, 1e-3, 1e-3, false), "filters were not replaced");
    let norms = f.norm_scalaropt_dim(2.0, [1], false);
    assert!(norms.allclose(&Tensor::ones([64], (Kind::Float, tch::Device::Cpu)), 1e-5, 1e-5, false));
    // Filter i is W·(p_i − μ) for the i-th sampled patch, scaled to unit norm.
    let p = patches::sample(&train, 64, 6, 2, &preprocess()).unwrap().flatten(1, -1);
    let v = p.matmul(&var(&net, "whiten.weight").tr()) + var(&net, "whiten.bias").view([1, -1]);
    let want = &v / v.norm_scalaropt_dim(2.0, [1], true);
    assert!(rel_err(&f, &want) < 1e-4, "filters are not the whitened patches");
    // Random filters are uniform directions: unit norm too, and seeded.
    let again = var(&patchnet(0.25, 2), "filters.weight");
    assert!(random.equal(&again));
    assert!(!random.equal(&var(&patchnet(0.25, 3), "filters.weight")));
}

#[test]
fn patchnet_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 10);
    let d = data.to_str().unwrap();
    let args = ["extract", "--data", d, "--device", "cpu", "--arch", "patchnet", "--width-mult", "0.25"];
    let flags = ["--whiten", "patch-zca:0.01", "--first-layer", "patches", "--encode", "soft:0.2"];
    let o = cnnprobe(
        tmp.path(),
        &[&args[..], &flags[..], &["--features", "encode:2", "--format", "npy", "--output", "pn"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let x = Tensor::read_npy(tmp.path().join("pn/train_features.npy")).unwrap();
    assert_eq!(x.size(), [100, 2 * 64 * 4]); // 5 files of 20 train images
    assert_eq!(provenance(&tmp.path().join("pn"), "encode"), "soft:0.2");
    assert_eq!(provenance(&tmp.path().join("pn"), "whiten"), "patch-zca:0.01");
    // Flags that make no sense elsewhere say so before any work.
    for (bad, says) in [
        (&["--arch", "vgg11", "--encode", "soft:0.2"][..], "is for --arch patchnet"),
        (&["--arch", "vgg11", "--whiten", "patch-zca"][..], "use --whiten zca for whole images"),
        (&["--arch", "patchnet", "--stem", "imagenet"][..], "only has the cifar stem"),
        (&["--arch", "patchnet", "--weights", "imagenet"][..], "publishes no ImageNet weights"),
    ] {
        let o = cnnprobe(tmp.path(), &[&["extract", "--data", d, "-o", "bad"][..], bad].concat());
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{bad:?}: {}", stderr(&o));
    }
}
