//! Datasets: images as uint8 NCHW tensors on the CPU plus int64 labels. Conversion to
//! float and normalisation happen batch by batch on the extraction device.
pub mod cifar;
pub mod download;
pub mod folder;
pub mod normalize;
pub mod source;
pub mod split;

pub use normalize::InputNorm;
pub use source::{DataConfig, DatasetName, LabelSet};

use tch::Tensor;

/// One split of a dataset.
pub struct Split {
    /// uint8, shape (N, 3, H, W).
    pub images: Tensor,
    /// int64, shape (N,).
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dataset with its standard train/test split.
pub struct Dataset {
    pub name: String,
    pub class_names: Vec<String>,
    pub train: Split,
    pub test: Split,
}

impl Dataset {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}
