//! Building blocks whose variables live in a VarStore under torchvision's state-dict names.
//! Variables are created as zeros; `init` draws their values afterwards, in torchvision's
//! order, so a seed gives the same network as `torch.manual_seed(seed); torchvision.models.X()`.
use tch::{nn, Tensor};

/// What kind of layer a parameter belongs to, for the init schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Conv,
    Linear,
    BatchNorm,
}

/// A layer's parameters, as seen by the init code (shallow handles into the VarStore).
pub struct Site {
    pub kind: LayerKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
}

impl Conv2d {
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        padding: i64,
        bias: bool,
    ) -> Self {
        let zero = nn::Init::Const(0.);
        let weight = p.var("weight", &[c_out, c_in, k, k], zero);
        let bias = bias.then(|| p.var("bias", &[c_out], zero));
        Conv2d {
            weight,
            bias,
            stride,
            padding,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride; 2],
            [self.padding; 2],
            [1, 1],
            1,
        )
    }

    pub fn site(&self) -> Site {
        Site {
            kind: LayerKind::Conv,
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(|b| b.shallow_clone()),
        }
    }
}

/// BatchNorm2d with torchvision's buffers (running stats and num_batches_tracked), so
/// state dicts load by name. Frozen networks use it in eval mode only.
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
}

impl BatchNorm2d {
    pub fn new(p: nn::Path, c: i64) -> Self {
        let weight = p.var("weight", &[c], nn::Init::Const(1.));
        let bias = p.var("bias", &[c], nn::Init::Const(0.));
        let running_mean = p.zeros_no_train("running_mean", &[c]);
        let running_var = p.ones_no_train("running_var", &[c]);
        // Kept only so torchvision state dicts have no "unexpected" keys.
        let _ = p.add(
            "num_batches_tracked",
            Tensor::zeros([], (tch::Kind::Int64, p.device())),
            false,
        );
        BatchNorm2d {
            weight,
            bias,
            running_mean,
            running_var,
            eps: 1e-5,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.1,
            self.eps,
            true,
        )
    }

    pub fn site(&self) -> Site {
        Site {
            kind: LayerKind::BatchNorm,
            weight: self.weight.shallow_clone(),
            bias: Some(self.bias.shallow_clone()),
        }
    }
}

pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(p: nn::Path, d_in: i64, d_out: i64) -> Self {
        let zero = nn::Init::Const(0.);
        Linear {
            weight: p.var("weight", &[d_out, d_in], zero),
            bias: p.var("bias", &[d_out], zero),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }

    pub fn site(&self) -> Site {
        Site {
            kind: LayerKind::Linear,
            weight: self.weight.shallow_clone(),
            bias: Some(self.bias.shallow_clone()),
        }
    }
}
