//! Frozen backbones with torchvision-exact structure, names and initialisation.
pub mod init;
pub mod layers;
pub mod resnet;
pub mod weights;

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;
use tch::{nn, Device, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
        }
    }
}

/// `imagenet`: torchvision's 7×7/2 conv + 3×3/2 max-pool. `cifar`: a 3×3/1 conv and no
/// max-pool (He et al. 2016), which keeps 32×32 inputs at 32×32 into layer1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    Imagenet,
    Cifar,
}

impl Stem {
    pub fn name(self) -> &'static str {
        match self {
            Stem::Imagenet => "imagenet",
            Stem::Cifar => "cifar",
        }
    }
}

static SEEDED_DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A frozen network: its own VarStore (no optimiser ever sees it) and the model.
pub struct Network {
    pub vs: nn::VarStore,
    pub model: resnet::ResNet,
}

impl Network {
    /// Builds `arch` with weights drawn on the CPU from `seed` (so a seed gives the same
    /// network on every device), then moves it to `device` and freezes it.
    pub fn random(arch: Arch, stem: Stem, seed: u64, device: Device) -> Result<Network> {
        let mut vs = nn::VarStore::new(Device::Cpu);
        // libtorch's generator is global: hold the lock from seeding to the last draw so
        // concurrent builds (tests, library users) cannot interleave their draws.
        let _draws = SEEDED_DRAWS.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed as i64);
        let root = vs.root();
        use resnet::BlockKind::{Basic, Bottleneck};
        let (kind, blocks) = match arch {
            Arch::Resnet18 => (Basic, [2, 2, 2, 2]),
            Arch::Resnet34 => (Basic, [3, 4, 6, 3]),
            Arch::Resnet50 => (Bottleneck, [3, 4, 6, 3]),
            Arch::Resnet101 => (Bottleneck, [3, 4, 23, 3]),
            Arch::Resnet152 => (Bottleneck, [3, 8, 36, 3]),
        };
        let model = resnet::ResNet::new(&root, kind, blocks, stem);
        model.init_torchvision(false);
        vs.freeze();
        vs.set_device(device);
        Ok(Network { vs, model })
    }

    pub fn feature_dim(&self) -> i64 {
        self.model.feature_dim()
    }

    /// Penultimate features: global average pool of the last stage → (N, feature_dim).
    pub fn features(&self, x: &Tensor) -> Tensor {
        self.model
            .feature_map(x)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
    }
}
