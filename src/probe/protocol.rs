//! The evaluation protocol: a seeded stratified validation split of train, the head fitted
//! and chosen on it (mirrored views included as configured), then one scoring of the test
//! split with the final head.
use super::fit::{fit, Fitted, TrainingData};
use super::metrics::{self, Metrics};
use super::{ProbeConfig, Solver};
use crate::data::split;
use crate::features::{FeatureSet, Features};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// What the protocol produced.
pub struct Evaluation {
    pub fitted: Fitted,
    /// Train rows held out for validation.
    pub val_indices: Vec<i64>,
    /// Rows the head was fitted on before any refit (mirrored rows included).
    pub n_train: i64,
    pub n_test: i64,
    /// Test metrics; None for a `--val-only` screening run.
    pub test: Option<Metrics>,
}

pub fn evaluate(set: &FeatureSet, cfg: &ProbeConfig, device: Device) -> Result<Evaluation> {
    let classes = set.class_names.len();
    let parts = split::stratified(&set.train.y, classes, cfg.val_fraction, cfg.seed);
    // Test-time flip: a linear head's mean logit over two views is its logit of their mean.
    let mean_view = |a: &Tensor, b: &Tensor| (a + b) / 2.0;
    // The kernel readout's Gram matrix grows with the rows squared: one row per image, the
    // mean of its two views' features where there are two (for validation and test too).
    let merged = match (&set.train_flip, cfg.solver) {
        (Some(flip), Solver::Kernel) => {
            Some(Features { x: mean_view(&set.train.x, &flip.x), y: set.train.y.shallow_clone() })
        }
        _ => None,
    };
    let (train, train_flip) = match &merged {
        Some(m) => (m, None),
        None => (&set.train, set.train_flip.as_ref()),
    };
    let val = select(&[(train, &parts.val)]);
    // Flipped copies of the fit rows train too; those of the validation rows join only the
    // refit, so no view of a validation image is ever fitted before it is scored.
    let (fit_rows, val_flip) = match train_flip {
        Some(flip) => (select(&[(train, &parts.fit), (flip, &parts.fit)]), Some(select(&[(flip, &parts.val)]))),
        None => (select(&[(train, &parts.fit)]), None),
    };
    let val_view = match (&val_flip, set.test_flip.is_some()) {
        (Some(vf), true) => Some(mean_view(&val.x, &vf.x)),
        _ => None,
    };
    drop(val_flip);
    let n_train = fit_rows.y.size()[0];
    // The refit sees every train row (fit and validation) and every flipped one.
    let refit = std::iter::once(train).chain(train_flip).collect();
    let data = TrainingData { fit: fit_rows, val: &val, val_view: val_view.as_ref(), refit, classes };
    let fitted = fit(data, cfg, device)?;
    // The only place the test split meets the head: after every choice is made, and never
    // in a --val-only screening run.
    let test = if cfg.val_only {
        None
    } else {
        let x = match &set.test_flip {
            Some(tf) => mean_view(&set.test.x, &tf.x),
            None => set.test.x.shallow_clone(),
        };
        Some(metrics::score(&fitted.head.logits(&x)?, &set.test.y, classes))
    };
    Ok(Evaluation { fitted, val_indices: parts.val, n_train, n_test: set.test.y.size()[0], test })
}

/// The given rows of each part, in order, gathered into one allocation (a concatenation
/// would hold the parts and their sum at once: twice the fit rows at the peak).
fn select(parts: &[(&Features, &[i64])]) -> Features {
    let n: i64 = parts.iter().map(|(_, idx)| idx.len() as i64).sum();
    let (f0, _) = parts[0];
    let x = Tensor::empty([n, f0.x.size()[1]], (f0.x.kind(), f0.x.device()));
    let y = Tensor::empty([n], (f0.y.kind(), f0.y.device()));
    let mut at = 0;
    for (f, idx) in parts {
        let len = idx.len() as i64;
        let idx = Tensor::from_slice(idx).to_kind(Kind::Int64).to_device(f.x.device());
        let _ = f.x.index_select_out(&x.narrow(0, at, len), 0, &idx);
        let _ = f.y.index_select_out(&y.narrow(0, at, len), 0, &idx);
        at += len;
    }
    Features { x, y }
}
