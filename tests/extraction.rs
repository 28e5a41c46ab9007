//! Extraction settings: determinism, CPU fallbacks of the CUDA-oriented options
//! (auto batch size, reduced precision), and the out-of-memory back-off.
mod common;

use cnnprobe::features::extract::with_backoff;
use common::*;
use std::path::Path;

fn extract(cwd: &Path, data: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args =
        vec!["extract", "--data", data.to_str().unwrap(), "--device", "cpu", "--threads", "2", "--output", out];
    args.extend_from_slice(extra);
    cnnprobe(cwd, &args)
}

fn features(cwd: &Path, dir: &str) -> tch::Tensor {
    cnnprobe::features::store::read(&cwd.join(dir)).unwrap().train.x
}

#[test]
fn same_seed_gives_bit_identical_features() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 10);
    for out in ["a", "b"] {
        let o = extract(tmp.path(), &data, out, &["--arch", "resnet18", "--stem", "cifar", "--seed", "4"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for f in ["train_features.npy", "test_features.npy"] {
        let a = std::fs::read(tmp.path().join("a").join(f)).unwrap();
        let b = std::fs::read(tmp.path().join("b").join(f)).unwrap();
        assert!(a == b, "{f} differs between two runs with the same seed");
    }
}

#[test]
fn auto_batch_and_bf16_run_on_cpu_fp16_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 10);
    let o = extract(tmp.path(), &data, "fixed", &["--batch-size", "32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = extract(tmp.path(), &data, "auto", &["--batch-size", "auto"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Batch size changes nothing but speed.
    let (fixed, auto) = (features(tmp.path(), "fixed"), features(tmp.path(), "auto"));
    assert!(fixed.allclose(&auto, 1e-5, 1e-5, false));

    let o = extract(tmp.path(), &data, "bf16", &["--precision", "bf16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bf16 = features(tmp.path(), "bf16");
    assert_eq!(bf16.kind(), tch::Kind::Float, "features are stored as float32");
    let rel = ((&bf16 - &fixed).abs().max() / fixed.abs().max()).double_value(&[]);
    assert!(rel > 0.0 && rel < 0.1, "bf16 vs fp32 max relative difference {rel}");

    let o = extract(tmp.path(), &data, "fp16", &["--precision", "fp16"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).trim_end(), "error: --precision fp16 needs CUDA; use bf16 or fp32 on the CPU");
}

#[test]
fn backoff_halves_on_out_of_memory_only() {
    let mut tried = Vec::new();
    let (v, used) = with_backoff(1024, |n| {
        tried.push(n);
        if n > 100 {
            Err("CUDA out of memory. Tried to allocate 2.00 GiB".to_string())
        } else {
            Ok(n * 2)
        }
    })
    .unwrap();
    assert_eq!((v, used), (128, 64));
    assert_eq!(tried, [1024, 512, 256, 128, 64]);
    let err = with_backoff(64, |_| Err::<(), _>("shape mismatch".to_string())).unwrap_err();
    assert_eq!(err.to_string(), "extraction failed at batch size 64: shape mismatch");
    let err = with_backoff(2, |_| Err::<(), _>("out of memory".to_string())).unwrap_err();
    assert!(err.to_string().contains("batch size 1"));
}
