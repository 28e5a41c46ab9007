//! torchvision's VGG (configurations A, B, D, E = vgg11/13/16/19, with or without BN),
//! with torchvision's state-dict names (`features.N`, `classifier.0/3/6`).
use super::init::Family;
use super::layers::{channels_last, BatchNorm2d, BnMode, Conv2d, ConvBn, Linear, Site};
use super::{scaled, Backbone, Stem};
use tch::{nn, Tensor};

/// Channels per conv, grouped into the five blocks that each end in a 2×2 max-pool.
pub fn config(depth: usize) -> Vec<Vec<i64>> {
    match depth {
        11 => vec![vec![64], vec![128], vec![256, 256], vec![512, 512], vec![512, 512]],
        13 => vec![vec![64, 64], vec![128, 128], vec![256, 256], vec![512, 512], vec![512, 512]],
        16 => vec![vec![64, 64], vec![128, 128], vec![256, 256, 256], vec![512, 512, 512], vec![512, 512, 512]],
        19 => vec![vec![64, 64], vec![128, 128], vec![256; 4], vec![512; 4], vec![512; 4]],
        _ => panic!("VGG depth {depth} is not one of 11, 13, 16, 19"),
    }
}

pub struct Vgg {
    blocks: Vec<Vec<ConvBn>>,
    stem: Stem,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    built: Vec<Site>,
}

impl Vgg {
    /// `stem`: `imagenet` keeps torchvision's adaptive 7×7 average pool before the
    /// classifier (so fc1 takes 512·7·7); `cifar` drops it (fc1 takes the 512·1·1 map of a
    /// 32×32 input). `width_mult` scales every conv's channels (1 = torchvision's).
    pub fn new(p: &nn::Path, depth: usize, batch_norm: bool, stem: Stem, num_classes: i64, width_mult: f64) -> Self {
        let f = p / "features";
        let mut index = 0;
        let mut c_in = 3;
        let mut built = Vec::new();
        let mut blocks = Vec::new();
        for block in config(depth) {
            let mut units = Vec::new();
            for c in block {
                let c = scaled(c, width_mult);
                let conv = Conv2d::new(&f / index, c_in, c, 3, 1, 1, true);
                built.push(conv.site());
                let bn = batch_norm.then(|| BatchNorm2d::new(&f / (index + 1), c));
                // conv, [bn], relu
                index += if batch_norm { 3 } else { 2 };
                units.push(ConvBn::new(conv, bn));
                c_in = c;
            }
            index += 1; // max-pool
            blocks.push(units);
        }
        let c = p / "classifier";
        let fc_in = if stem == Stem::Imagenet { c_in * 7 * 7 } else { c_in };
        let fc1 = Linear::new(&c / 0, fc_in, 4096);
        let fc2 = Linear::new(&c / 3, 4096, 4096);
        let fc3 = Linear::new(&c / 6, 4096, num_classes);
        built.extend([fc1.site(), fc2.site(), fc3.site()]);
        Vgg { blocks, stem, fc1, fc2, fc3, built }
    }

    /// The 4096-d output of the classifier's second ReLU (dropout is identity in eval).
    pub fn fc2_features(&self, last_block: &Tensor) -> Tensor {
        let x = match self.stem {
            Stem::Imagenet => last_block.adaptive_avg_pool2d([7, 7]),
            Stem::Cifar => last_block.shallow_clone(),
        };
        self.fc2.forward(&self.fc1.forward(&x.flatten(1, -1)).relu()).relu()
    }
}

impl Backbone for Vgg {
    fn family(&self) -> Family {
        Family::Vgg
    }

    fn stage_names(&self) -> Vec<String> {
        (1..=self.blocks.len()).map(|i| format!("block{i}")).collect()
    }

    fn forward_stages(&self, x: &Tensor, mode: BnMode, until: usize) -> Vec<Tensor> {
        // oneDNN's fused convolutions keep the layout they are given: start channels-last.
        let mut y = if self.blocks[0][0].is_fused(mode) { channels_last(x) } else { x.shallow_clone() };
        let mut outs = Vec::new();
        for block in self.blocks.iter().take(until + 1) {
            for unit in block {
                y = unit.forward_relu(&y, mode);
            }
            y = y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            outs.push(y.shallow_clone());
        }
        outs
    }

    fn logits(&self, x: &Tensor) -> Tensor {
        let last = self.forward_stages(x, BnMode::Eval, self.blocks.len() - 1).pop().expect("blocks");
        self.fc3.forward(&self.fc2_features(&last))
    }

    fn built_sites(&self) -> &[Site] {
        &self.built
    }

    fn module_sites(&self) -> Vec<Site> {
        let mut out = Vec::new();
        self.blocks.iter().flatten().for_each(|u| u.sites(&mut out));
        out.extend([self.fc1.site(), self.fc2.site(), self.fc3.site()]);
        out
    }

    fn units_mut(&mut self) -> Vec<&mut ConvBn> {
        self.blocks.iter_mut().flatten().collect()
    }

    fn classifier_features(&self, last_stage: &Tensor) -> Option<Tensor> {
        Some(self.fc2_features(last_stage))
    }
}
