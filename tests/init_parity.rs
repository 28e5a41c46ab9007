//! A seed gives torchvision's network bit for bit: `Network::random(arch, imagenet, S)`
//! equals `torch.manual_seed(S); torchvision.models.<arch>()`. Needs the set-up venv
//! (CNNPROBE_PYTHON, set by scripts/test.sh); skipped cleanly without it.
mod common;

use cnnprobe::models::{Arch, Network, Stem};
use std::process::Command;

fn check(arch: Arch, seed: u64) {
    let Some(py) = common::python() else {
        eprintln!("skipped: CNNPROBE_PYTHON not set (run through scripts/test.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("sd.npz");
    let script = format!(
        "import torch, torchvision, numpy as np\n\
         torch.manual_seed({seed})\n\
         m = torchvision.models.{name}()\n\
         np.savez(r'{path}', **{{k: v.numpy() for k, v in m.state_dict().items()}})\n",
        name = arch.name(),
        path = npz.display()
    );
    let out = Command::new(py).arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = tch::Tensor::read_npz(&npz).unwrap();

    let net = Network::random(arch, Stem::Imagenet, seed, tch::Device::Cpu).unwrap();
    let ours = net.vs.variables();
    assert_eq!(ours.len(), reference.len(), "state-dict key count");
    for (name, want) in &reference {
        let got = ours.get(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(got.size(), want.size(), "{name} shape");
        let diff = (got.to_kind(tch::Kind::Double) - want.to_kind(tch::Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(diff, 0.0, "{name} differs from torchvision by {diff}");
    }
    // Not vacuous: another seed gives other weights.
    let other = Network::random(arch, Stem::Imagenet, seed + 1, tch::Device::Cpu).unwrap();
    let w = other.vs.variables()["conv1.weight"].shallow_clone();
    assert!(!w.equal(
        &reference
            .iter()
            .find(|(n, _)| n == "conv1.weight")
            .unwrap()
            .1
    ));
}

#[test]
fn resnet18_seed0_equals_torchvision() {
    check(Arch::Resnet18, 0);
}

#[test]
fn resnet50_seed3_equals_torchvision() {
    check(Arch::Resnet50, 3);
}
