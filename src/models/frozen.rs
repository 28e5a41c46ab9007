//! The frozen network a run uses: drawn from the seed, or loaded from pretrained weights.
use super::{pretrained, ModelConfig, Network};
use crate::util::digest::file_sha256;
use anyhow::Result;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use tch::Device;

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

crate::serde_as_str!(WeightsSource);

/// The network of `model` with its weights from `source` (`mirror` replaces torchvision's
/// download URL), moved to `device`.
pub fn build(model: &ModelConfig, source: &WeightsSource, mirror: Option<&str>, device: Device) -> Result<Network> {
    let mut net = match source {
        WeightsSource::Random => Network::build(model)?,
        WeightsSource::Imagenet => {
            let net = Network::build_for_loading(model)?;
            net.load_weights(&pretrained::ensure_checkpoint(model.arch, mirror)?)?;
            net
        }
        WeightsSource::File(path) => {
            let net = Network::build_for_loading(model)?;
            net.load_weights(path)?;
            net
        }
    };
    net.to_device(device);
    Ok(net)
}

/// What identifies the weights by content: the sha256 of a checkpoint or state-dict file,
/// or, for drawn weights, what they are drawn from (the draws are bit-reproducible).
pub fn identity(model: &ModelConfig, source: &WeightsSource, mirror: Option<&str>) -> Result<String> {
    Ok(match source {
        WeightsSource::Random => format!("random:seed={},init={},width={}", model.seed, model.init, model.width_mult),
        WeightsSource::Imagenet => file_sha256(&pretrained::ensure_checkpoint(model.arch, mirror)?)?,
        WeightsSource::File(path) => file_sha256(path).map_err(|e| e.context("--weights"))?,
    })
}
