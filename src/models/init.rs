//! Weight initialisation, drawn on the CPU from libtorch's global generator in exactly
//! the order PyTorch/torchvision draw, so `--seed S` reproduces
//! `torch.manual_seed(S); torchvision.models.<arch>()` bit for bit.
//!
//! PyTorch draws in two passes: each layer's constructor runs `reset_parameters`
//! (kaiming-uniform a=√5 and a uniform bias), then torchvision's `__init__` loops over
//! `self.modules()` and re-draws with the family's scheme.
use super::layers::{LayerKind, Site};
use tch::Tensor;

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

/// `reset_parameters` of nn.Conv2d / nn.Linear: kaiming_uniform_(a=√5), i.e.
/// U(±1/√fan_in) for the weight, then U(±1/√fan_in) for the bias. BatchNorm draws nothing.
pub fn pytorch_reset(site: &Site) {
    if site.kind == LayerKind::BatchNorm {
        return;
    }
    tch::no_grad(|| {
        // gain = √(2/(1+a²)) with a=√5 → bound = gain·√(3/fan_in) = 1/√fan_in.
        let bound = 1.0 / (fan_in(&site.weight) as f64).sqrt();
        let _ = site.weight.shallow_clone().uniform_(-bound, bound);
        if let Some(b) = &site.bias {
            let _ = b.shallow_clone().uniform_(-bound, bound);
        }
    });
}

/// kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, √2/√fan_out).
pub fn kaiming_normal_fan_out(w: &Tensor) {
    let std = 2f64.sqrt() / (fan_out(w) as f64).sqrt();
    tch::no_grad(|| {
        let _ = w.shallow_clone().normal_(0.0, std);
    });
}

/// BatchNorm: weight 1, bias 0 (torchvision's `nn.init.constant_` pass).
pub fn batchnorm_identity(site: &Site) {
    tch::no_grad(|| {
        let _ = site.weight.shallow_clone().fill_(1.0);
        if let Some(b) = &site.bias {
            let _ = b.shallow_clone().fill_(0.0);
        }
    });
}

pub fn zero(t: &Tensor) {
    tch::no_grad(|| {
        let _ = t.shallow_clone().zero_();
    });
}
