//! The evaluation protocol: a seeded stratified validation split of train, the head fitted
//! and chosen on it (mirrored views included as configured), then one scoring of the test
//! split with the final head.
use super::fit::{fit, Fitted, TrainingData};
use super::kernel;
use super::metrics::{self, Metrics};
use super::{KernelViews, ProbeConfig, Solver};
use crate::data::split;
use crate::features::{FeatureSet, Features};
use anyhow::{ensure, Result};
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

/// Fits and scores the probe on `set`. The kernel readout consumes the set's train features
/// (see `kernel_rows`); every solver leaves the test features, names and provenance.
pub fn evaluate(set: &mut FeatureSet, cfg: &ProbeConfig, device: Device) -> Result<Evaluation> {
    let classes = set.class_names.len();
    let parts = split::stratified(&set.train.y, classes, cfg.val_fraction, cfg.seed);
    let (fitted, n_train) = if cfg.solver == Solver::Kernel {
        let (rows, flipped) = kernel_rows(set, &parts, cfg.kernel_views)?;
        let m = parts.fit.len() as i64;
        (kernel::fit(rows, flipped, m, classes, cfg, device)?, m)
    } else {
        fit_linear(set, &parts, classes, cfg, device)?
    };
    // The only place the test split meets the head: after every choice is made, and never
    // in a --val-only screening run.
    let test = if cfg.val_only {
        None
    } else {
        let head = &fitted.head;
        let logits = match &set.test_flip {
            // The pair kernel is linear in each view's kernel values: the mean of the two
            // views' logits is the logit of the mean over all four pairs.
            Some(tf) if head.kernel.as_ref().is_some_and(|k| k.pairs()) => {
                mean_view(&head.logits(&set.test.x)?, &head.logits(&tf.x)?)
            }
            Some(tf) => head.logits(&mean_view(&set.test.x, &tf.x))?,
            None => head.logits(&set.test.x)?,
        };
        Some(metrics::score(&logits, &set.test.y, classes))
    };
    Ok(Evaluation { fitted, val_indices: parts.val, n_train, n_test: set.test.y.size()[0], test })
}

/// Test-time flip: a linear head's mean logit over two views is its logit of their mean
/// (and so is the kernel head's, with one support row per image).
fn mean_view(a: &Tensor, b: &Tensor) -> Tensor {
    (a + b) / 2.0
}

/// The linear heads (L-BFGS and the gradient solvers): fitted on the fit rows and their
/// mirrored views, chosen on validation, refit on every train row.
fn fit_linear(
    set: &FeatureSet,
    parts: &split::SplitIndices,
    classes: usize,
    cfg: &ProbeConfig,
    device: Device,
) -> Result<(Fitted, i64)> {
    let (train, train_flip) = (&set.train, set.train_flip.as_ref());
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
    Ok((fit(data, cfg, device)?, n_train))
}

/// The kernel readout's rows: one per image (the views merged, see `merge_views`), the fit
/// rows first and the validation rows after, gathered into one allocation. The set's own
/// train features are then freed: the Gram matrix (10 GB at 50k rows) must not sit beside
/// two copies of them (at 18,432 features each is 3.7 GB; with both, 3×3-cell patch
/// features peaked at 21.2 GB). With `--kernel-views pairs` the mirrored train views come
/// back too, in the same order, and the test views stay apart.
fn kernel_rows(
    set: &mut FeatureSet,
    parts: &split::SplitIndices,
    views: KernelViews,
) -> Result<(Features, Option<Tensor>)> {
    let order = [parts.fit.as_slice(), parts.val.as_slice()];
    let free = |f: &mut Features| {
        let (d, kind, device) = (f.x.size()[1], f.x.kind(), f.x.device());
        f.x = Tensor::empty([0, d], (kind, device));
    };
    if views == KernelViews::Mean {
        merge_views(set);
        let rows = select(&[(&set.train, order[0]), (&set.train, order[1])]);
        free(&mut set.train);
        return Ok((rows, None));
    }
    let Some(mut flip) = set.train_flip.take() else {
        anyhow::bail!("--kernel-views pairs compares both mirrored views of each image: extract with --hflip")
    };
    ensure!(flip.y.equal(&set.train.y), "--kernel-views pairs: the mirrored train views are not row for row");
    let rows = select(&[(&set.train, order[0]), (&set.train, order[1])]);
    free(&mut set.train);
    let flipped = select(&[(&flip, order[0]), (&flip, order[1])]).x;
    free(&mut flip);
    Ok((rows, Some(flipped)))
}

/// The kernel readout's Gram matrix grows with the rows squared, so it sees one row per
/// image: the mean of its two views' features where there are two (train and test). The
/// mean is written over the first view and the second is freed, so the per-view copies do
/// not sit beside the 10 GB matrix (at 12,288 features they are 5.9 GB). (a + b)/2 in place
/// is the same float32 arithmetic as a new tensor.
fn merge_views(set: &mut FeatureSet) {
    tch::no_grad(|| {
        for (x, flip) in [(&mut set.train, set.train_flip.take()), (&mut set.test, set.test_flip.take())] {
            if let Some(flip) = flip {
                let _ = x.x.g_add_(&flip.x).g_div_scalar_(2.0);
            }
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// n rows of 3 random features, labels alternating between two classes.
    fn part(n: i64) -> Features {
        Features {
            x: Tensor::randn([n, 3], (Kind::Float, Device::Cpu)),
            y: Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(2),
        }
    }

    /// A two-class set of the given parts.
    fn two_class_set(
        train: Features,
        test: Features,
        train_flip: Option<Features>,
        test_flip: Option<Features>,
    ) -> FeatureSet {
        FeatureSet { train, test, train_flip, test_flip, class_names: vec!["a".into(), "b".into()], provenance: vec![] }
    }

    #[test]
    fn merged_views_are_the_mean_of_both_and_the_mirrored_copies_are_freed() {
        tch::manual_seed(3);
        let part = |n: i64| Features {
            x: Tensor::randn([n, 5], (Kind::Float, Device::Cpu)),
            y: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
        };
        let (train, flip, test, test_flip) = (part(6), part(6), part(4), part(4));
        let want_train = (&train.x + &flip.x) / 2.0;
        let want_test = (&test.x + &test_flip.x) / 2.0;
        let mut set = FeatureSet {
            train,
            test,
            train_flip: Some(flip),
            test_flip: Some(test_flip),
            class_names: vec!["a".into()],
            provenance: vec![],
        };
        merge_views(&mut set);
        assert!(set.train_flip.is_none() && set.test_flip.is_none());
        assert!(set.train.x.equal(&want_train) && set.test.x.equal(&want_test));
    }

    #[test]
    fn kernel_rows_are_the_fit_rows_then_the_validation_rows_and_the_set_lets_go_of_its_copy() {
        tch::manual_seed(4);
        let (train, flip) = (part(8), part(8));
        let merged = (&train.x + &flip.x) / 2.0;
        let mut set = two_class_set(train, part(2), Some(flip), None);
        let parts = split::SplitIndices { fit: vec![0, 2, 3, 5, 6, 7], val: vec![1, 4] };
        let (rows, flipped) = kernel_rows(&mut set, &parts, KernelViews::Mean).unwrap();
        assert!(flipped.is_none());
        let order = Tensor::from_slice(&[0i64, 2, 3, 5, 6, 7, 1, 4]);
        assert!(rows.x.equal(&merged.index_select(0, &order)));
        assert!(rows.y.equal(&order.remainder(2)));
        assert_eq!(set.train.x.size(), [0, 3], "the set's train features are freed");
        assert!(set.train_flip.is_none());
    }

    /// `--kernel-views pairs`: both views in the same order, the test views left apart, the
    /// set's train copies freed; without mirrored train views it is an error.
    #[test]
    fn pair_rows_are_both_views_in_the_same_order() {
        tch::manual_seed(5);
        let (train, flip, test, test_flip) = (part(8), part(8), part(2), part(2));
        let (want_a, want_b, want_test) = (train.x.copy(), flip.x.copy(), test_flip.x.copy());
        let mut set = two_class_set(train, test, Some(flip), Some(test_flip));
        let parts = split::SplitIndices { fit: vec![0, 2, 3, 5, 6, 7], val: vec![1, 4] };
        let (rows, flipped) = kernel_rows(&mut set, &parts, KernelViews::Pairs).unwrap();
        let order = Tensor::from_slice(&[0i64, 2, 3, 5, 6, 7, 1, 4]);
        assert!(rows.x.equal(&want_a.index_select(0, &order)));
        assert!(flipped.unwrap().equal(&want_b.index_select(0, &order)));
        assert!(rows.y.equal(&order.remainder(2)));
        assert_eq!(set.train.x.size(), [0, 3]);
        assert!(set.train_flip.is_none());
        assert!(set.test_flip.as_ref().unwrap().x.equal(&want_test), "the test views stay as they are");

        let mut single = two_class_set(part(8), part(2), None, None);
        let err = kernel_rows(&mut single, &parts, KernelViews::Pairs).err().unwrap();
        assert!(err.to_string().contains("--hflip"), "{err}");
    }
}
