//! The linear probe: multinomial logistic regression on frozen features, the protocol
//! of CLIP's linear-probe evaluation. Features are scaled with statistics of the training
//! part only; the L2 strength is either given or chosen on a seeded stratified validation
//! split by a coarse-to-fine log-grid search, then the head is refit on train+val. The test
//! split is never passed in here: it is scored once, by the caller, with the final head.
pub mod lbfgs;
pub mod metrics;
pub mod train;

use crate::features::Features;
use anyhow::{ensure, Context, Result};
use clap::ValueEnum;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// Full-batch L-BFGS on the exact regularised objective (cnnprobe's own, on tch tensors).
    Lbfgs,
    Adamw,
    Adam,
    /// SGD with Nesterov momentum 0.9.
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Zero mean, unit variance per feature (train statistics).
    Standardize,
    /// Each feature vector scaled to unit L2 norm.
    L2,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    /// ×0.1 at 50% and 75% of the epochs.
    Step,
    Constant,
}

/// Settings of the head's training.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeSettings {
    pub solver: Solver,
    pub normalize: Normalize,
    /// The L2 strength: AdamW's decoupled decay, Adam/SGD's L2 term, or λ in L-BFGS's
    /// mean-loss + λ/2‖W‖² objective. Ignored when `wd_search` is on.
    pub weight_decay: f64,
    pub wd_search: bool,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub schedule: Schedule,
    /// Stop when validation loss has not improved for this many epochs (0: never).
    pub patience: usize,
    /// L-BFGS iteration cap per fit.
    pub max_iter: usize,
    pub seed: u64,
    /// Stop after the search: no refit, and the caller never scores the test split.
    pub val_only: bool,
}

/// One row of epochs.csv.
#[derive(Clone, Debug)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_acc: f64,
    pub val_loss: f64,
    pub lr: f64,
    pub elapsed_s: f64,
}

/// One evaluated point of the regularisation search.
#[derive(Clone, Debug)]
pub struct GridPoint {
    pub stage: &'static str,
    pub weight_decay: f64,
    pub val_acc: f64,
    pub steps: usize,
}

/// Feature scaling, fitted on training rows only and saved with the head.
pub struct Scaler {
    pub kind: Normalize,
    pub mean: Option<Tensor>,
    pub std: Option<Tensor>,
}

impl Scaler {
    pub fn fit(x: &Tensor, kind: Normalize) -> Scaler {
        match kind {
            Normalize::Standardize => Scaler {
                kind,
                mean: Some(x.mean_dim(0, true, Kind::Float)),
                // Population std, floored so constant (e.g. dead-ReLU) features stay finite.
                std: Some(x.std_correction(0, 0, true).clamp_min(1e-6)),
            },
            _ => Scaler { kind, mean: None, std: None },
        }
    }

    /// Scales `x` in place (no second feature-sized matrix).
    pub fn apply_in_place(&self, x: &mut Tensor) {
        match (self.kind, &self.mean, &self.std) {
            (Normalize::Standardize, Some(m), Some(s)) => {
                let _ = x.g_sub_(&m.to_device(x.device())).g_div_(&s.to_device(x.device()));
            }
            _ => *x = self.apply(x),
        }
    }

    pub fn apply(&self, x: &Tensor) -> Tensor {
        match (self.kind, &self.mean, &self.std) {
            (Normalize::Standardize, Some(m), Some(s)) => (x - m.to_device(x.device())) / s.to_device(x.device()),
            (Normalize::L2, _, _) => x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12),
            _ => x.shallow_clone(),
        }
    }
}

/// A trained head: scaling, then logits = x·Wᵀ + b.
pub struct Head {
    pub w: Tensor,
    pub b: Tensor,
    pub scaler: Scaler,
}

impl Head {
    pub fn logits(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = self.scaler.apply(&x.to_device(self.w.device()));
            x.mm(&self.w.tr()) + &self.b
        })
    }

    /// Weights and scaling statistics as safetensors (written to a temp name, then renamed).
    pub fn save(&self, path: &Path) -> Result<()> {
        let cpu = |t: &Tensor| t.to_device(Device::Cpu).contiguous();
        let mut named = vec![("weight".to_string(), cpu(&self.w)), ("bias".to_string(), cpu(&self.b))];
        if let (Some(m), Some(s)) = (&self.scaler.mean, &self.scaler.std) {
            named.push(("feature_mean".into(), cpu(&m.squeeze_dim(0))));
            named.push(("feature_std".into(), cpu(&s.squeeze_dim(0))));
        }
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("--save-head: cannot create {}", dir.display()))?;
        let tmp = tempfile::Builder::new().prefix(".head.").suffix(".safetensors").tempfile_in(dir)?.into_temp_path();
        Tensor::write_safetensors(&named, &tmp)
            .with_context(|| format!("--save-head: cannot write {}", path.display()))?;
        crate::files::make_public(&tmp)?;
        tmp.persist(path).with_context(|| format!("--save-head: cannot move the file to {}", path.display()))?;
        Ok(())
    }
}

/// What fitting produced, for the logs.
pub struct Fitted {
    pub head: Head,
    pub chosen_weight_decay: f64,
    pub grid: Vec<GridPoint>,
    /// Epoch log of the final fit (gradient solvers; empty for L-BFGS).
    pub epochs: Vec<EpochLog>,
    pub best_epoch: usize,
    /// Validation accuracy of the chosen setting, measured before any refit.
    pub val_acc: f64,
    /// Whether the final head was refit on train+val.
    pub refit: bool,
    pub fit_s: f64,
}

/// Moves features to the device when they fit; otherwise keeps them on the CPU and the
/// gradient solvers move mini-batches (L-BFGS, which needs all rows at once, then runs on the CPU).
fn place(x: &Tensor, device: Device) -> Tensor {
    if device == Device::Cpu {
        return x.shallow_clone();
    }
    match x.f_to_device(device) {
        Ok(t) => t,
        Err(_) => {
            eprintln!("warning: features do not fit on {device:?}; keeping them in host memory");
            x.shallow_clone()
        }
    }
}

/// Fits the head on `fit`, using `val` only to choose (regularisation, epoch). Validation
/// is scored on `val_view` when given (e.g. the mean of two views of each image), else on
/// `val.x`. The refit on train+val also gets `refit_extra` (e.g. flipped validation images).
pub fn fit(
    fit: Features,
    val: &Features,
    val_view: Option<&Tensor>,
    refit_extra: Option<&Features>,
    classes: usize,
    s: &ProbeSettings,
    device: Device,
) -> Result<Fitted> {
    ensure!(fit.x.size()[0] > 0, "the training split is empty");
    ensure!(val.x.size()[0] > 0, "the validation split is empty: use more data or a larger --val-fraction");
    let start = Instant::now();
    let c = classes as i64;
    let (x_raw, y) = (place(&fit.x, device), place(&fit.y, device));
    let (xv_raw, yv) = (place(&val.x, device), place(&val.y, device));
    // What validation is scored on; the refit trains on the plain rows `xv_raw`.
    let xv_score = val_view.map(|v| place(v, device)).unwrap_or_else(|| xv_raw.shallow_clone());

    if !s.wd_search {
        let scaler = Scaler::fit(&x_raw, s.normalize);
        let (x, xv) = (scaler.apply(&x_raw), scaler.apply(&xv_score));
        let (w, b, epochs, best_epoch, val_acc, steps) =
            solve((&x, &y), Some((&xv, &yv)), c, s.weight_decay, s, device, None)?;
        let grid = vec![GridPoint { stage: "fixed", weight_decay: s.weight_decay, val_acc, steps }];
        return Ok(Fitted {
            head: Head { w, b, scaler },
            chosen_weight_decay: s.weight_decay,
            grid,
            epochs,
            best_epoch,
            val_acc,
            refit: false,
            fit_s: start.elapsed().as_secs_f64(),
        });
    }

    // Search on (fit, val), with the fit part's scaling.
    let scaler = Scaler::fit(&x_raw, s.normalize);
    let (x, xv) = (scaler.apply(&x_raw), scaler.apply(&xv_score));
    let mut grid: Vec<GridPoint> = Vec::new();
    // L-BFGS solutions (W, b) by strength: warm starts for the next point and the refit.
    let mut solutions: Vec<(f64, (Tensor, Tensor))> = Vec::new();
    let nearest = |sol: &[(f64, (Tensor, Tensor))], wd: f64| -> Option<(Tensor, Tensor)> {
        sol.iter()
            .min_by(|a, b| (a.0.ln() - wd.ln()).abs().total_cmp(&(b.0.ln() - wd.ln()).abs()))
            .map(|(_, (w, b))| (w.shallow_clone(), b.shallow_clone()))
    };
    let basis = (s.solver == Solver::Lbfgs).then(|| lbfgs::Basis::new(&x, &y, c));
    let mut score = |wd: f64, stage: &'static str, grid: &mut Vec<GridPoint>| -> Result<()> {
        crate::interrupt::check()?;
        let (val_acc, steps) = match s.solver {
            Solver::Lbfgs => {
                let p = basis.as_ref().expect("L-BFGS basis").problem(wd);
                let start = nearest(&solutions, wd).map(|(w, b)| p.pack(&w, &b)).unwrap_or_else(|| p.zeros());
                let sol = lbfgs::minimize(&p, start, s.max_iter, LBFGS_TOL);
                let (w, b) = p.unpack(&sol.theta);
                let acc = metrics::accuracy(&(xv.mm(&w.tr()) + &b), &yv);
                solutions.push((wd, (w, b)));
                (acc, sol.iterations)
            }
            _ => {
                let t = train::train(&x, &y, Some((&xv, &yv)), c, wd, s, device)?;
                (t.val_acc, t.best_epoch)
            }
        };
        grid.push(GridPoint { stage, weight_decay: wd, val_acc, steps });
        Ok(())
    };
    // Coarse: decades from strong to weak regularisation (each warm-starts from the last).
    for k in (-6..=-1).rev() {
        score(10f64.powi(k), "coarse", &mut grid)?;
    }
    let best_coarse = best_point(&grid);
    // Fine: half a decade either side of the best coarse value.
    for f in [0.5, -0.5] {
        score(best_coarse * 10f64.powf(f), "fine", &mut grid)?;
    }
    let chosen = best_point(&grid);
    let val_acc = grid.iter().filter(|g| g.weight_decay == chosen).map(|g| g.val_acc).fold(f64::MIN, f64::max);
    let warm = nearest(&solutions, chosen);
    if s.val_only {
        // A study's screening run: the head fitted on the fit part, no refit.
        let (w, b) = match warm {
            Some(wb) => wb,
            None => {
                let (w, b, ..) = solve((&x, &y), None, c, chosen, s, device, None)?;
                (w, b)
            }
        };
        return Ok(Fitted {
            head: Head { w, b, scaler },
            chosen_weight_decay: chosen,
            grid,
            epochs: Vec::new(),
            best_epoch: 0,
            val_acc,
            refit: false,
            fit_s: start.elapsed().as_secs_f64(),
        });
    }
    // The search's matrices are as large as the features: free them before the refit's.
    drop((basis, solutions, x, xv));

    // Refit on train+val with the chosen strength; scaling from all of train.
    let (mut all_x, mut all_y) = (Tensor::cat(&[&x_raw, &xv_raw], 0), Tensor::cat(&[&y, &yv], 0));
    if let Some(extra) = refit_extra {
        all_x = Tensor::cat(&[all_x, place(&extra.x, device)], 0);
        all_y = Tensor::cat(&[all_y, place(&extra.y, device)], 0);
    }
    drop((x_raw, xv_raw, xv_score, fit));
    let scaler = Scaler::fit(&all_x, s.normalize);
    let mut ax = all_x;
    scaler.apply_in_place(&mut ax);
    let mut refit_settings = s.clone();
    if s.solver != Solver::Lbfgs {
        // The epoch count that won on validation for the chosen strength.
        refit_settings.epochs =
            grid.iter().find(|g| g.weight_decay == chosen).map(|g| g.steps.max(1)).unwrap_or(s.epochs);
    }
    let (w, b, epochs, best_epoch, _, _) = solve((&ax, &all_y), None, c, chosen, &refit_settings, device, warm)?;
    Ok(Fitted {
        head: Head { w, b, scaler },
        chosen_weight_decay: chosen,
        grid,
        epochs,
        best_epoch,
        val_acc,
        refit: true,
        fit_s: start.elapsed().as_secs_f64(),
    })
}

/// L-BFGS stops when the gradient's max-norm (mean-loss units) is below this: scikit-learn's
/// default `tol` for its lbfgs solver.
const LBFGS_TOL: f64 = 1e-4;

/// Highest validation accuracy; ties go to the stronger regularisation.
fn best_point(grid: &[GridPoint]) -> f64 {
    let mut best = &grid[0];
    for g in grid {
        if g.val_acc > best.val_acc || (g.val_acc == best.val_acc && g.weight_decay > best.weight_decay) {
            best = g;
        }
    }
    best.weight_decay
}

type Solved = (Tensor, Tensor, Vec<EpochLog>, usize, f64, usize);

/// One fit at a fixed strength, with the configured solver.
fn solve(
    (x, y): (&Tensor, &Tensor),
    val: Option<(&Tensor, &Tensor)>,
    classes: i64,
    wd: f64,
    s: &ProbeSettings,
    device: Device,
    warm: Option<(Tensor, Tensor)>,
) -> Result<Solved> {
    match s.solver {
        Solver::Lbfgs => {
            let basis = lbfgs::Basis::new(x, y, classes);
            let p = basis.problem(wd);
            let start = warm.map(|(w, b)| p.pack(&w, &b)).unwrap_or_else(|| p.zeros());
            let sol = lbfgs::minimize(&p, start, s.max_iter, LBFGS_TOL);
            let (w, b) = p.unpack(&sol.theta);
            let val_acc = val.map(|(xv, yv)| metrics::accuracy(&(xv.mm(&w.tr()) + &b), yv)).unwrap_or(f64::NAN);
            Ok((w, b, Vec::new(), 0, val_acc, sol.iterations))
        }
        _ => {
            let t = train::train(x, y, val, classes, wd, s, device)?;
            let (w, b) = (t.w.to_device(device), t.b.to_device(device));
            Ok((w, b, t.epochs, t.best_epoch, t.val_acc, t.best_epoch))
        }
    }
}
