//! Gradient-descent solvers for the head (AdamW, Adam, SGD with momentum) with tch's
//! optimisers, a cosine or step schedule, and early stopping on validation loss. The head
//! lives in its own VarStore; the backbone is never seen here.
use super::metrics::accuracy;
use super::{EpochLog, ProbeConfig, Schedule, Solver};
use crate::util::progress;
use anyhow::Result;
use std::time::Instant;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Tensor};

/// A head fitted by gradient descent.
pub struct Trained {
    pub w: Tensor,
    pub b: Tensor,
    pub epochs: Vec<EpochLog>,
    pub best_epoch: usize,
    pub val_acc: f64,
}

/// Trains on (x, y) — already scaled, on the device (or on the CPU with batches moved to
/// the device when the features did not fit) — scoring (xv, yv) after each epoch, and keeps
/// the weights of the epoch with the best validation accuracy. With no validation data it
/// trains the given number of epochs and keeps the last.
pub fn train(
    x: &Tensor,
    y: &Tensor,
    val: Option<(&Tensor, &Tensor)>,
    classes: i64,
    weight_decay: f64,
    s: &ProbeConfig,
    device: tch::Device,
) -> Result<Trained> {
    let n = x.size()[0];
    let start = Instant::now();
    tch::manual_seed(s.seed as i64);
    let vs = nn::VarStore::new(device);
    let linear = nn::linear(vs.root() / "head", x.size()[1], classes, Default::default());
    let mut opt = match s.solver {
        Solver::Adam => nn::Adam { wd: weight_decay, ..Default::default() }.build(&vs, s.lr)?,
        Solver::Sgd => {
            nn::Sgd { momentum: 0.9, wd: weight_decay, nesterov: true, ..Default::default() }.build(&vs, s.lr)?
        }
        _ => nn::AdamW { wd: weight_decay, ..Default::default() }.build(&vs, s.lr)?,
    };
    let bar = progress::epochs(s.epochs as u64);
    let mut epochs = Vec::with_capacity(s.epochs);
    let mut best: Option<(f64, usize, Tensor, Tensor)> = None;
    let mut best_val_loss = f64::INFINITY;
    let mut since_best_loss = 0;
    for epoch in 1..=s.epochs {
        crate::util::interrupt::check()?;
        let lr = s.schedule.lr(s.lr, epoch, s.epochs);
        opt.set_lr(lr);
        let (loss_sum, correct) = one_epoch(&linear, &mut opt, (x, y), s.batch_size as i64, device);
        let (val_acc, val_loss) = match val {
            Some((xv, yv)) => tch::no_grad(|| {
                let logits = linear.forward(&xv.to_device(device));
                let yv = yv.to_device(device);
                (accuracy(&logits, &yv), logits.cross_entropy_for_logits(&yv).double_value(&[]))
            }),
            None => (f64::NAN, f64::NAN),
        };
        epochs.push(EpochLog {
            epoch,
            train_loss: loss_sum.double_value(&[]) / n as f64,
            train_acc: correct.int64_value(&[]) as f64 / n as f64,
            val_acc,
            val_loss,
            lr,
            elapsed_s: start.elapsed().as_secs_f64(),
        });
        bar.inc(1);
        let improved = val.is_none() || best.as_ref().is_none_or(|b| val_acc > b.0);
        if improved {
            let ws = linear.ws.detach().copy();
            let bs = linear.bs.as_ref().expect("bias").detach().copy();
            best = Some((if val.is_none() { 0.0 } else { val_acc }, epoch, ws, bs));
        }
        if val_loss < best_val_loss {
            best_val_loss = val_loss;
            since_best_loss = 0;
        } else {
            since_best_loss += 1;
            if s.patience > 0 && since_best_loss >= s.patience {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let (val_acc, best_epoch, w, b) = best.expect("at least one epoch");
    Ok(Trained { w, b, epochs, best_epoch, val_acc })
}

/// One pass over (x, y) in shuffled mini-batches; the summed loss and the correct count.
fn one_epoch(
    linear: &nn::Linear,
    opt: &mut nn::Optimizer,
    (x, y): (&Tensor, &Tensor),
    batch: i64,
    device: tch::Device,
) -> (Tensor, Tensor) {
    let n = x.size()[0];
    let perm = Tensor::randperm(n, (Kind::Int64, x.device()));
    let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
    let mut correct = Tensor::zeros([], (Kind::Int64, device));
    let mut i = 0;
    while i < n {
        let len = batch.min(n - i);
        let idx = perm.narrow(0, i, len);
        let xb = x.index_select(0, &idx).to_device(device);
        let yb = y.index_select(0, &idx).to_device(device);
        let logits = linear.forward(&xb);
        let loss = logits.cross_entropy_for_logits(&yb);
        opt.backward_step(&loss);
        tch::no_grad(|| {
            loss_sum += loss.detach() * len as f64;
            correct += logits.argmax(1, false).eq_tensor(&yb).sum(Kind::Int64);
        });
        i += len;
    }
    (loss_sum, correct)
}

impl Schedule {
    /// Learning rate of `epoch` (1-based) out of `total`.
    pub fn lr(self, base: f64, epoch: usize, total: usize) -> f64 {
        match self {
            Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * (epoch - 1) as f64 / total as f64).cos()),
            // ×0.1 at 50% and 75% of training.
            Schedule::Step => base * 0.1f64.powi(((epoch - 1) * 4 / total).saturating_sub(1).min(2) as i32),
            Schedule::Constant => base,
        }
    }
}
