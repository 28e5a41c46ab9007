//! The linear probe: multinomial logistic regression on frozen features, trained with
//! tch's optimiser in its own VarStore. Only the fit and validation parts of train are
//! ever passed in; the test split is scored once, by `evaluate`, after everything is chosen.
use crate::features::Features;
use crate::progress;
use anyhow::{ensure, Result};
use std::time::Instant;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Settings of the head's training.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeSettings {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub seed: u64,
}

/// Feature standardisation with statistics of the fit part only.
pub struct Standardizer {
    mean: Tensor,
    std: Tensor,
}

impl Standardizer {
    pub fn fit(x: &Tensor) -> Standardizer {
        let mean = x.mean_dim(0, true, Kind::Float);
        // Population std, floored so constant (e.g. dead-ReLU) features stay finite.
        let std = x.std_correction(0, 0, true).clamp_min(1e-6);
        Standardizer { mean, std }
    }

    pub fn apply(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }
}

/// One row of epochs.csv.
#[derive(Clone, Debug)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_acc: f64,
    pub lr: f64,
    pub elapsed_s: f64,
}

/// A trained head: standardisation, then a linear layer.
pub struct Head {
    _vs: nn::VarStore,
    linear: nn::Linear,
    standardizer: Standardizer,
    device: Device,
}

impl Head {
    pub fn logits(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.linear.forward(&self.standardizer.apply(&x.to_device(self.device))))
    }
}

pub struct Fitted {
    pub head: Head,
    pub epochs: Vec<EpochLog>,
    pub best_epoch: usize,
    pub val_acc: f64,
    pub fit_s: f64,
}

/// Trains on `fit`, scoring `val` after each epoch (cosine learning-rate decay), and keeps
/// the weights of the epoch with the best validation accuracy.
pub fn train(fit: &Features, val: &Features, num_classes: usize, s: &ProbeSettings, device: Device) -> Result<Fitted> {
    let n = fit.x.size()[0];
    ensure!(n > 0, "the fit split is empty");
    ensure!(val.x.size()[0] > 0, "the validation split is empty: use more data or a larger --val-fraction");
    let start = Instant::now();
    let x = fit.x.to_device(device);
    let y = fit.y.to_device(device);
    let standardizer = Standardizer::fit(&x);
    let x = standardizer.apply(&x);
    let xv = standardizer.apply(&val.x.to_device(device));
    let yv = val.y.to_device(device);

    tch::manual_seed(s.seed as i64);
    let vs = nn::VarStore::new(device);
    let linear = nn::linear(vs.root() / "head", x.size()[1], num_classes as i64, Default::default());
    let mut opt = nn::AdamW { wd: s.weight_decay, ..Default::default() }.build(&vs, s.lr)?;

    let bar = progress::epochs(s.epochs as u64);
    let mut epochs = Vec::with_capacity(s.epochs);
    let mut best: Option<(f64, usize, Tensor, Tensor)> = None;
    for epoch in 1..=s.epochs {
        let lr = s.lr * 0.5 * (1.0 + (std::f64::consts::PI * (epoch - 1) as f64 / s.epochs as f64).cos());
        opt.set_lr(lr);
        let perm = Tensor::randperm(n, (Kind::Int64, device));
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut i = 0;
        while i < n {
            let len = (s.batch_size as i64).min(n - i);
            let idx = perm.narrow(0, i, len);
            let (xb, yb) = (x.index_select(0, &idx), y.index_select(0, &idx));
            let logits = linear.forward(&xb);
            let loss = logits.cross_entropy_for_logits(&yb);
            opt.backward_step(&loss);
            tch::no_grad(|| {
                loss_sum += loss.detach() * len as f64;
                correct += logits.argmax(1, false).eq_tensor(&yb).sum(Kind::Int64);
            });
            i += len;
        }
        let val_acc = tch::no_grad(|| accuracy(&linear.forward(&xv), &yv));
        epochs.push(EpochLog {
            epoch,
            train_loss: loss_sum.double_value(&[]) / n as f64,
            train_acc: correct.int64_value(&[]) as f64 / n as f64,
            val_acc,
            lr,
            elapsed_s: start.elapsed().as_secs_f64(),
        });
        if best.as_ref().is_none_or(|b| val_acc > b.0) {
            best = Some((val_acc, epoch, linear.ws.detach().copy(), linear.bs.as_ref().expect("bias").detach().copy()));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (val_acc, best_epoch, w, b) = best.expect("at least one epoch");
    tch::no_grad(|| {
        linear.ws.shallow_clone().copy_(&w);
        linear.bs.as_ref().expect("bias").shallow_clone().copy_(&b);
    });
    Ok(Fitted {
        head: Head { _vs: vs, linear, standardizer, device },
        epochs,
        best_epoch,
        val_acc,
        fit_s: start.elapsed().as_secs_f64(),
    })
}

/// Top-1 and top-5 accuracy of `head` on features `x` with labels `y`.
pub fn evaluate(head: &Head, data: &Features) -> (f64, f64) {
    let logits = head.logits(&data.x);
    let y = data.y.to_device(head.device);
    let k = 5.min(logits.size()[1]);
    let (_, top) = logits.topk(k, 1, true, true);
    let top5 = top.eq_tensor(&y.unsqueeze(1)).any_dim(1, false).to_kind(Kind::Float).mean(Kind::Float);
    (accuracy(&logits, &y), top5.double_value(&[]))
}

fn accuracy(logits: &Tensor, y: &Tensor) -> f64 {
    logits.argmax(1, false).eq_tensor(y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
}
