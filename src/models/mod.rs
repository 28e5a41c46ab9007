//! Frozen backbones with torchvision-exact structure, names and initialisation.
pub mod checkpoint;
pub mod frozen;
pub mod fused;
pub mod init;
pub mod layers;
pub mod patchnet;
pub mod pooling;
pub mod pretrained;
pub mod resnet;
pub mod vgg;
pub mod weights;

pub use frozen::WeightsSource;

use anyhow::Result;
use clap::ValueEnum;
use init::{Family, InitScheme};
use layers::{BnMode, ConvBn, Site};
use resnet::{BlockKind, ResNet, ResNetSpec, Shortcut};
use serde::Serialize;
use tch::{nn, Device, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
pub enum Arch {
    #[value(name = "resnet18")]
    #[serde(rename = "resnet18")]
    Resnet18,
    #[value(name = "resnet34")]
    #[serde(rename = "resnet34")]
    Resnet34,
    #[value(name = "resnet50")]
    #[serde(rename = "resnet50")]
    Resnet50,
    #[value(name = "resnet101")]
    #[serde(rename = "resnet101")]
    Resnet101,
    #[value(name = "resnet152")]
    #[serde(rename = "resnet152")]
    Resnet152,
    #[value(name = "resnet20")]
    #[serde(rename = "resnet20")]
    Resnet20,
    #[value(name = "resnet32")]
    #[serde(rename = "resnet32")]
    Resnet32,
    #[value(name = "resnet44")]
    #[serde(rename = "resnet44")]
    Resnet44,
    #[value(name = "resnet56")]
    #[serde(rename = "resnet56")]
    Resnet56,
    #[value(name = "resnet110")]
    #[serde(rename = "resnet110")]
    Resnet110,
    #[value(name = "vgg11")]
    #[serde(rename = "vgg11")]
    Vgg11,
    #[value(name = "vgg13")]
    #[serde(rename = "vgg13")]
    Vgg13,
    #[value(name = "vgg16")]
    #[serde(rename = "vgg16")]
    Vgg16,
    #[value(name = "vgg19")]
    #[serde(rename = "vgg19")]
    Vgg19,
    #[value(name = "vgg11_bn")]
    #[serde(rename = "vgg11_bn")]
    Vgg11Bn,
    #[value(name = "vgg13_bn")]
    #[serde(rename = "vgg13_bn")]
    Vgg13Bn,
    #[value(name = "vgg16_bn")]
    #[serde(rename = "vgg16_bn")]
    Vgg16Bn,
    #[value(name = "vgg19_bn")]
    #[serde(rename = "vgg19_bn")]
    Vgg19Bn,
    #[value(name = "patchnet")]
    #[serde(rename = "patchnet")]
    Patchnet,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
            Arch::Resnet20 => "resnet20",
            Arch::Resnet32 => "resnet32",
            Arch::Resnet44 => "resnet44",
            Arch::Resnet56 => "resnet56",
            Arch::Resnet110 => "resnet110",
            Arch::Vgg11 => "vgg11",
            Arch::Vgg13 => "vgg13",
            Arch::Vgg16 => "vgg16",
            Arch::Vgg19 => "vgg19",
            Arch::Vgg11Bn => "vgg11_bn",
            Arch::Vgg13Bn => "vgg13_bn",
            Arch::Vgg16Bn => "vgg16_bn",
            Arch::Vgg19Bn => "vgg19_bn",
            Arch::Patchnet => "patchnet",
        }
    }

    /// He et al. 2016's CIFAR ResNets: always the CIFAR stem, 16/32/64 channels.
    pub fn is_cifar_resnet(self) -> bool {
        matches!(self, Arch::Resnet20 | Arch::Resnet32 | Arch::Resnet44 | Arch::Resnet56 | Arch::Resnet110)
    }

    pub fn is_vgg(self) -> bool {
        self.name().starts_with("vgg")
    }

    /// Whether torchvision publishes ImageNet weights for this arch.
    pub fn in_torchvision(self) -> bool {
        !self.is_cifar_resnet() && self != Arch::Patchnet
    }

    /// Networks made for 32×32 images, which only have the CIFAR stem.
    pub fn cifar_only(self) -> bool {
        self.is_cifar_resnet() || self == Arch::Patchnet
    }

    pub fn family(self) -> Family {
        if self == Arch::Patchnet {
            Family::Patch
        } else if self.is_vgg() {
            Family::Vgg
        } else {
            Family::ResNet
        }
    }

    /// One line for `cnnprobe models`.
    pub fn describe(self) -> &'static str {
        match self {
            Arch::Resnet18 | Arch::Resnet34 => "torchvision ResNet, BasicBlock; features: pooled layer4 (512)",
            Arch::Resnet50 | Arch::Resnet101 | Arch::Resnet152 => {
                "torchvision ResNet v1.5 (stride on the 3×3), Bottleneck; features: pooled layer4 (2048)"
            }
            a if a.is_cifar_resnet() => {
                "He et al. 2016 CIFAR ResNet, 3 stages 16/32/64, option-A (zero-pad) shortcuts; features: pooled layer3 (64)"
            }
            Arch::Patchnet => {
                "one layer: cosines of 6×6 patches with 256×width random (or --first-layer patches) filters, \
                 optionally patch-ZCA whitened (--whiten patch-zca); use with --encode soft:A"
            }
            _ => "torchvision VGG; features: pooled last conv block (512), or --features fc2 (4096)",
        }
    }
}

/// `imagenet`: torchvision's 7×7/2 conv + 3×3/2 max-pool (VGG: the adaptive 7×7 average
/// pool before the classifier). `cifar`: a 3×3/1 conv and no max-pool (He et al. 2016),
/// which keeps 32×32 inputs at 32×32 into layer1 (VGG: no adaptive pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
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

/// A network body that can be tapped stage by stage.
pub trait Backbone {
    fn family(&self) -> Family;
    /// Names of the tappable stages in forward order (layer1…, block1…).
    fn stage_names(&self) -> Vec<String>;
    /// Runs the stages 0..=until and returns each one's output.
    fn forward_stages(&self, x: &Tensor, mode: BnMode, until: usize) -> Vec<Tensor>;
    /// Logits of the network's own classifier (parity checks against torchvision).
    fn logits(&self, x: &Tensor) -> Tensor;
    /// Layers in constructor order (PyTorch's reset_parameters draws).
    fn built_sites(&self) -> &[Site];
    /// Layers in `nn.Module.modules()` order.
    fn module_sites(&self) -> Vec<Site>;
    /// Every conv(+BN) unit, for BN folding.
    fn units_mut(&mut self) -> Vec<&mut ConvBn>;
    /// Features from the classifier (VGG's fc2); None where the family has none.
    fn classifier_features(&self, _last_stage: &Tensor) -> Option<Tensor> {
        None
    }
    /// The patch network, for the steps that fill it from data (whitening, patch filters).
    fn as_patchnet_mut(&mut self) -> Option<&mut patchnet::PatchNet> {
        None
    }
    /// At most this many images per forward pass when features are taken (a wide stage
    /// whose maps would otherwise take gigabytes at the batch size).
    fn chunk(&self) -> Option<i64> {
        None
    }
    /// A one-stage network's features straight from the input, where it has a faster way
    /// than mapping and pooling: the first stage average-pooled over `grid`, after the soft
    /// threshold `soft` if given (see features::taps::Encode). Equal to the generic path.
    fn pooled_features(&self, _x: &Tensor, _soft: Option<f64>, _grid: pooling::Grid) -> Option<Result<Tensor>> {
        None
    }
}

/// Everything that decides a network's weights.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub stem: Stem,
    pub init: InitScheme,
    pub zero_init_residual: bool,
    pub seed: u64,
    /// Channel multiplier of every conv (1 = torchvision's widths; random weights only).
    /// Left out of the JSON at 1, so feature-cache keys from before the flag still match.
    #[serde(skip_serializing_if = "is_one", default = "one")]
    pub width_mult: f64,
}

impl ModelConfig {
    /// torchvision's network as `torchvision.models.<arch>()` builds it after
    /// `torch.manual_seed(seed)`: its init and widths, no zero-init residual.
    pub fn torchvision(arch: Arch, stem: Stem, seed: u64) -> ModelConfig {
        ModelConfig { arch, stem, init: InitScheme::Torchvision, zero_init_residual: false, seed, width_mult: 1.0 }
    }
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// `c` channels scaled by `--width-mult`, at least one.
pub fn scaled(c: i64, mult: f64) -> i64 {
    ((c as f64 * mult).round() as i64).max(1)
}

static SEEDED_DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A frozen network: its own VarStore (no optimiser ever sees it) and the body.
pub struct Network {
    pub vs: nn::VarStore,
    pub body: Box<dyn Backbone>,
    pub arch: Arch,
    folded: bool,
    fused: bool,
}

impl Network {
    /// Builds the network with weights drawn on the CPU from `cfg.seed` (so a seed gives
    /// the same network on every device), frozen, still on the CPU.
    pub fn build(cfg: &ModelConfig) -> Result<Network> {
        Network::construct(cfg, true)
    }

    /// The network's structure only, for weights loaded next: skipping the random draws
    /// saves seconds on the large VGGs, since loading overwrites every variable anyway.
    pub fn build_for_loading(cfg: &ModelConfig) -> Result<Network> {
        Network::construct(cfg, false)
    }

    fn construct(cfg: &ModelConfig, draw: bool) -> Result<Network> {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        // libtorch's generator is global: hold the lock from seeding to the last draw so
        // concurrent builds (tests, library users) cannot interleave their draws.
        let _draws = SEEDED_DRAWS.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(cfg.seed as i64);
        let body: Box<dyn Backbone> = if cfg.arch == Arch::Patchnet {
            Box::new(patchnet::PatchNet::new(&root, cfg.width_mult))
        } else if cfg.arch.is_vgg() {
            let depth = cfg.arch.name()[3..5].parse().expect("vgg depth");
            Box::new(vgg::Vgg::new(&root, depth, cfg.arch.name().ends_with("_bn"), cfg.stem, 1000, cfg.width_mult))
        } else {
            let mut spec = resnet_spec(cfg.arch, cfg.stem);
            spec.width = scaled(spec.width, cfg.width_mult);
            let net = ResNet::new(&root, &spec);
            Box::new(net)
        };
        if draw {
            init::apply(cfg.init, cfg.arch.family(), body.built_sites(), &body.module_sites());
        }
        if draw && cfg.zero_init_residual {
            zero_init_residual(&*body);
        }
        drop(_draws);
        vs.freeze();
        Ok(Network { vs, body, arch: cfg.arch, folded: false, fused: false })
    }

    /// Builds on the CPU (see `build`) and moves the frozen network to `device`.
    pub fn random(cfg: &ModelConfig, device: Device) -> Result<Network> {
        let mut net = Network::build(cfg)?;
        net.vs.set_device(device);
        Ok(net)
    }

    /// Replaces every weight and buffer with those of a state-dict file (strict: missing,
    /// unexpected or wrong-shaped keys are an error that lists them).
    /// Says on stderr how long reading and copying took (checkpoint loads are benchmarked by it).
    pub fn load_weights(&self, path: &std::path::Path) -> Result<()> {
        let start = std::time::Instant::now();
        let tensors = weights::read_state_dict(path)?;
        let read_s = start.elapsed().as_secs_f64();
        let (count, bytes) =
            (tensors.len(), tensors.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).sum::<usize>());
        weights::load_into(&self.vs, tensors, path)
            .map_err(|e| e.context(format!("--weights: loading into {}", self.arch.name())))?;
        eprintln!(
            "weights: {count} tensors, {:.1} MB from {} in {:.3} s (read {read_s:.3} s)",
            bytes as f64 / 1e6,
            path.display(),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    pub fn to_device(&mut self, device: Device) {
        self.vs.set_device(device);
    }

    /// Casts the frozen network to `kind` (after folding, so folding is done in float32).
    pub fn set_precision(&mut self, kind: tch::Kind) {
        if kind == tch::Kind::Float {
            return;
        }
        match kind {
            tch::Kind::Half => self.vs.half(),
            _ => self.vs.bfloat16(),
        }
        self.body.units_mut().into_iter().for_each(|u| u.cast(kind));
        self.fused = false;
    }

    /// The dtype the network computes in.
    pub fn kind(&self) -> tch::Kind {
        let floats = [tch::Kind::Float, tch::Kind::Half, tch::Kind::BFloat16];
        self.vs.variables().values().map(|t| t.kind()).find(|k| floats.contains(k)).unwrap_or(tch::Kind::Float)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Folds every BatchNorm into its convolution (eval mode only; call after weights are
    /// final, i.e. after loading and calibration).
    pub fn fold_batchnorm(&mut self) {
        self.body.units_mut().into_iter().for_each(|u| u.fold());
        self.folded = true;
        self.fused = false;
    }

    /// Whether `fold_batchnorm` ran (the frozen weights are then channels-last).
    pub fn is_folded(&self) -> bool {
        self.folded
    }

    /// oneDNN's fused convolutions for the folded weights where they apply: CPU, float32, and
    /// a libtorch whose ops pass `fused::available` (every family: ResNet and VGG). Returns
    /// whether they run.
    pub fn fuse(&mut self, on: bool) -> bool {
        let on = on
            && self.folded
            && self.device() == Device::Cpu
            && self.kind() == tch::Kind::Float
            && !self.body.units_mut().is_empty()
            && fused::available();
        self.body.units_mut().into_iter().for_each(|u| u.fuse(on));
        self.fused = on;
        on
    }

    /// Whether `fuse` turned the fused convolutions on (Eval forwards then run them).
    pub fn is_fused(&self) -> bool {
        self.fused
    }

    pub fn unfold_batchnorm(&mut self) {
        self.body.units_mut().into_iter().for_each(|u| u.unfold());
        self.folded = false;
        self.fused = false;
    }

    /// All BatchNorm layers.
    pub fn batchnorms(&mut self) -> Vec<&layers::BatchNorm2d> {
        self.body.units_mut().into_iter().filter_map(|u| u.bn.as_ref()).collect()
    }
}

fn resnet_spec(arch: Arch, stem: Stem) -> ResNetSpec {
    use BlockKind::{Basic, Bottleneck};
    let tv = |kind, blocks: [usize; 4]| ResNetSpec {
        kind,
        blocks: blocks.to_vec(),
        width: 64,
        stem,
        shortcut: Shortcut::Projection,
        num_classes: 1000,
    };
    let cifar = |n: usize| ResNetSpec {
        kind: Basic,
        blocks: vec![n; 3],
        width: 16,
        stem: Stem::Cifar,
        shortcut: Shortcut::ZeroPad,
        num_classes: 10,
    };
    match arch {
        Arch::Resnet18 => tv(Basic, [2, 2, 2, 2]),
        Arch::Resnet34 => tv(Basic, [3, 4, 6, 3]),
        Arch::Resnet50 => tv(Bottleneck, [3, 4, 6, 3]),
        Arch::Resnet101 => tv(Bottleneck, [3, 4, 23, 3]),
        Arch::Resnet152 => tv(Bottleneck, [3, 8, 36, 3]),
        Arch::Resnet20 => cifar(3),
        Arch::Resnet32 => cifar(5),
        Arch::Resnet44 => cifar(7),
        Arch::Resnet56 => cifar(9),
        Arch::Resnet110 => cifar(18),
        _ => unreachable!("VGG is built by vgg::Vgg"),
    }
}

/// torchvision's `zero_init_residual`: the last BN of each residual block starts at 0.
fn zero_init_residual(body: &dyn Backbone) {
    if body.family() != Family::ResNet {
        return;
    }
    let sites = body.module_sites();
    for s in &sites {
        // The last BN of a block is bn2 (BasicBlock) or bn3 (Bottleneck) inside layerN.M.
        let is_last_bn = s.name.starts_with("layer")
            && (s.name.ends_with(".bn3")
                || (s.name.ends_with(".bn2") && !sites.iter().any(|o| o.name == s.name.replace(".bn2", ".bn3"))));
        if is_last_bn {
            init::zero(&s.weight);
        }
    }
}
