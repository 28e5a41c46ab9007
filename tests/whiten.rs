//! `--whiten zca`: the statistics against numpy's, and the flag through the binary.
mod common;

use cnnprobe::data::normalize::CIFAR10;
use cnnprobe::data::whiten;
use cnnprobe::data::{Source, Split};
use common::*;
use tch::{Kind, Tensor};

#[test]
fn zca_matches_numpy() {
    let Some(py) = require_python("zca_matches_numpy") else { return };
    let tmp = tempfile::tempdir().unwrap();
    tch::manual_seed(7);
    // 500 RGB 8×8 images (192 dimensions) with correlated pixels, as uint8.
    let base = Tensor::rand([500, 1, 8, 8], (Kind::Float, tch::Device::Cpu));
    let noise = Tensor::rand([500, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
    let images = ((base * 0.7 + noise * 0.3) * 255.0).to_kind(Kind::Uint8);
    images.write_npy(tmp.path().join("images.npy")).unwrap();
    let split = Split { labels: Tensor::zeros([500], (Kind::Int64, tch::Device::Cpu)), images };
    let source = Source::Memory(std::rc::Rc::new(split));
    let zca = whiten::fit(&source, CIFAR10, 0.1, 1).unwrap();
    let script = r#"
import sys, numpy as np
mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
x = np.load("images.npy").astype(np.float64) / 255.0
x = ((x - mean[None, :, None, None]) / std[None, :, None, None]).reshape(len(x), -1)
mu = x.mean(0)
cov = np.cov(x, rowvar=False, bias=True)
lam, u = np.linalg.eigh(cov)
lam = np.clip(lam, 0, None)
w = (u / np.sqrt(lam + 0.1 * lam.mean())) @ u.T
np.save("mean.npy", mu.astype(np.float32)); np.save("matrix.npy", w.astype(np.float32))
"#;
    run_python(&py, tmp.path(), script, &[]);
    let mean = Tensor::read_npy(tmp.path().join("mean.npy")).unwrap();
    let matrix = Tensor::read_npy(tmp.path().join("matrix.npy")).unwrap();
    assert!(zca.mean.squeeze().allclose(&mean, 1e-5, 1e-5, false), "means differ");
    let err = (&zca.matrix - &matrix).abs().max().double_value(&[]);
    let scale = matrix.abs().max().double_value(&[]);
    assert!(err < 1e-4 * scale, "ZCA matrices differ by {err} (largest entry {scale})");
}

#[test]
fn whitened_extraction_runs_and_says_so_and_refuses_a_resized_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 10);
    let d = data.to_str().unwrap();
    let extract = |out: &str, extra: &[&str]| {
        let mut args = vec!["extract", "--data", d, "--device", "cpu", "--output", out, "--whiten", "zca:0.05"];
        args.extend_from_slice(extra);
        cnnprobe(tmp.path(), &args)
    };
    let o = extract("f", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(provenance(&tmp.path().join("f"), "whiten"), "zca:0.05");
    let o = extract("g", &["--input-size", "64"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("whitening needs them equal"), "{}", stderr(&o));
    let o = cnnprobe(tmp.path(), &["extract", "--data", d, "--whiten", "pca"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected zca, zca:EPS, patch-zca or patch-zca:EPS"), "{}", stderr(&o));
}
