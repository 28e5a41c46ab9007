//! Fitting the head: at a given L2 strength, or with the strength chosen on validation by
//! a coarse-to-fine log-grid search and a refit on train+val.
use super::{lbfgs, metrics, train, EpochLog, GridPoint, Head, ProbeConfig, Scaler, Solver};
use crate::features::Features;
use crate::util::interrupt;
use anyhow::{ensure, Result};
use std::time::Instant;
use tch::{Device, Tensor};

/// L-BFGS stops when the gradient's max-norm (mean-loss units) is below this: scikit-learn's
/// default `tol` for its lbfgs solver.
const LBFGS_TOL: f64 = 1e-4;

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

/// The rows a fit sees.
pub struct TrainingData<'a> {
    /// The rows the head is fitted on while `val` chooses. Owned: they are scaled in place.
    pub fit: Features,
    pub val: &'a Features,
    /// What validation is scored on when not `val.x` (e.g. the mean of two views).
    pub val_view: Option<&'a Tensor>,
    /// Every row of the refit on train+val: the fit rows (flipped views included), the
    /// validation rows and their views. Stacked only for that refit (not for --val-only or
    /// a fixed strength), once the search's matrices are freed.
    pub refit: Vec<&'a Features>,
    pub classes: usize,
}

/// One solve at a fixed strength.
struct Solved {
    w: Tensor,
    b: Tensor,
    epochs: Vec<EpochLog>,
    best_epoch: usize,
    val_acc: f64,
    /// L-BFGS iterations, or the best epoch of a gradient solver.
    steps: usize,
}

/// Moves features to the device when they fit; otherwise keeps them on the CPU and the
/// gradient solvers move mini-batches (L-BFGS, which needs all rows at once, then runs on the CPU).
pub(super) fn place(x: Tensor, device: Device) -> Tensor {
    if device == Device::Cpu {
        return x;
    }
    match x.f_to_device(device) {
        Ok(t) => t,
        Err(_) => {
            warn_host(device);
            x
        }
    }
}

/// The one message for features that fall back to host memory (placed or stacked).
fn warn_host(device: Device) {
    eprintln!("warning: features do not fit on {device:?}; keeping them in host memory");
}

/// The parts' rows in one matrix, written into a single allocation (no concatenated
/// temporaries beside it): on `device` when it fits there, else in host memory.
pub(super) fn stack(parts: &[&Features], device: Device) -> Result<(Tensor, Tensor)> {
    let Some(first) = parts.first() else { anyhow::bail!("the refit has no rows") };
    let n: i64 = parts.iter().map(|f| f.x.size()[0]).sum();
    let shape = [n, first.x.size()[1]];
    let x = match Tensor::f_empty(shape, (first.x.kind(), device)) {
        Ok(x) => x,
        Err(_) => {
            warn_host(device);
            Tensor::empty(shape, (first.x.kind(), Device::Cpu))
        }
    };
    let y = Tensor::empty([n], (first.y.kind(), x.device()));
    let mut at = 0;
    for f in parts {
        let len = f.x.size()[0];
        x.narrow(0, at, len).copy_(&f.x);
        y.narrow(0, at, len).copy_(&f.y);
        at += len;
    }
    Ok((x, y))
}

/// Fits the head on `data.fit`, using the validation rows only to choose (strength, epoch).
pub fn fit(data: TrainingData, s: &ProbeConfig, device: Device) -> Result<Fitted> {
    ensure!(data.fit.x.size()[0] > 0, "the training split is empty");
    ensure!(data.val.x.size()[0] > 0, "the validation split is empty: use more data or a larger --val-fraction");
    if s.solver == Solver::Kernel {
        // Fit rows then validation rows, one per image, as kernel::fit takes them. `evaluate`
        // gathers them straight from the feature set (`kernel_rows`), without this copy.
        let (m, classes) = (data.fit.x.size()[0], data.classes);
        let val = Features { x: data.val_view.unwrap_or(&data.val.x).shallow_clone(), y: data.val.y.shallow_clone() };
        let (x, y) = stack(&[&data.fit, &val], device)?;
        drop((data, val));
        return super::kernel::fit(Features { x, y }, None, m, classes, s, device);
    }
    let start = Instant::now();
    let c = data.classes as i64;
    let TrainingData { fit: rows, val, val_view, refit, .. } = data;
    let mut x = place(rows.x, device);
    // Labels live with their features, wherever those ended up.
    let y = rows.y.to_device(x.device());
    let yv = val.y.to_device(x.device());
    let scaler = Scaler::fit(&x, s.normalize);
    scaler.apply_in_place(&mut x);
    let xv = scaler.apply(&val_view.unwrap_or(&val.x).to_device(x.device()));
    let fitted = |head, chosen, grid, solved: Solved, refit| Fitted {
        head,
        chosen_weight_decay: chosen,
        grid,
        epochs: solved.epochs,
        best_epoch: solved.best_epoch,
        val_acc: solved.val_acc,
        refit,
        fit_s: start.elapsed().as_secs_f64(),
    };
    if !s.wd_search {
        let solved = solve((&x, &y), Some((&xv, &yv)), c, s.weight_decay, s, device, Warm::default())?;
        let grid = vec![GridPoint {
            stage: "fixed",
            weight_decay: s.weight_decay,
            val_acc: solved.val_acc,
            steps: solved.steps,
        }];
        let head = Head { w: solved.w.shallow_clone(), b: solved.b.shallow_clone(), scaler, kernel: None };
        return Ok(fitted(head, s.weight_decay, grid, solved, false));
    }
    let mut search = Search::new(&x, &y, (&xv, &yv), c, s, device);
    search.run()?;
    let (chosen, val_acc) = search.chosen();
    let warm = search.nearest(chosen);
    let (grid, whitening) = search.finish();
    if s.val_only {
        // A study's screening run: the head fitted on the fit part, no refit.
        let (w, b) = match warm {
            Some(wb) => wb,
            None => {
                let sol = solve((&x, &y), None, c, chosen, s, device, Warm::default())?;
                (sol.w, sol.b)
            }
        };
        let solved =
            Solved { w: w.shallow_clone(), b: b.shallow_clone(), epochs: vec![], best_epoch: 0, val_acc, steps: 0 };
        return Ok(fitted(Head { w, b, scaler, kernel: None }, chosen, grid, solved, false));
    }
    // The search's matrices are as large as the features: free them before the refit's.
    drop((x, xv, y));
    // Refit on train+val with the chosen strength; scaling from all of its rows.
    let (mut all_x, all_y) = stack(&refit, device)?;
    let scaler = Scaler::fit(&all_x, s.normalize);
    scaler.apply_in_place(&mut all_x);
    let mut refit_settings = s.clone();
    if s.solver != Solver::Lbfgs {
        // The epoch count that won on validation for the chosen strength.
        refit_settings.epochs =
            grid.iter().find(|g| g.weight_decay == chosen).map(|g| g.steps.max(1)).unwrap_or(s.epochs);
    }
    let mut solved = solve((&all_x, &all_y), None, c, chosen, &refit_settings, device, Warm { head: warm, whitening })?;
    solved.val_acc = val_acc;
    let head = Head { w: solved.w.shallow_clone(), b: solved.b.shallow_clone(), scaler, kernel: None };
    Ok(fitted(head, chosen, grid, solved, true))
}

/// The coarse-to-fine search of the L2 strength on (fit, val).
struct Search<'a> {
    x: &'a Tensor,
    y: &'a Tensor,
    val: (&'a Tensor, &'a Tensor),
    classes: i64,
    s: &'a ProbeConfig,
    device: Device,
    basis: Option<lbfgs::Basis<'a>>,
    /// L-BFGS solutions (W, b) by strength: warm starts for the next point and the refit.
    solutions: Vec<(f64, (Tensor, Tensor))>,
    grid: Vec<GridPoint>,
}

impl<'a> Search<'a> {
    fn new(
        x: &'a Tensor,
        y: &'a Tensor,
        val: (&'a Tensor, &'a Tensor),
        c: i64,
        s: &'a ProbeConfig,
        device: Device,
    ) -> Self {
        let basis = (s.solver == Solver::Lbfgs).then(|| lbfgs::Basis::new(x, y, c));
        Search { x, y, val, classes: c, s, device, basis, solutions: Vec::new(), grid: Vec::new() }
    }

    fn run(&mut self) -> Result<()> {
        // Coarse: decades from strong to weak regularisation (each warm-starts from the last).
        for k in (-6..=-1).rev() {
            self.score(10f64.powi(k), "coarse")?;
        }
        let best_coarse = best_point(&self.grid);
        // Fine: half a decade either side of the best coarse value.
        for f in [0.5, -0.5] {
            self.score(best_coarse * 10f64.powf(f), "fine")?;
        }
        Ok(())
    }

    fn score(&mut self, wd: f64, stage: &'static str) -> Result<()> {
        interrupt::check()?;
        let (xv, yv) = self.val;
        let (val_acc, steps) = match &self.basis {
            Some(basis) => {
                let p = basis.problem(wd);
                let start = self.nearest(wd).map(|(w, b)| p.pack(&w, &b)).unwrap_or_else(|| p.zeros());
                let sol = lbfgs::minimize(&p, start, self.s.max_iter, LBFGS_TOL)?;
                let (w, b) = p.unpack(&sol.theta);
                let acc = metrics::accuracy(&(xv.mm(&w.tr()) + &b), yv);
                self.solutions.push((wd, (w, b)));
                (acc, sol.iterations)
            }
            None => {
                let t = train::train(self.x, self.y, Some(self.val), self.classes, wd, self.s, self.device)?;
                (t.val_acc, t.best_epoch)
            }
        };
        self.grid.push(GridPoint { stage, weight_decay: wd, val_acc, steps });
        Ok(())
    }

    /// The L-BFGS solution nearest to `wd` on the log scale, if any.
    fn nearest(&self, wd: f64) -> Option<(Tensor, Tensor)> {
        self.solutions
            .iter()
            .min_by(|a, b| (a.0.ln() - wd.ln()).abs().total_cmp(&(b.0.ln() - wd.ln()).abs()))
            .map(|(_, (w, b))| (w.shallow_clone(), b.shallow_clone()))
    }

    /// The grid, and the eigenbasis for the refit to reuse (L-BFGS).
    fn finish(self) -> (Vec<GridPoint>, Option<lbfgs::Whitening>) {
        (self.grid, self.basis.map(lbfgs::Basis::into_whitening))
    }

    /// The chosen strength and its validation accuracy.
    fn chosen(&self) -> (f64, f64) {
        let chosen = best_point(&self.grid);
        let acc = self.grid.iter().filter(|g| g.weight_decay == chosen).map(|g| g.val_acc).fold(f64::MIN, f64::max);
        (chosen, acc)
    }
}

/// Highest validation accuracy; ties go to the stronger regularisation.
pub(super) fn best_point(grid: &[GridPoint]) -> f64 {
    let mut best = &grid[0];
    for g in grid {
        if g.val_acc > best.val_acc || (g.val_acc == best.val_acc && g.weight_decay > best.weight_decay) {
            best = g;
        }
    }
    best.weight_decay
}

/// Where a solve starts: a solution at a nearby strength, and the eigenbasis of the
/// search's rows for L-BFGS to reuse (the same optimum; it saves the refit an N×D×D product
/// and a D×D eigendecomposition).
#[derive(Default)]
struct Warm {
    head: Option<(Tensor, Tensor)>,
    whitening: Option<lbfgs::Whitening>,
}

/// One fit at a fixed strength, with the configured solver.
fn solve(
    (x, y): (&Tensor, &Tensor),
    val: Option<(&Tensor, &Tensor)>,
    classes: i64,
    wd: f64,
    s: &ProbeConfig,
    device: Device,
    warm: Warm,
) -> Result<Solved> {
    match s.solver {
        Solver::Lbfgs => {
            let basis = match warm.whitening {
                Some(wh) => lbfgs::Basis::with(x, y, classes, wh),
                None => lbfgs::Basis::new(x, y, classes),
            };
            let p = basis.problem(wd);
            let on = |t: Tensor| t.to_device(x.device());
            let start = warm.head.map(|(w, b)| p.pack(&on(w), &on(b))).unwrap_or_else(|| p.zeros());
            let sol = lbfgs::minimize(&p, start, s.max_iter, LBFGS_TOL)?;
            let (w, b) = p.unpack(&sol.theta);
            let val_acc = val.map(|(xv, yv)| metrics::accuracy(&(xv.mm(&w.tr()) + &b), yv)).unwrap_or(f64::NAN);
            Ok(Solved { w, b, epochs: Vec::new(), best_epoch: 0, val_acc, steps: sol.iterations })
        }
        Solver::Kernel => unreachable!("the kernel readout has its own fit"),
        _ => {
            let t = train::train(x, y, val, classes, wd, s, device)?;
            let (w, b) = (t.w.to_device(device), t.b.to_device(device));
            Ok(Solved { w, b, epochs: t.epochs, best_epoch: t.best_epoch, val_acc: t.val_acc, steps: t.best_epoch })
        }
    }
}
