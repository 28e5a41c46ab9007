//! The evaluation protocol: a seeded stratified validation split of train, the head fitted
//! and chosen on it (mirrored views included as configured), then one scoring of the test
//! split with the final head.
use super::fit::{fit, Fitted, TrainingData};
use super::metrics::{self, Metrics};
use super::ProbeConfig;
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
    let mut fit_rows = select(&set.train, &parts.fit);
    let val = select(&set.train, &parts.val);
    // Flipped copies of the fit rows train too; those of the validation rows join only the
    // refit, so no view of a validation image is ever fitted before it is scored.
    let mut refit_extra = None;
    if let Some(flip) = &set.train_flip {
        let f = select(flip, &parts.fit);
        fit_rows = Features { x: Tensor::cat(&[&fit_rows.x, &f.x], 0), y: Tensor::cat(&[&fit_rows.y, &f.y], 0) };
        refit_extra = Some(select(flip, &parts.val));
    }
    // Test-time flip: a linear head's mean logit over two views is its logit of their mean.
    let mean_view = |a: &Tensor, b: &Tensor| (a + b) / 2.0;
    let val_view = match (&refit_extra, set.test_flip.is_some()) {
        (Some(vf), true) => Some(mean_view(&val.x, &vf.x)),
        _ => None,
    };
    let n_train = fit_rows.y.size()[0];
    let data = TrainingData {
        fit: fit_rows,
        val: &val,
        val_view: val_view.as_ref(),
        refit_extra: refit_extra.as_ref(),
        classes,
    };
    let fitted = fit(data, cfg, device)?;
    // The only place the test split meets the head: after every choice is made, and never
    // in a --val-only screening run.
    let test = (!cfg.val_only).then(|| {
        let x = match &set.test_flip {
            Some(tf) => mean_view(&set.test.x, &tf.x),
            None => set.test.x.shallow_clone(),
        };
        metrics::score(&fitted.head.logits(&x), &set.test.y, classes)
    });
    Ok(Evaluation { fitted, val_indices: parts.val, n_train, n_test: set.test.y.size()[0], test })
}

fn select(f: &Features, idx: &[i64]) -> Features {
    let idx = Tensor::from_slice(idx).to_kind(Kind::Int64);
    Features { x: f.x.index_select(0, &idx), y: f.y.index_select(0, &idx) }
}
