//! Full-batch L-BFGS for L2-regularised multinomial logistic regression on tch tensors
//! (tch has no L-BFGS). Objective, as scikit-learn's with C = 1/(λ·n):
//!   f(W, b) = mean_i CE(x_i·Wᵀ + b, y_i) + λ/2·‖W‖²   (the bias is not penalised).
//! The gradient is written out (softmax − one-hot), so no autograd graph is built.
use tch::{Kind, Tensor};

/// Parameters as one flat vector [W (C×D) row-major, b (C)], so L-BFGS's history is plain dots.
pub struct Problem<'a> {
    pub x: &'a Tensor,
    /// One-hot labels, float (N, C).
    pub onehot: Tensor,
    pub lambda: f64,
    pub classes: i64,
    pub dim: i64,
}

impl<'a> Problem<'a> {
    pub fn new(x: &'a Tensor, y: &Tensor, classes: i64, lambda: f64) -> Self {
        let onehot = y.one_hot(classes).to_kind(x.kind());
        Problem { x, onehot, lambda, classes, dim: x.size()[1] }
    }

    fn split(&self, theta: &Tensor) -> (Tensor, Tensor) {
        let w = theta.narrow(0, 0, self.classes * self.dim).view([self.classes, self.dim]);
        let b = theta.narrow(0, self.classes * self.dim, self.classes);
        (w, b)
    }

    /// Loss and gradient at `theta`.
    pub fn eval(&self, theta: &Tensor) -> (f64, Tensor) {
        let n = self.x.size()[0] as f64;
        let (w, b) = self.split(theta);
        let logits = self.x.mm(&w.tr()) + &b;
        let logp = logits.log_softmax(1, self.x.kind());
        let ce = -(&logp * &self.onehot).sum(Kind::Double) / n;
        let reg = 0.5 * self.lambda * w.square().sum(Kind::Double);
        let loss = (ce + reg).double_value(&[]);
        // d/dlogits = (softmax − onehot)/n
        let g = (logp.exp() - &self.onehot) / n;
        let gw = g.tr().mm(self.x) + &w * self.lambda;
        let gb = g.sum_dim_intlist(0, false, self.x.kind());
        (loss, Tensor::cat(&[gw.flatten(0, -1), gb], 0))
    }

    pub fn zeros(&self) -> Tensor {
        Tensor::zeros([self.classes * self.dim + self.classes], (self.x.kind(), self.x.device()))
    }

    /// Weight (C, D) and bias (C) of a solution.
    pub fn unpack(&self, theta: &Tensor) -> (Tensor, Tensor) {
        let (w, b) = self.split(theta);
        (w.copy(), b.copy())
    }
}

/// What a solve did.
pub struct Solution {
    pub theta: Tensor,
    pub loss: f64,
    pub iterations: usize,
}

/// Minimises `p` from `theta0` with L-BFGS (history `m`) and a backtracking Armijo line
/// search; stops when the gradient's max-norm falls below `tol` or after `max_iter`.
pub fn minimize(p: &Problem, theta0: Tensor, max_iter: usize, tol: f64) -> Solution {
    const M: usize = 10;
    let mut theta = theta0;
    let (mut f, mut g) = p.eval(&theta);
    let mut s_hist: Vec<Tensor> = Vec::new();
    let mut y_hist: Vec<Tensor> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let dot = |a: &Tensor, b: &Tensor| a.dot(b).double_value(&[]);
    let mut iterations = 0;
    while iterations < max_iter {
        if g.abs().max().double_value(&[]) < tol {
            break;
        }
        // Two-loop recursion: d = −H·g.
        let mut q = g.shallow_clone().copy();
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &q);
            q -= &y_hist[i] * alpha[i];
        }
        if let (Some(s), Some(y)) = (s_hist.last(), y_hist.last()) {
            q *= dot(s, y) / dot(y, y);
        } else {
            // First step: a unit-length move along −g.
            q *= 1.0 / g.norm().double_value(&[]).max(1e-12);
        }
        for i in 0..s_hist.len() {
            let beta = rho[i] * dot(&y_hist[i], &q);
            q += &s_hist[i] * (alpha[i] - beta);
        }
        let d = -q;
        let mut slope = dot(&g, &d);
        let d = if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            slope = -dot(&g, &g);
            -&g
        } else {
            d
        };
        let mut step = 1.0;
        let (theta_new, f_new, g_new) = loop {
            let cand = &theta + &d * step;
            let (fc, gc) = p.eval(&cand);
            if fc <= f + 1e-4 * step * slope || step < 1e-10 {
                break (cand, fc, gc);
            }
            step *= 0.5;
        };
        let s = &theta_new - &theta;
        let y = &g_new - &g;
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if s_hist.len() == M {
                let _ = s_hist.remove(0);
                let _ = y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        let improvement = f - f_new;
        theta = theta_new;
        f = f_new;
        g = g_new;
        iterations += 1;
        if improvement.abs() <= 1e-10 * f.abs().max(1.0) {
            break;
        }
    }
    Solution { theta, loss: f, iterations }
}
