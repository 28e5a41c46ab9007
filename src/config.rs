//! One validated description of a run. It is built from the flags before any work starts,
//! written beside every result (config.json) and flattened into the summary row.
use crate::models::{Arch, Stem};
use crate::probe::ProbeSettings;
use clap::ValueEnum;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    Cifar10,
    Cifar100,
}

/// CIFAR-100 label set (ignored for CIFAR-10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSet {
    Fine,
    Coarse,
}

/// How the random weights are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// torchvision's own formulas (ResNet: conv kaiming-normal fan_out relu, BN 1/0,
    /// fc PyTorch default).
    Torchvision,
}

/// Where the data comes from.
#[derive(Clone, Debug, Serialize)]
pub struct DataConfig {
    pub dataset: DatasetName,
    pub labels: LabelSet,
    /// An extracted dataset folder (or its parent); `None` means download into `data_dir`.
    pub data: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub mirror: Option<String>,
    pub archive_md5: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub data: DataConfig,
    pub arch: Arch,
    pub stem: Stem,
    pub init: InitScheme,
    /// Always "random" until pretrained weights land.
    pub weights: String,
    pub seed: u64,
    pub device: String,
    pub threads: usize,
    pub batch_size: usize,
    pub pool: String,
    pub normalize: String,
    pub optimizer: String,
    pub schedule: String,
    pub val_fraction: f64,
    pub probe: ProbeSettings,
    /// Run directory; `None` means results/runs/<timestamp>-<short name>.
    pub out: Option<PathBuf>,
    pub summary: PathBuf,
}

impl RunConfig {
    /// A short, readable name for directories: e.g. `cifar10-resnet18-cifar-s0`.
    pub fn short_name(&self) -> String {
        let ds = match self.data.dataset {
            DatasetName::Cifar10 => "cifar10".to_string(),
            DatasetName::Cifar100 => format!(
                "cifar100{}",
                if self.data.labels == LabelSet::Coarse {
                    "c"
                } else {
                    ""
                }
            ),
        };
        format!(
            "{ds}-{}-{}-s{}",
            self.arch.name(),
            self.stem.name(),
            self.seed
        )
    }

    pub fn dataset_name(&self) -> &'static str {
        match self.data.dataset {
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
        }
    }
}
