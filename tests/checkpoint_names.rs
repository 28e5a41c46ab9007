//! The checkpoint file names and URLs cnnprobe uses are torchvision's own: compared with the
//! installed torchvision's `*_Weights.IMAGENET1K_V1.url` for every architecture it publishes.
mod common;

use clap::ValueEnum;
use cnnprobe::models::pretrained::{checkpoint_file, TORCHVISION_BASE};
use cnnprobe::models::Arch;

const URLS: &str = "
import torchvision.models as m
for a in m.list_models(module=m):
    if a.startswith(('resnet', 'vgg')) and not a.startswith('resnext'):
        print(a, m.get_model_weights(a).IMAGENET1K_V1.url)
";

#[test]
fn checkpoint_names_are_torchvisions() {
    let Some(py) = common::require_python("checkpoint_names_are_torchvisions") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stdout = common::run_python(&py, dir.path(), URLS, &[]);
    let mut want: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let (a, u) = l.split_once(' ').unwrap();
            (a.to_string(), u.to_string())
        })
        .collect();
    want.sort();
    let mut got: Vec<(String, String)> = Arch::value_variants()
        .iter()
        .filter_map(|&a| Some((a.name().to_string(), format!("{TORCHVISION_BASE}/{}", checkpoint_file(a)?))))
        .collect();
    got.sort();
    assert_eq!(got.len(), 13, "cnnprobe names checkpoints for {got:?}");
    assert_eq!(got, want, "cnnprobe's checkpoint URLs (left) vs torchvision's (right)");
    for a in Arch::value_variants() {
        assert_eq!(checkpoint_file(*a).is_some(), a.in_torchvision(), "{}", a.name());
    }
}
