//! torchvision's ResNet family (v1.5: the stride sits on the bottleneck's 3×3 conv), with
//! torchvision's state-dict names and initialisation, plus the CIFAR stem.
use super::init;
use super::layers::{BatchNorm2d, Conv2d, Linear, Site};
use super::Stem;
use tch::{nn, Tensor};

/// BasicBlock (ResNet-18/34) or Bottleneck (ResNet-50/101/152).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

struct Block {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm2d>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    /// Construction order matters for the RNG: torchvision's `_make_layer` builds the
    /// downsample before the block itself.
    fn new(
        p: &nn::Path,
        kind: BlockKind,
        c_in: i64,
        planes: i64,
        stride: i64,
        built: &mut Vec<Site>,
    ) -> Self {
        let c_out = planes * kind.expansion();
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let conv = Conv2d::new(p / "downsample" / "0", c_in, c_out, 1, stride, 0, false);
            built.push(conv.site());
            (conv, BatchNorm2d::new(p / "downsample" / "1", c_out))
        });
        let shapes: Vec<(i64, i64, i64, i64, i64)> = match kind {
            // (c_in, c_out, kernel, stride, padding)
            BlockKind::Basic => vec![(c_in, planes, 3, stride, 1), (planes, planes, 3, 1, 1)],
            BlockKind::Bottleneck => {
                vec![
                    (c_in, planes, 1, 1, 0),
                    (planes, planes, 3, stride, 1),
                    (planes, c_out, 1, 1, 0),
                ]
            }
        };
        let (mut convs, mut bns) = (Vec::new(), Vec::new());
        for (i, (ci, co, k, s, pad)) in shapes.into_iter().enumerate() {
            let conv = Conv2d::new(p / format!("conv{}", i + 1), ci, co, k, s, pad, false);
            built.push(conv.site());
            convs.push(conv);
            bns.push(BatchNorm2d::new(p / format!("bn{}", i + 1), co));
        }
        Block {
            convs,
            bns,
            downsample,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            y = bn.forward(&conv.forward(&y));
            if i != last {
                y = y.relu_();
            }
        }
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x)),
            None => x.shallow_clone(),
        };
        (y + shortcut).relu_()
    }

    /// Registration order, as `nn.Module.modules()` walks it: conv1, bn1, conv2, …, downsample.
    fn sites(&self, out: &mut Vec<Site>) {
        for (conv, bn) in self.convs.iter().zip(&self.bns) {
            out.push(conv.site());
            out.push(bn.site());
        }
        if let Some((conv, bn)) = &self.downsample {
            out.push(conv.site());
            out.push(bn.site());
        }
    }

    fn last_bn(&self) -> &BatchNorm2d {
        self.bns.last().expect("a block has batch norms")
    }
}

pub struct ResNet {
    stem: Stem,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Block>>,
    fc: Linear,
    feature_dim: i64,
    /// Sites in constructor order (for PyTorch's reset_parameters draws).
    built: Vec<Site>,
}

impl ResNet {
    /// `blocks`: blocks per stage, e.g. [2, 2, 2, 2] for ResNet-18. The classifier keeps
    /// torchvision's 1000 outputs so state dicts and RNG streams match torchvision's default.
    pub fn new(p: &nn::Path, kind: BlockKind, blocks: [usize; 4], stem: Stem) -> Self {
        let mut built = Vec::new();
        let conv1 = match stem {
            Stem::Imagenet => Conv2d::new(p / "conv1", 3, 64, 7, 2, 3, false),
            // He et al.'s CIFAR stem: 3×3 stride 1, and no max-pool in forward.
            Stem::Cifar => Conv2d::new(p / "conv1", 3, 64, 3, 1, 1, false),
        };
        built.push(conv1.site());
        let bn1 = BatchNorm2d::new(p / "bn1", 64);
        let mut c_in = 64;
        let mut layers = Vec::new();
        for (i, &n) in blocks.iter().enumerate() {
            let planes = 64 << i;
            let lp = p / format!("layer{}", i + 1);
            let mut stage = Vec::new();
            for b in 0..n {
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                stage.push(Block::new(
                    &(&lp / b),
                    kind,
                    c_in,
                    planes,
                    stride,
                    &mut built,
                ));
                c_in = planes * kind.expansion();
            }
            layers.push(stage);
        }
        let fc = Linear::new(p / "fc", c_in, 1000);
        built.push(fc.site());
        ResNet {
            stem,
            conv1,
            bn1,
            layers,
            fc,
            feature_dim: c_in,
            built,
        }
    }

    /// torchvision's initialisation: reset_parameters in constructor order, then
    /// kaiming-normal(fan_out, relu) on every conv and BN 1/0 in module order; fc keeps
    /// its PyTorch default. `zero_init_residual` zeroes each block's last BN weight.
    pub fn init_torchvision(&self, zero_init_residual: bool) {
        self.built.iter().for_each(init::pytorch_reset);
        for site in self.sites() {
            match site.kind {
                super::layers::LayerKind::Conv => init::kaiming_normal_fan_out(&site.weight),
                super::layers::LayerKind::BatchNorm => init::batchnorm_identity(&site),
                super::layers::LayerKind::Linear => {}
            }
        }
        if zero_init_residual {
            self.layers
                .iter()
                .flatten()
                .for_each(|b| init::zero(&b.last_bn().weight));
        }
    }

    /// Every parameterised layer in `modules()` order.
    pub fn sites(&self) -> Vec<Site> {
        let mut out = vec![self.conv1.site(), self.bn1.site()];
        self.layers.iter().flatten().for_each(|b| b.sites(&mut out));
        out.push(self.fc.site());
        out
    }

    pub fn feature_dim(&self) -> i64 {
        self.feature_dim
    }

    /// The layer4 feature map (before pooling).
    pub fn feature_map(&self, x: &Tensor) -> Tensor {
        let mut y = self.bn1.forward(&self.conv1.forward(x)).relu_();
        if self.stem == Stem::Imagenet {
            y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in self.layers.iter().flatten() {
            y = block.forward(&y);
        }
        y
    }

    /// Logits of the 1000-way classifier (used by parity tests against torchvision).
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.fc.forward(
            &self
                .feature_map(x)
                .adaptive_avg_pool2d([1, 1])
                .flatten(1, -1),
        )
    }
}
