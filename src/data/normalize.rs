//! Per-channel input normalisation constants.

/// Mean and std per RGB channel, on the 0..1 scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelStats {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl ChannelStats {
    /// (scale, shift), each (1, 3, 1, 1) float32 on the CPU, with which a uint8 batch x
    /// becomes its normalised value x·scale + shift = (x/255 − mean)/std.
    pub fn u8_affine(&self) -> (tch::Tensor, tch::Tensor) {
        let scale: Vec<f32> = self.std.iter().map(|s| (1.0 / (255.0 * s)) as f32).collect();
        let shift: Vec<f32> = self.mean.iter().zip(self.std).map(|(m, s)| (-m / s) as f32).collect();
        let t = |v: &[f32]| tch::Tensor::from_slice(v).view([1, 3, 1, 1]);
        (t(&scale), t(&shift))
    }
}

/// CIFAR-10 train set: per-channel mean and the *population* std over all 50k×32×32 pixels
/// (computed from the official train batches; the often-quoted (0.2023, 0.1994, 0.2010) is
/// the mean of per-image stds, which under-states the spread).
pub const CIFAR10: ChannelStats = ChannelStats { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] };

/// CIFAR-100 train set, computed the same way as CIFAR10.
pub const CIFAR100: ChannelStats = ChannelStats { mean: [0.5071, 0.4865, 0.4409], std: [0.2673, 0.2564, 0.2762] };

/// ImageNet constants used by every torchvision pretrained preset.
pub const IMAGENET: ChannelStats = ChannelStats { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

/// Which per-channel statistics normalise the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputNorm {
    /// The dataset's own train mean/std (random networks).
    Dataset,
    /// ImageNet's, as every torchvision pretrained preset uses.
    Imagenet,
}
