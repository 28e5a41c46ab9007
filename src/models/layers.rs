//! Building blocks whose variables live in a VarStore under torchvision's state-dict names.
//! Variables are created as zeros; `init` draws their values afterwards, in torchvision's
//! order, so a seed gives the same network as `torch.manual_seed(seed); torchvision.models.X()`.
use super::fused::{FusedConv, Post};
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
    pub name: String,
    pub kind: LayerKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// How BatchNorm layers behave in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BnMode {
    /// Frozen: normalise with the running statistics.
    Eval,
    /// Eval on aten's ops even where oneDNN's fused ones are built: what a fused batch is
    /// rerun on when `fused::fp_raised` says its NaNs may have been hidden.
    EvalAten,
    /// Calibration: normalise with batch statistics and fold them into the running
    /// statistics with this momentum (1/(k+1) on batch k gives the cumulative average).
    Calibrate { momentum: f64 },
}

pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
    name: String,
}

impl Conv2d {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64, bias: bool) -> Self {
        let zero = nn::Init::Const(0.);
        let weight = p.var("weight", &[c_out, c_in, k, k], zero);
        let bias = bias.then(|| p.var("bias", &[c_out], zero));
        Conv2d { weight, bias, stride, padding, name: p.components().collect::<Vec<_>>().join(".") }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, self.bias.as_ref(), [self.stride; 2], [self.padding; 2], [1, 1], 1)
    }

    pub fn site(&self) -> Site {
        Site {
            name: self.name.clone(),
            kind: LayerKind::Conv,
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(|b| b.shallow_clone()),
        }
    }
}

/// BatchNorm2d with torchvision's buffers (running stats and num_batches_tracked), so
/// state dicts load by name.
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
    name: String,
}

impl BatchNorm2d {
    pub fn new(p: nn::Path, c: i64) -> Self {
        let weight = p.var("weight", &[c], nn::Init::Const(1.));
        let bias = p.var("bias", &[c], nn::Init::Const(0.));
        let running_mean = p.zeros_no_train("running_mean", &[c]);
        let running_var = p.ones_no_train("running_var", &[c]);
        // Kept only so torchvision state dicts have no "unexpected" keys.
        let _ = p.add("num_batches_tracked", Tensor::zeros([], (tch::Kind::Int64, p.device())), false);
        let name = p.components().collect::<Vec<_>>().join(".");
        BatchNorm2d { weight, bias, running_mean, running_var, eps: 1e-5, name }
    }

    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Tensor {
        let (training, momentum) = match mode {
            BnMode::Eval | BnMode::EvalAten => (false, 0.0),
            BnMode::Calibrate { momentum } => (true, momentum),
        };
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            training,
            momentum,
            self.eps,
            true,
        )
    }

    /// Running statistics back to their initial 0/1 (before calibration).
    pub fn reset_running_stats(&self) {
        tch::no_grad(|| {
            let _ = self.running_mean.shallow_clone().zero_();
            let _ = self.running_var.shallow_clone().fill_(1.0);
        });
    }

    /// Per-channel (scale, shift) that eval-mode BN applies: y = x·scale + shift.
    pub fn affine(&self) -> (Tensor, Tensor) {
        let scale = &self.weight / (&self.running_var + self.eps).sqrt();
        let shift = &self.bias - &self.running_mean * &scale;
        (scale, shift)
    }

    pub fn site(&self) -> Site {
        Site {
            name: self.name.clone(),
            kind: LayerKind::BatchNorm,
            weight: self.weight.shallow_clone(),
            bias: Some(self.bias.shallow_clone()),
        }
    }
}

/// A convolution optionally followed by BatchNorm. For a frozen network in eval mode the
/// BN can be folded into the convolution (one op instead of two, same output within
/// float rounding).
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm2d>,
    folded: Option<(Tensor, Tensor)>,
    /// The folded weights as a oneDNN fused conv (CPU fp32 only, see `fuse`).
    fused: Option<Box<FusedConv>>,
}

impl ConvBn {
    pub fn new(conv: Conv2d, bn: Option<BatchNorm2d>) -> Self {
        ConvBn { conv, bn, folded: None, fused: None }
    }

    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Tensor {
        self.forward_post(x, mode, Post::None)
    }

    /// relu(forward(x)), in one oneDNN op when fused.
    pub fn forward_relu(&self, x: &Tensor, mode: BnMode) -> Tensor {
        self.forward_post(x, mode, Post::Relu)
    }

    /// relu(forward(x) + shortcut): when fused, one op that writes into `shortcut`'s memory.
    pub fn forward_add_relu(&self, x: &Tensor, mode: BnMode, mut shortcut: Tensor) -> Tensor {
        if let Some(f) = self.fused_for(mode) {
            if f.forward_add_relu_(x, &mut shortcut).is_ok() {
                return shortcut;
            }
        }
        (self.forward_aten(x, mode) + shortcut).relu_()
    }

    /// Whether `mode`'s forward runs the fused oneDNN ops (its inputs should be channels-last).
    pub fn is_fused(&self, mode: BnMode) -> bool {
        self.fused_for(mode).is_some()
    }

    fn fused_for(&self, mode: BnMode) -> Option<&FusedConv> {
        self.fused.as_deref().filter(|_| mode == BnMode::Eval)
    }

    fn forward_post(&self, x: &Tensor, mode: BnMode, post: Post) -> Tensor {
        // A failing fused call (an input the self-check did not cover) falls back to aten.
        if let Some(Ok(y)) = self.fused_for(mode).map(|f| f.forward(x, post)) {
            return y;
        }
        let mut y = self.forward_aten(x, mode);
        match post {
            Post::Relu => y.relu_(),
            Post::None => y,
        }
    }

    fn forward_aten(&self, x: &Tensor, mode: BnMode) -> Tensor {
        if let (Some((w, b)), BnMode::Eval | BnMode::EvalAten) = (&self.folded, mode) {
            return x.conv2d(w, Some(b), [self.conv.stride; 2], [self.conv.padding; 2], [1, 1], 1);
        }
        let y = self.conv.forward(x);
        match &self.bn {
            Some(bn) => bn.forward(&y, mode),
            None => y,
        }
    }

    /// Runs the folded fp32 weights through oneDNN's fused ops (the caller checks the
    /// device, dtype and `fused::available`); off when not folded.
    pub fn fuse(&mut self, on: bool) {
        self.fused = match (&self.folded, on) {
            (Some((w, b)), true) => Some(Box::new(FusedConv::new(w, b, self.conv.padding, self.conv.stride))),
            _ => None,
        };
    }

    /// w' = w·scale (per output channel), b' = b·scale + shift; a conv without BN keeps
    /// its own weights. The frozen weights are laid out channels-last, which oneDNN's CPU
    /// convolutions run faster (libtorch picks the layout from the strides).
    pub fn fold(&mut self) {
        tch::no_grad(|| {
            let (w, b) = match &self.bn {
                Some(bn) => {
                    let (scale, shift) = bn.affine();
                    let w = &self.conv.weight * scale.view([-1, 1, 1, 1]);
                    let b = match &self.conv.bias {
                        Some(b) => b * &scale + &shift,
                        None => shift,
                    };
                    (w, b)
                }
                None => {
                    let c_out = self.conv.weight.size()[0];
                    let zeros = || Tensor::zeros([c_out], (self.conv.weight.kind(), self.conv.weight.device()));
                    (self.conv.weight.copy(), self.conv.bias.as_ref().map(|b| b.copy()).unwrap_or_else(zeros))
                }
            };
            self.folded = Some((channels_last(&w.detach()), b.detach()));
            self.fused = None;
        });
    }

    /// Casts the folded weights (the VarStore casts the rest).
    pub fn cast(&mut self, kind: tch::Kind) {
        self.fused = None;
        if let Some((w, b)) = &self.folded {
            self.folded = Some((channels_last(&w.to_kind(kind)), b.to_kind(kind)));
        }
    }

    pub fn unfold(&mut self) {
        self.folded = None;
        self.fused = None;
    }

    pub fn sites(&self, out: &mut Vec<Site>) {
        out.push(self.conv.site());
        if let Some(bn) = &self.bn {
            out.push(bn.site());
        }
    }
}

/// The same logical NCHW tensor with NHWC (channels-last) strides.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    name: String,
}

impl Linear {
    pub fn new(p: nn::Path, d_in: i64, d_out: i64) -> Self {
        let zero = nn::Init::Const(0.);
        let name = p.components().collect::<Vec<_>>().join(".");
        Linear { weight: p.var("weight", &[d_out, d_in], zero), bias: p.var("bias", &[d_out], zero), name }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }

    pub fn site(&self) -> Site {
        Site {
            name: self.name.clone(),
            kind: LayerKind::Linear,
            weight: self.weight.shallow_clone(),
            bias: Some(self.bias.shallow_clone()),
        }
    }
}
