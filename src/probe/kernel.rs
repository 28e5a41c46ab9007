//! `--solver kernel`: kernel ridge regression, one-vs-rest, on the arc-cosine kernel of
//! order 1 (Cho & Saul 2009) of the scaled features: the readout of an infinitely wide
//! random ReLU layer on top of them. With u = x/√D, v = y/√D and θ their angle,
//! k(x, y) = ‖u‖‖v‖ (sin θ + (π − θ) cos θ) / π, so k(x, x) = ‖u‖² ≈ 1 for standardised
//! features. Targets are one-hot minus 1/C; (K + λI) A = Y is solved by conjugate gradients
//! for every λ of the grid at once. The n×n Gram matrix is the cost: 50k rows take 10 GB
//! in float32, so each image is one row (the protocol averages its mirrored views).
use super::fit::{stack, Fitted};
use super::{metrics, GridPoint, Head, ProbeConfig, Scaler, TrainingData};
use crate::util::{interrupt, progress};
use anyhow::{ensure, Result};
use std::f64::consts::PI;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Relative residual ‖Y − (K + λI)A‖/‖Y‖ (per class, the smallest λ's) at which the
/// conjugate gradients stop: far below what changes a prediction, and within float32's reach.
const TOL: f64 = 1e-3;
/// λ (relative to k(x, x) ≈ 1) searched on validation with `--wd-search`: half decades.
/// The smallest sets the iteration count; 1e-3 overfitted on every screen tried (5k
/// CIFAR-10 images: 50% validation against 60% at 3.16e-3).
pub const GRID: [f64; 7] = [3.16e-3, 1e-2, 3.16e-2, 1e-1, 3.16e-1, 1.0, 3.16];
/// Rows per block of kernel values: each block's temporaries are a few of (BLOCK, n) floats.
const BLOCK: i64 = 512;

/// The rows a kernel head compares new rows with (scaled), their norms after the 1/√D, and
/// the training kernel's column means k̄ (1, n) and grand mean k̄̄ for the centring.
pub struct Support {
    pub rows: Tensor,
    norms: Tensor,
    col_means: Tensor,
    grand_mean: f64,
}

impl Support {
    /// `gram` is k over `rows` themselves.
    fn new(rows: Tensor, gram: &Tensor) -> Support {
        let norms = scaled_norms(&rows);
        let col_means = gram.mean_dim(0, true, Kind::Float);
        let grand_mean = col_means.mean(Kind::Float).double_value(&[]);
        Support { rows, norms, col_means, grand_mean }
    }

    /// The centred kernel k(x, s_j) − m(x) − k̄_j + k̄̄ for scaled rows x, m(x) the mean over
    /// j: (m, n), on the support's device. Centring before the product with the weights
    /// keeps the kernel's large constant part (k ≈ 0.3 between unrelated rows) out of a sum
    /// of 45k terms whose weights grow as 1/λ: uncentred, float32 rounding there cost the
    /// small λ most of their validation accuracy.
    pub fn map(&self, x: &Tensor) -> Tensor {
        let x = x.to_device(self.rows.device());
        let mut out = Tensor::empty([x.size()[0], self.rows.size()[0]], (Kind::Float, x.device()));
        fill(&out, &x, &self.rows, &self.norms);
        let row_means = out.mean_dim(1, true, Kind::Float);
        let _ = out.g_sub_(&row_means).g_sub_(&self.col_means).g_add_scalar_(self.grand_mean);
        out
    }
}

/// ‖x_i‖/√D as a column.
fn scaled_norms(x: &Tensor) -> Tensor {
    let d = x.size()[1] as f64;
    (x.square().sum_dim_intlist(1, true, Kind::Float) / d).sqrt()
}

/// Writes k(a_i, b_j) into `out` (m, n), block by block, with `nb` the norms of b's rows.
fn fill(out: &Tensor, a: &Tensor, b: &Tensor, nb: &Tensor) {
    let (m, d) = (a.size()[0], a.size()[1] as f64);
    let nb = nb.view([1, -1]);
    let bt = b.tr();
    let bar = progress::rows(m as u64, "kernel");
    tch::no_grad(|| {
        for i in (0..m).step_by(BLOCK as usize) {
            let len = BLOCK.min(m - i);
            let rows = a.narrow(0, i, len);
            let mut g = out.narrow(0, i, len);
            let _ = rows.mm_out(&g, &bt);
            let norms = &scaled_norms(&rows) * &nb;
            // cos θ = ⟨u, v⟩ / (‖u‖‖v‖), clamped against rounding; a zero row gives k = 0.
            let cos = (&g / d / norms.clamp_min(1e-12)).clamp(-1.0, 1.0);
            let theta = cos.acos();
            let k = norms * (theta.sin() + (-theta + PI) * &cos) / PI;
            g.copy_(&k);
            bar.inc(len as u64);
        }
    });
    bar.finish_and_clear();
}

/// The Gram matrix k(x_i, x_j) of scaled rows, (n, n) on x's device.
fn gram(x: &Tensor) -> Result<Tensor> {
    let n = x.size()[0];
    let out = Tensor::f_empty([n, n], (Kind::Float, x.device()))
        .map_err(|e| anyhow::anyhow!("--solver kernel: no room for the {n}×{n} kernel matrix ({e})"))?;
    fill(&out, x, x, &scaled_norms(x));
    Ok(out)
}

/// One-vs-rest targets: one-hot minus 1/C, (n, C).
fn targets(y: &Tensor, classes: i64) -> Tensor {
    y.one_hot(classes).to_kind(Kind::Float) - 1.0 / classes as f64
}

/// Solves (HKH + λ_j I) A_j = HY for every λ_j of `lambdas` (ascending), H the centring
/// of the rows (kernel ridge with an intercept), with one run of conjugate gradients on the
/// smallest λ. Krylov spaces do not change with a shift, so each other system's residual
/// stays a multiple ζ_j of the base residual and its solution follows from scalar
/// recurrences (multi-shift CG: Jegerlehner 1996; Frommer 2003); a system is left alone once
/// its own residual is below `TOL`. Centring takes the kernel's large constant direction
/// out of the spectrum, which the iteration count depends on. Each class column is its own
/// system. Returns the solutions and the iterations run.
pub fn solve_shifted(k: &Tensor, y: &Tensor, lambdas: &[f64], max_iter: usize) -> Result<(Vec<Tensor>, usize)> {
    ensure!(!lambdas.is_empty(), "no λ to solve for");
    let base = lambdas[0];
    let shifts: Vec<f64> = lambdas.iter().map(|l| l - base).collect();
    let c = y.size()[1];
    let center = |t: &Tensor| t - t.mean_dim(0, true, Kind::Float);
    let col_sq = |t: &Tensor| t.square().sum_dim_intlist(0, true, Kind::Float);
    let y = center(y);
    let y_norm = col_sq(&y).sqrt().clamp_min(1e-30);
    let ones = || Tensor::ones([1, c], (Kind::Float, y.device()));
    let mut r = y.copy();
    let mut rr = col_sq(&r);
    let mut xs: Vec<Tensor> = shifts.iter().map(|_| y.zeros_like()).collect();
    let mut ps: Vec<Tensor> = shifts.iter().map(|_| y.copy()).collect();
    // ζ_{k−1} and ζ_k per shift; α_{k−1}, β_{k−1} of the base system.
    let mut zeta_prev: Vec<Tensor> = shifts.iter().map(|_| ones()).collect();
    let mut zeta: Vec<Tensor> = shifts.iter().map(|_| ones()).collect();
    let mut active = vec![true; shifts.len()];
    let (mut alpha_prev, mut beta_prev) = (ones(), ones() * 0.0);
    let mut iterations = 0;
    let bar = progress::steps(max_iter as u64, "kernel CG");
    tch::no_grad(|| -> Result<()> {
        while iterations < max_iter {
            // System j's residual is |ζ_j| times the base one, column by column.
            let base_res = rr.sqrt() / &y_norm;
            for (j, on) in active.iter_mut().enumerate() {
                *on = *on && (&base_res * zeta[j].abs()).max().double_value(&[]) >= TOL;
            }
            if !active[0] {
                break;
            }
            interrupt::check()?;
            // The base system's p is shift 0's (its ζ stays 1). K·p as p's rows against K's
            // (`linear`, K symmetric): MKL's GEMM with a 10-column right side measured 2×
            // slower on these CPUs; this step reads all of K, so its speed is the solver's.
            let p = &ps[0];
            let kp = k.linear::<&Tensor>(&center(p).tr().contiguous(), None);
            let ap = center(&kp) + p * base;
            let alpha = &rr / (p * &ap).sum_dim_intlist(0, true, Kind::Float).clamp_min(1e-30);
            let _ = r.g_sub_(&(&ap * &alpha));
            let rr_next = col_sq(&r);
            let beta = &rr_next / rr.clamp_min(1e-30);
            for (j, &sigma) in shifts.iter().enumerate().filter(|(j, _)| active[*j]) {
                let z = &zeta[j] * &zeta_prev[j] * &alpha_prev
                    / (&alpha * &beta_prev * (&zeta_prev[j] - &zeta[j])
                        + &zeta_prev[j] * &alpha_prev * (&alpha * sigma + 1.0));
                let _ = xs[j].g_add_(&(&ps[j] * (&alpha * &z / &zeta[j])));
                let b_j = &beta * (&z / &zeta[j]).square();
                ps[j] = &r * &z + &ps[j] * b_j;
                zeta_prev[j] = std::mem::replace(&mut zeta[j], z);
            }
            (alpha_prev, beta_prev, rr) = (alpha, beta, rr_next);
            iterations += 1;
            bar.inc(1);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok((xs, iterations))
}

/// Fits the kernel head: λ chosen on validation among `GRID` (or `--weight-decay` as λ),
/// then a refit on train+val unless `--val-only`.
pub fn fit(data: TrainingData, s: &ProbeConfig, device: Device) -> Result<Fitted> {
    let start = Instant::now();
    let c = data.classes as i64;
    let TrainingData { fit: rows, val, val_view, refit, .. } = data;
    let mut x = super::fit::place(rows.x, device);
    let scaler = Scaler::fit(&x, s.normalize);
    scaler.apply_in_place(&mut x);
    let y = targets(&rows.y.to_device(x.device()), c);
    let lambdas: Vec<f64> = if s.wd_search { GRID.to_vec() } else { vec![s.weight_decay] };
    ensure!(lambdas[0] > 0.0, "--solver kernel needs λ (--weight-decay) > 0");
    let n = x.size()[0];
    eprintln!("kernel: {n}×{n} arc-cosine Gram matrix ({:.1} GB)", (n * n * 4) as f64 / 1e9);
    let k = gram(&x)?;
    let cg = Instant::now();
    let (solutions, iterations) = solve_shifted(&k, &y, &lambdas, s.max_iter)?;
    eprintln!(
        "kernel: {} λ in {iterations} conjugate-gradient steps, {:.1} s",
        lambdas.len(),
        cg.elapsed().as_secs_f64()
    );
    // Centred kernel ridge: f(x) = k_c(x, ·)·A + mean(Y).
    let ymean = y.mean_dim(0, false, Kind::Float);
    let support = Support::new(x, &k);
    drop(k);
    let kv = support.map(&scaler.apply(&val_view.unwrap_or(&val.x).to_device(support.rows.device())));
    let yv = val.y.to_device(kv.device());
    let grid: Vec<GridPoint> = lambdas
        .iter()
        .zip(&solutions)
        .map(|(&l, a)| GridPoint {
            stage: if s.wd_search { "kernel" } else { "fixed" },
            weight_decay: l,
            val_acc: metrics::accuracy(&(kv.mm(a) + &ymean), &yv),
            steps: iterations,
        })
        .collect();
    drop(kv);
    let best = super::fit::best_point(&grid);
    let (chosen, val_acc) =
        grid.iter().find(|g| g.weight_decay == best).map(|g| (g.weight_decay, g.val_acc)).expect("in the grid");
    let alpha = solutions.into_iter().zip(&lambdas).find(|(_, &l)| l == chosen).map(|(a, _)| a).expect("in the grid");
    let b = ymean;
    let head = |support: Support, alpha: Tensor, b: Tensor, scaler: Scaler| Head {
        w: alpha.tr().contiguous(),
        b,
        scaler,
        kernel: Some(support),
    };
    let done = |head, refit| Fitted {
        head,
        chosen_weight_decay: chosen,
        grid: grid.clone(),
        epochs: vec![],
        best_epoch: 0,
        val_acc,
        refit,
        fit_s: start.elapsed().as_secs_f64(),
    };
    if s.val_only || !s.wd_search {
        return Ok(done(head(support, alpha, b, scaler), false));
    }
    // The refit on train+val: its own scaling and Gram matrix, once the search's are freed.
    drop((support, alpha, b));
    let (mut all_x, all_y) = stack(&refit, device)?;
    let scaler = Scaler::fit(&all_x, s.normalize);
    scaler.apply_in_place(&mut all_x);
    let all_y = targets(&all_y, c);
    let k = gram(&all_x)?;
    let (mut solved, _) = solve_shifted(&k, &all_y, &[chosen], s.max_iter)?;
    let support = Support::new(all_x, &k);
    drop(k);
    let b = all_y.mean_dim(0, false, Kind::Float);
    Ok(done(head(support, solved.remove(0), b, scaler), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_solutions_equal_direct_solves() {
        tch::manual_seed(0);
        let n = 60;
        let x = Tensor::randn([n, 8], (Kind::Float, Device::Cpu));
        let k = gram(&x).unwrap();
        let y = targets(&Tensor::randint(3, [n], (Kind::Int64, Device::Cpu)), 3);
        let lambdas = [0.05, 0.2, 1.0, 30.0];
        let (xs, iterations) = solve_shifted(&k, &y, &lambdas, 500).unwrap();
        assert!(iterations > 3 && iterations < 500, "{iterations} iterations");
        // H K H + λI against the centred targets, solved directly in float64.
        let h = Tensor::eye(n, (Kind::Double, Device::Cpu)) - 1.0 / n as f64;
        let kc = h.mm(&k.to_kind(Kind::Double)).mm(&h);
        let yc = h.mm(&y.to_kind(Kind::Double));
        for (a, l) in xs.iter().zip(lambdas) {
            let shifted = &kc + Tensor::eye(n, (Kind::Double, Device::Cpu)) * l;
            let direct = Tensor::linalg_solve(&shifted, &yc, true);
            let err = (a.to_kind(Kind::Double) - &direct).norm().double_value(&[]) / direct.norm().double_value(&[]);
            assert!(err < 1e-2, "λ {l}: relative error {err}");
        }
    }

    #[test]
    fn the_kernel_is_the_arc_cosine_formula() {
        let a = Tensor::from_slice(&[3.0f32, 0.0, 1.0, 1.0]).view([2, 2]);
        let k = gram(&a).unwrap();
        // u = a/√2: ‖u0‖ = 3/√2, ‖u1‖ = 1, θ = 45°.
        let (n0, t) = (3.0 / 2f64.sqrt(), PI / 4.0);
        let want01 = n0 * (t.sin() + (PI - t) * t.cos()) / PI;
        assert!((k.double_value(&[0, 1]) - want01).abs() < 1e-5);
        assert!((k.double_value(&[0, 0]) - 4.5).abs() < 1e-5, "k(x, x) = ‖x‖²/D");
        assert!((k.double_value(&[1, 0]) - want01).abs() < 1e-5);
    }
}
