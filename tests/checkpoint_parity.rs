//! Acceptance 1 of issue 12: a torchvision state dict saved by torch.save in the legacy
//! container (`_use_new_zipfile_serialization=False`, the format of torchvision's VGG
//! downloads) and in the zip container loads through the real binary's `--weights PATH` and
//! reproduces torchvision's features to 1e-4 relative. Fixtures (≈0.5 GB for VGG) are made
//! at test time by scripts/checkpoint_fixture.py in a temp dir, one architecture per test, and
//! each file is deleted once read.
mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use tch::Tensor;

const LIMIT: &str = "4";

fn max_rel(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    let scale = want.abs().max().double_value(&[]);
    assert!(scale > 0.0, "reference features are all zero");
    (got - want).abs().max().double_value(&[]) / scale
}

fn check(arch: &str, fc2: bool) {
    let test = format!("{arch}_checkpoints_match_torchvision");
    let Some(py) = require_python(&test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 4, 4);
    let fixture = tmp.path().join("fixture");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/checkpoint_fixture.py");
    let mut cmd = Command::new(py);
    cmd.arg(script).arg(arch).arg(&fixture).arg("--data").arg(&data).args(["--limit", LIMIT]);
    if fc2 {
        cmd.arg("--fc2");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "fixture: {}", String::from_utf8_lossy(&out.stderr));

    for (format, head) in [("legacy", &[0x80u8, 0x02][..]), ("zip", b"PK")] {
        let pth = fixture.join(format!("{format}.pth"));
        let bytes = std::fs::File::open(&pth).unwrap();
        let mut first = [0u8; 2];
        std::io::Read::read_exact(&mut &bytes, &mut first).unwrap();
        assert_eq!(first, head, "{format}.pth is not in the {format} container");
        let mut args = vec![
            "extract",
            "--data",
            data.to_str().unwrap(),
            "--arch",
            arch,
            "--weights",
            pth.to_str().unwrap(),
            "--input-size",
            "32",
            "--input-norm",
            "imagenet",
            "--limit",
            LIMIT,
            "--device",
            "cpu",
            "--threads",
            "2",
            "--output",
            format,
        ];
        if fc2 {
            args.extend(["--features", "fc2"]);
        }
        let o = cnnprobe(tmp.path(), &args);
        assert!(o.status.success(), "{arch} {format}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("MB from {}", pth.display())), "{}", stderr(&o));
        std::fs::remove_file(&pth).unwrap();
        for split in ["train", "test"] {
            let got = Tensor::read_npy(tmp.path().join(format).join(format!("{split}_features.npy"))).unwrap();
            let want = Tensor::read_npy(fixture.join(format!("expected_{split}.npy"))).unwrap();
            let rel = max_rel(&got, &want);
            assert!(rel <= 1e-4, "{arch} {format} {split}: features differ by {rel:e} (relative)");
        }
    }
}

#[test]
fn resnet18_checkpoints_match_torchvision() {
    check("resnet18", false);
}

#[test]
fn resnet50_checkpoints_match_torchvision() {
    check("resnet50", false);
}

/// fc2 features, so the classifier's weights (most of the file) are checked too.
#[test]
fn vgg11_checkpoints_match_torchvision() {
    check("vgg11", true);
}

#[test]
fn vgg16_bn_checkpoints_match_torchvision() {
    check("vgg16_bn", true);
}
