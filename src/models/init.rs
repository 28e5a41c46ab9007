//! Weight initialisation, drawn on the CPU from libtorch's global generator in exactly
//! the order PyTorch/torchvision draw, so `--seed S --init torchvision` reproduces
//! `torch.manual_seed(S); torchvision.models.<arch>()` bit for bit.
//!
//! PyTorch draws in two passes: each layer's constructor runs `reset_parameters`
//! (kaiming-uniform a=√5 and a uniform bias), then the model's `__init__` loops over
//! `self.modules()` and re-draws with its scheme. Every scheme here keeps that shape: the
//! constructor draws, then a pass over the layers in module order.
use super::layers::{LayerKind, Site};
use std::fmt;
use std::str::FromStr;
use tch::Tensor;

/// `--init`: how the random weights are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitScheme {
    /// The family's own torchvision formulas (the default).
    Torchvision,
    /// Only PyTorch's layer defaults: kaiming-uniform a=√5, bias U(±1/√fan_in).
    PytorchDefault,
    /// N(0, √(2/fan_in)), torch.nn.init.kaiming_normal_'s defaults. Biases 0.
    KaimingNormal,
    /// U(±√(6/(fan_in+fan_out))). Biases 0.
    XavierUniform,
    /// torch.nn.init.orthogonal_ (QR of a Gaussian matrix, gain 1). Biases 0.
    Orthogonal,
    /// N(0, std²). Biases 0.
    Normal(f64),
    /// U(−a, a). Biases 0.
    Uniform(f64),
}

/// Which torchvision `__init__` formulas `Torchvision` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// torchvision ResNet (and the CIFAR ResNets, which follow it): conv kaiming-normal
    /// fan_out relu, BN 1/0, Linear left at its PyTorch default.
    ResNet,
    /// torchvision VGG: conv kaiming-normal fan_out relu with bias 0, BN 1/0, Linear N(0, 0.01) bias 0.
    Vgg,
    /// `patchnet`: draws its own filters (uniform random directions); no torchvision formula.
    Patch,
}

impl FromStr for InitScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let number = |v: &str| match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(format!("'{s}': the number after ':' must be positive and finite")),
        };
        match s.split_once(':') {
            None => match s {
                "torchvision" => Ok(InitScheme::Torchvision),
                "pytorch-default" => Ok(InitScheme::PytorchDefault),
                "kaiming-normal" => Ok(InitScheme::KaimingNormal),
                "xavier-uniform" => Ok(InitScheme::XavierUniform),
                "orthogonal" => Ok(InitScheme::Orthogonal),
                _ => Err(format!(
                    "unknown init '{s}': use torchvision, pytorch-default, kaiming-normal, xavier-uniform, orthogonal, normal:STD or uniform:A"
                )),
            },
            Some(("normal", v)) => Ok(InitScheme::Normal(number(v)?)),
            Some(("uniform", v)) => Ok(InitScheme::Uniform(number(v)?)),
            Some(_) => Err(format!("unknown init '{s}': use normal:STD or uniform:A for parameterised schemes")),
        }
    }
}

impl fmt::Display for InitScheme {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            InitScheme::Torchvision => write!(f, "torchvision"),
            InitScheme::PytorchDefault => write!(f, "pytorch-default"),
            InitScheme::KaimingNormal => write!(f, "kaiming-normal"),
            InitScheme::XavierUniform => write!(f, "xavier-uniform"),
            InitScheme::Orthogonal => write!(f, "orthogonal"),
            InitScheme::Normal(s) => write!(f, "normal:{s}"),
            InitScheme::Uniform(a) => write!(f, "uniform:{a}"),
        }
    }
}

crate::serde_as_str!(InitScheme);

/// Draws all weights: constructor draws over `built` (constructor order), then the
/// scheme's pass over `modules` (module order).
pub fn apply(scheme: InitScheme, family: Family, built: &[Site], modules: &[Site]) {
    tch::no_grad(|| {
        built.iter().for_each(pytorch_reset);
        if scheme == InitScheme::PytorchDefault {
            return;
        }
        for site in modules {
            match (site.kind, scheme) {
                (LayerKind::BatchNorm, _) => fill(&site.weight, 1.0, site.bias.as_ref()),
                (LayerKind::Conv, InitScheme::Torchvision) => {
                    normal(&site.weight, kaiming_fan_out_std(&site.weight));
                    // torchvision's VGG zeroes conv biases; its ResNets have none.
                    site.bias.iter().for_each(zero);
                }
                (LayerKind::Linear, InitScheme::Torchvision) => {
                    if family == Family::Vgg {
                        normal(&site.weight, 0.01);
                        site.bias.iter().for_each(zero);
                    }
                }
                (_, s) => {
                    draw(&site.weight, s);
                    site.bias.iter().for_each(zero);
                }
            }
        }
    });
}

/// The std each scheme's formula gives a weight of this layer (for the init-statistics test
/// and the docs).
pub fn expected_std(scheme: InitScheme, family: Family, kind: LayerKind, w: &Tensor) -> f64 {
    let (fi, fo) = (fan_in(w) as f64, fan_out(w) as f64);
    let pytorch_default = 1.0 / (3.0 * fi).sqrt();
    match (scheme, kind) {
        (_, LayerKind::BatchNorm) => 0.0, // weight 1, bias 0: constants
        (InitScheme::Torchvision, LayerKind::Conv) => (2.0 / fo).sqrt(),
        (InitScheme::Torchvision, LayerKind::Linear) if family == Family::Vgg => 0.01,
        (InitScheme::Torchvision, LayerKind::Linear) | (InitScheme::PytorchDefault, _) => pytorch_default,
        (InitScheme::KaimingNormal, _) => (2.0 / fi).sqrt(),
        (InitScheme::XavierUniform, _) => (2.0 / (fi + fo)).sqrt(),
        (InitScheme::Orthogonal, _) => {
            let rows = w.size()[0] as f64;
            let cols = w.numel() as f64 / rows;
            1.0 / rows.max(cols).sqrt()
        }
        (InitScheme::Normal(s), _) => s,
        (InitScheme::Uniform(a), _) => a / 3f64.sqrt(),
    }
}

fn draw(w: &Tensor, scheme: InitScheme) {
    match scheme {
        InitScheme::KaimingNormal => normal(w, (2.0 / fan_in(w) as f64).sqrt()),
        InitScheme::XavierUniform => {
            let a = (6.0 / (fan_in(w) + fan_out(w)) as f64).sqrt();
            uniform(w, a);
        }
        InitScheme::Orthogonal => orthogonal(w),
        InitScheme::Normal(s) => normal(w, s),
        InitScheme::Uniform(a) => uniform(w, a),
        InitScheme::Torchvision | InitScheme::PytorchDefault => unreachable!("handled by apply"),
    }
}

/// Product of all dims after the first two (the receptive field), as torch.nn.init computes it.
fn receptive_field(w: &Tensor) -> i64 {
    w.size()[2..].iter().product::<i64>().max(1)
}

pub fn fan_in(w: &Tensor) -> i64 {
    w.size()[1] * receptive_field(w)
}

pub fn fan_out(w: &Tensor) -> i64 {
    w.size()[0] * receptive_field(w)
}

/// kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = √2/√fan_out.
fn kaiming_fan_out_std(w: &Tensor) -> f64 {
    2f64.sqrt() / (fan_out(w) as f64).sqrt()
}

/// `reset_parameters` of nn.Conv2d / nn.Linear: kaiming_uniform_(a=√5), i.e.
/// U(±1/√fan_in) for the weight, then U(±1/√fan_in) for the bias. BatchNorm draws nothing.
fn pytorch_reset(site: &Site) {
    if site.kind == LayerKind::BatchNorm {
        return;
    }
    // gain = √(2/(1+a²)) with a=√5 → bound = gain·√(3/fan_in) = 1/√fan_in.
    let bound = 1.0 / (fan_in(&site.weight) as f64).sqrt();
    uniform(&site.weight, bound);
    if let Some(b) = &site.bias {
        uniform(b, bound);
    }
}

/// torch.nn.init.orthogonal_: QR of a Gaussian (rows × rest) matrix, signs fixed by diag(R).
fn orthogonal(w: &Tensor) {
    let rows = w.size()[0];
    let cols = w.numel() as i64 / rows;
    let mut flat = Tensor::empty([rows, cols], (tch::Kind::Float, w.device())).normal_(0.0, 1.0);
    if rows < cols {
        flat = flat.t_();
    }
    let (mut q, r) = Tensor::linalg_qr(&flat, "reduced");
    q *= r.diagonal(0, 0, 1).sign();
    if rows < cols {
        q = q.t_();
    }
    w.shallow_clone().view([rows, cols]).copy_(&q);
}

fn normal(w: &Tensor, std: f64) {
    let _ = w.shallow_clone().normal_(0.0, std);
}

fn uniform(w: &Tensor, a: f64) {
    let _ = w.shallow_clone().uniform_(-a, a);
}

fn fill(w: &Tensor, v: f64, bias: Option<&Tensor>) {
    let _ = w.shallow_clone().fill_(v);
    bias.into_iter().for_each(zero);
}

pub fn zero(t: &Tensor) {
    tch::no_grad(|| {
        let _ = t.shallow_clone().zero_();
    });
}
