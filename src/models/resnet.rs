//! torchvision's ResNet family (v1.5: the stride sits on the bottleneck's 3×3 conv) with
//! torchvision's state-dict names, plus the CIFAR stem; and He et al.'s CIFAR ResNets
//! (resnet20…110), which share the same blocks.
use super::init::Family;
use super::layers::{channels_last, BatchNorm2d, BnMode, Conv2d, ConvBn, Linear, Site};
use super::{Backbone, Stem};
use tch::{nn, Tensor};

/// BasicBlock (ResNet-18/34, CIFAR ResNets) or Bottleneck (ResNet-50/101/152).
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

/// How a block's shortcut changes shape when the stage does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortcut {
    /// torchvision: a 1×1 strided conv + BN ("option B").
    Projection,
    /// He et al.'s CIFAR option A: stride-2 subsampling and zero-padded channels, no parameters.
    ZeroPad,
}

enum Downsample {
    None,
    Projection(ConvBn),
    ZeroPad { stride: i64, extra: i64 },
}

struct Block {
    units: Vec<ConvBn>,
    downsample: Downsample,
}

impl Block {
    /// Construction order matters for the RNG: torchvision's `_make_layer` builds the
    /// downsample before the block itself.
    fn new(
        p: &nn::Path,
        kind: BlockKind,
        shortcut: Shortcut,
        c_in: i64,
        planes: i64,
        stride: i64,
        built: &mut Vec<Site>,
    ) -> Self {
        let c_out = planes * kind.expansion();
        let downsample = match (stride != 1 || c_in != c_out, shortcut) {
            (false, _) => Downsample::None,
            (true, Shortcut::ZeroPad) => Downsample::ZeroPad { stride, extra: c_out - c_in },
            (true, Shortcut::Projection) => {
                let conv = Conv2d::new(p / "downsample" / "0", c_in, c_out, 1, stride, 0, false);
                built.push(conv.site());
                Downsample::Projection(ConvBn::new(conv, Some(BatchNorm2d::new(p / "downsample" / "1", c_out))))
            }
        };
        // (c_in, c_out, kernel, stride, padding) of each conv.
        let shapes: Vec<(i64, i64, i64, i64, i64)> = match kind {
            BlockKind::Basic => vec![(c_in, planes, 3, stride, 1), (planes, planes, 3, 1, 1)],
            BlockKind::Bottleneck => {
                vec![(c_in, planes, 1, 1, 0), (planes, planes, 3, stride, 1), (planes, c_out, 1, 1, 0)]
            }
        };
        let units = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (ci, co, k, s, pad))| {
                let conv = Conv2d::new(p / format!("conv{}", i + 1), ci, co, k, s, pad, false);
                built.push(conv.site());
                ConvBn::new(conv, Some(BatchNorm2d::new(p / format!("bn{}", i + 1), co)))
            })
            .collect();
        Block { units, downsample }
    }

    /// `x_shared`: someone else holds `x` (a tapped stage output), so a fused block must
    /// not write its output into `x`'s memory.
    fn forward(&self, x: &Tensor, mode: BnMode, x_shared: bool) -> Tensor {
        let (last, rest) = self.units.split_last().expect("a block has convs");
        let mut y = x.shallow_clone();
        for unit in rest {
            y = unit.forward_relu(&y, mode);
        }
        let fused = last.is_fused(mode);
        let shortcut = match &self.downsample {
            Downsample::None if fused && x_shared => x.copy(),
            Downsample::None => x.shallow_clone(),
            Downsample::Projection(unit) => unit.forward(x, mode),
            Downsample::ZeroPad { stride, extra } => {
                let s = x.slice(2, 0, None, *stride).slice(3, 0, None, *stride);
                let s = s.constant_pad_nd([0, 0, 0, 0, extra / 2, extra - extra / 2]);
                // The fused add reads the shortcut in the conv output's (channels-last) layout.
                if fused {
                    channels_last(&s)
                } else {
                    s
                }
            }
        };
        last.forward_add_relu(&y, mode, shortcut)
    }

    /// Registration order, as `nn.Module.modules()` walks it: conv1, bn1, conv2, …, downsample.
    fn sites(&self, out: &mut Vec<Site>) {
        self.units.iter().for_each(|u| u.sites(out));
        if let Downsample::Projection(u) = &self.downsample {
            u.sites(out);
        }
    }

    fn units_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        let ds = match &mut self.downsample {
            Downsample::Projection(u) => Some(u),
            _ => None,
        };
        self.units.iter_mut().chain(ds)
    }
}

/// Shape of a ResNet: torchvision's four stages of 64…512 planes, or a CIFAR ResNet's
/// three stages of 16/32/64.
pub struct ResNetSpec {
    pub kind: BlockKind,
    pub blocks: Vec<usize>,
    pub width: i64,
    pub stem: Stem,
    pub shortcut: Shortcut,
    pub num_classes: i64,
}

pub struct ResNet {
    stem: Stem,
    conv1: ConvBn,
    layers: Vec<Vec<Block>>,
    fc: Linear,
    feature_dim: i64,
    /// Sites in constructor order (for PyTorch's reset_parameters draws).
    built: Vec<Site>,
}

impl ResNet {
    pub fn new(p: &nn::Path, spec: &ResNetSpec) -> Self {
        let mut built = Vec::new();
        let w = spec.width;
        let conv1 = match spec.stem {
            Stem::Imagenet => Conv2d::new(p / "conv1", 3, w, 7, 2, 3, false),
            // He et al.'s CIFAR stem: 3×3 stride 1, and no max-pool in forward.
            Stem::Cifar => Conv2d::new(p / "conv1", 3, w, 3, 1, 1, false),
        };
        built.push(conv1.site());
        let conv1 = ConvBn::new(conv1, Some(BatchNorm2d::new(p / "bn1", w)));
        let mut c_in = w;
        let mut layers = Vec::new();
        for (i, &n) in spec.blocks.iter().enumerate() {
            let planes = w << i;
            let lp = p / format!("layer{}", i + 1);
            let mut stage = Vec::new();
            for b in 0..n {
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                stage.push(Block::new(&(&lp / b), spec.kind, spec.shortcut, c_in, planes, stride, &mut built));
                c_in = planes * spec.kind.expansion();
            }
            layers.push(stage);
        }
        let fc = Linear::new(p / "fc", c_in, spec.num_classes);
        built.push(fc.site());
        ResNet { stem: spec.stem, conv1, layers, fc, feature_dim: c_in, built }
    }

    pub fn feature_dim(&self) -> i64 {
        self.feature_dim
    }
}

impl Backbone for ResNet {
    fn family(&self) -> Family {
        Family::ResNet
    }

    fn stage_names(&self) -> Vec<String> {
        (1..=self.layers.len()).map(|i| format!("layer{i}")).collect()
    }

    fn forward_stages(&self, x: &Tensor, mode: BnMode, until: usize) -> Vec<Tensor> {
        // oneDNN's fused convs keep channels-last from the input on (dense, no reorders).
        let x = if self.conv1.is_fused(mode) { channels_last(x) } else { x.shallow_clone() };
        let mut y = self.conv1.forward_relu(&x, mode);
        if self.stem == Stem::Imagenet {
            y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        let mut outs = Vec::new();
        for stage in self.layers.iter().take(until + 1) {
            for (i, block) in stage.iter().enumerate() {
                // A stage's input is the previous stage's output, kept in `outs`.
                y = block.forward(&y, mode, i == 0 && !outs.is_empty());
            }
            outs.push(y.shallow_clone());
        }
        outs
    }

    fn logits(&self, x: &Tensor) -> Tensor {
        let last = self.forward_stages(x, BnMode::Eval, self.layers.len() - 1).pop().expect("stages");
        self.fc.forward(&last.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }

    fn built_sites(&self) -> &[Site] {
        &self.built
    }

    fn module_sites(&self) -> Vec<Site> {
        let mut out = Vec::new();
        self.conv1.sites(&mut out);
        self.layers.iter().flatten().for_each(|b| b.sites(&mut out));
        out.push(self.fc.site());
        out
    }

    fn units_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut v = vec![&mut self.conv1];
        for block in self.layers.iter_mut().flatten() {
            v.extend(block.units_mut());
        }
        v
    }
}
