//! One validated description of a run. It is built from the flags before any work starts,
//! written beside every result (config.json) and flattened into the summary row.
use crate::features::{BatchSize, FeatureSpec, Precision};
use crate::models::ModelConfig;
use crate::probe::ProbeSettings;
use clap::ValueEnum;
use serde::{Serialize, Serializer};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    Cifar10,
    Cifar100,
    /// torchvision ImageFolder layout: DIR/train/<class>/*, DIR/test/<class>/* (JPEG/PNG).
    Folder,
}

/// CIFAR-100 label set (ignored for CIFAR-10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSet {
    Fine,
    Coarse,
}

/// `--bn`: what a random network's BatchNorm statistics are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnSetting {
    /// Running stats 0/1 as initialised: BN is the affine identity at init.
    Eval,
    /// Recompute running mean/var from N training images (no labels, no gradients).
    Calibrate(usize),
}

impl FromStr for BnSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "eval" => Ok(BnSetting::Eval),
            _ => match s.strip_prefix("calibrate:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Ok(BnSetting::Calibrate(n)),
                _ => Err(format!("'{s}': use eval or calibrate:N with N > 0 images")),
            },
        }
    }
}

impl fmt::Display for BnSetting {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BnSetting::Eval => write!(f, "eval"),
            BnSetting::Calibrate(n) => write!(f, "calibrate:{n}"),
        }
    }
}

impl Serialize for BnSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `--weights`: random draws, torchvision's ImageNet checkpoint, or a state-dict file.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightsSource {
    Random,
    Imagenet,
    File(PathBuf),
}

impl FromStr for WeightsSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "random" => WeightsSource::Random,
            "imagenet" => WeightsSource::Imagenet,
            "" => return Err("use random, imagenet or a .pth/.pt/.safetensors path".into()),
            path => WeightsSource::File(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for WeightsSource {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            WeightsSource::Random => write!(f, "random"),
            WeightsSource::Imagenet => write!(f, "imagenet"),
            WeightsSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Serialize for WeightsSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which per-channel statistics normalise the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputNorm {
    /// The dataset's own train mean/std (random networks).
    Dataset,
    /// ImageNet's, as every torchvision pretrained preset uses.
    Imagenet,
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
    /// Keep only the first N images of each split.
    pub limit: Option<usize>,
    /// Folder datasets: skip unreadable images with a warning.
    pub skip_bad_images: bool,
    /// Folder datasets: resize to this size at load time (when --input-size was given).
    pub folder_size: Option<usize>,
}

impl DataConfig {
    pub fn dataset_name(&self) -> &'static str {
        match self.dataset {
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
            DatasetName::Folder => "folder",
        }
    }

    /// "fine"/"coarse" for CIFAR-100, empty for CIFAR-10.
    pub fn labels_name(&self) -> &'static str {
        match (self.dataset, self.labels) {
            (DatasetName::Cifar10 | DatasetName::Folder, _) => "",
            (_, LabelSet::Fine) => "fine",
            (_, LabelSet::Coarse) => "coarse",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub weights: WeightsSource,
    /// Base URL for torchvision checkpoints instead of download.pytorch.org.
    pub weights_mirror: Option<String>,
    /// Images are resized (bilinear) to this square size on the device; 32 keeps CIFAR native.
    pub input_size: i64,
    pub input_norm: InputNorm,
    pub bn: BnSetting,
    pub fold_bn: bool,
    /// Continue with NaN/Inf, all-zero or constant features (warn instead of failing).
    pub allow_degenerate: bool,
    pub features: FeatureSpec,
    /// Also extract the horizontally flipped train images (extra probe training rows).
    pub hflip: bool,
    /// Score validation and test images on both views (needs `hflip`).
    pub hflip_test: bool,
    pub device: String,
    pub threads: usize,
    pub batch_size: BatchSize,
    pub precision: Precision,
    pub val_fraction: f64,
    pub probe: ProbeSettings,
    pub save_head: Option<PathBuf>,
    /// Feature cache directory; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Run directory; `None` means results/runs/<timestamp>-<short name>.
    pub out: Option<PathBuf>,
    pub summary: PathBuf,
    /// Free-text label for the summary row.
    pub tag: Option<String>,
    /// `--preset` the flags came from, if any.
    pub preset: Option<String>,
}

impl RunConfig {
    /// A short, readable name for directories: e.g. `cifar10-resnet18-cifar-s0`.
    pub fn short_name(&self) -> String {
        let ds = match (self.data.dataset, self.data.labels) {
            (DatasetName::Cifar100, LabelSet::Coarse) => "cifar100c",
            _ => self.data.dataset_name(),
        };
        format!("{ds}-{}-{}-s{}", self.model.arch.name(), self.model.stem.name(), self.model.seed)
    }
}
