//! Full-batch L-BFGS for L2-regularised multinomial logistic regression on tch tensors
//! (tch has no L-BFGS). Objective, as scikit-learn's with C = 1/(λ·n):
//!   f(W, b) = mean_i CE(x_i·Wᵀ + b, y_i) + λ/2·‖W‖²   (the bias is not penalised).
//!
//! Solved exactly, in better-conditioned coordinates: with XᵀX/n = U·Λ·Uᵀ and
//! W = V·Λ^-½·Uᵀ, the data term sees whitened features Z = X·U·Λ^-½ and the penalty becomes
//! λ/2·Σ_j ‖v_j‖²/λ_j. L-BFGS starts each step from the matching diagonal curvature, so
//! strongly correlated features no longer cost hundreds of iterations. Convergence is
//! judged on the gradient with respect to W itself, as scikit-learn judges it.
//! Z is never formed: logits are X·(U·Λ^-½·Vᵀ) and the gradient is (Gᵀ·X)·U·Λ^-½, so the
//! basis holds no second feature-sized matrix (two small D×D×C products per evaluation).
//! The change of coordinates is exact for any orthonormal U and positive Λ, so a refit on
//! more rows may reuse the search's eigenbasis: the optimum is the same, only the
//! conditioning (and so where the stopping rules stop) can differ slightly.
//! The gradient is written out (softmax − one-hot), so no autograd graph is built.
use tch::{Kind, Tensor};

/// The eigenbasis of one feature matrix's second moment: the change of coordinates.
pub struct Whitening {
    /// 1/λ_j: the penalty weight of each whitened direction.
    pen: Tensor,
    /// U·Λ^-½ (D, D): Z = X·to_z, and W = V·to_zᵀ.
    to_z: Tensor,
    /// U·Λ^½ (D, D): V = W·from_w.
    from_w: Tensor,
}

impl Whitening {
    /// From XᵀX/n of `x`: one N×D×D product and a D×D eigendecomposition.
    pub fn of(x: &Tensor) -> Whitening {
        let n = x.size()[0] as f64;
        let cov = x.tr().mm(x) / n;
        let (evals, u) = Tensor::linalg_eigh(&cov, "L");
        drop(cov);
        // Directions with (near) zero variance carry no data; keep them finite.
        let floor = (evals.max().double_value(&[]) * 1e-7).max(1e-12);
        let evals = evals.clamp_min(floor);
        Whitening {
            to_z: &u * evals.rsqrt().unsqueeze(0),
            from_w: &u * evals.sqrt().unsqueeze(0),
            pen: evals.reciprocal(),
        }
    }

    fn to_device(&self, device: tch::Device) -> Whitening {
        let on = |t: &Tensor| t.to_device(device);
        Whitening { pen: on(&self.pen), to_z: on(&self.to_z), from_w: on(&self.from_w) }
    }
}

/// One feature matrix, its labels and a change of coordinates, shared by every λ of a search.
pub struct Basis<'a> {
    /// Features X (N, D), borrowed: the basis adds no feature-sized matrix.
    x: &'a Tensor,
    /// One-hot labels, float (N, C).
    onehot: Tensor,
    whitening: Whitening,
    classes: i64,
    dim: i64,
}

impl<'a> Basis<'a> {
    pub fn new(x: &'a Tensor, y: &Tensor, classes: i64) -> Basis<'a> {
        Basis::with(x, y, classes, Whitening::of(x))
    }

    /// A basis with a given change of coordinates (e.g. the search's, for the refit), moved
    /// to the features' device if it was computed elsewhere.
    pub fn with(x: &'a Tensor, y: &Tensor, classes: i64, whitening: Whitening) -> Basis<'a> {
        let onehot = y.to_device(x.device()).one_hot(classes).to_kind(x.kind());
        let whitening = if whitening.pen.device() == x.device() { whitening } else { whitening.to_device(x.device()) };
        Basis { x, onehot, whitening, classes, dim: x.size()[1] }
    }

    pub fn problem(&self, lambda: f64) -> Problem<'_> {
        Problem { basis: self, lambda }
    }

    pub fn into_whitening(self) -> Whitening {
        self.whitening
    }
}

/// One objective: a basis and an L2 strength. Parameters are one flat vector
/// [V (C×D) row-major, b (C)], so L-BFGS's history is plain dots.
pub struct Problem<'a> {
    basis: &'a Basis<'a>,
    pub lambda: f64,
}

/// Rows per block in `Problem::eval`: a few MB, inside the last-level cache.
const BLOCK_BYTES: i64 = 4 << 20;

impl Problem<'_> {
    fn split(&self, theta: &Tensor) -> (Tensor, Tensor) {
        let (c, d) = (self.basis.classes, self.basis.dim);
        (theta.narrow(0, 0, c * d).view([c, d]), theta.narrow(0, c * d, c))
    }

    /// Loss and gradient at `theta`. The rows are processed in blocks small enough to
    /// stay in cache, so each block is read from memory once for both the logits and the
    /// gradient (the two skinny matmuls are memory-bound; this halves the traffic).
    pub fn eval(&self, theta: &Tensor) -> (f64, Tensor) {
        let b = self.basis;
        let wh = &b.whitening;
        let n = b.x.size()[0];
        let (v, bias) = self.split(theta);
        // Original-coordinate weights (D, C): X·wt = Z·Vᵀ.
        let (wt, bias_row) = (wh.to_z.mm(&v.tr()), bias.unsqueeze(0));
        let opts = (b.x.kind(), b.x.device());
        let mut gx = Tensor::zeros([b.classes, b.dim], opts);
        let mut gb = Tensor::zeros([b.classes], opts);
        let mut ce = Tensor::zeros([], (Kind::Double, b.x.device()));
        let block = (BLOCK_BYTES / (4 * b.dim.max(1))).max(256);
        let mut start = 0;
        while start < n {
            let len = block.min(n - start);
            let (xb, yb) = (b.x.narrow(0, start, len), b.onehot.narrow(0, start, len));
            let logp = bias_row.addmm(&xb, &wt).log_softmax(1, b.x.kind());
            ce -= (&logp * &yb).sum(Kind::Double);
            // d/dlogits = softmax − onehot (divided by n below)
            let g = logp.exp() - &yb;
            gx = gx.addmm(&g.tr(), &xb);
            gb += g.sum_dim_intlist(0, false, b.x.kind());
            start += len;
        }
        let nf = n as f64;
        let penalised = &v * &wh.pen;
        let reg = 0.5 * self.lambda * (&penalised * &v).sum(Kind::Double);
        let loss = (ce / nf + reg).double_value(&[]);
        // ∂/∂V = Gᵀ·Z = (Gᵀ·X)·U·Λ^-½.
        let gv = gx.mm(&wh.to_z) / nf + penalised * self.lambda;
        (loss, Tensor::cat(&[gv.flatten(0, -1), gb / nf], 0))
    }

    /// Largest gradient component with respect to the original (W, b).
    fn w_gradient_max(&self, g: &Tensor) -> f64 {
        let (gv, gb) = self.split(g);
        let gw = gv.mm(&self.basis.whitening.from_w.tr());
        gw.abs().max().double_value(&[]).max(gb.abs().max().double_value(&[]))
    }

    /// Inverse of each parameter's curvature at the start (softmax curvature ≈ ¼ per
    /// whitened direction, plus the penalty's): L-BFGS's initial inverse Hessian.
    fn preconditioner(&self) -> Tensor {
        let b = self.basis;
        let w = (&b.whitening.pen * self.lambda + 0.25).reciprocal().unsqueeze(0).expand([b.classes, b.dim], false);
        let bias = Tensor::full([b.classes], 4.0, (b.x.kind(), b.x.device()));
        Tensor::cat(&[w.flatten(0, -1), bias], 0)
    }

    pub fn zeros(&self) -> Tensor {
        let b = self.basis;
        Tensor::zeros([b.classes * b.dim + b.classes], (b.x.kind(), b.x.device()))
    }

    /// Weight (C, D) and bias (C) in the original feature coordinates.
    pub fn unpack(&self, theta: &Tensor) -> (Tensor, Tensor) {
        let (v, b) = self.split(theta);
        (v.mm(&self.basis.whitening.to_z.tr()), b.copy())
    }

    /// The parameters of an original-coordinate (W, b), for warm starts.
    pub fn pack(&self, w: &Tensor, b: &Tensor) -> Tensor {
        Tensor::cat(&[w.mm(&self.basis.whitening.from_w).flatten(0, -1), b.shallow_clone()], 0)
    }
}

/// What a solve did.
pub struct Solution {
    pub theta: Tensor,
    pub loss: f64,
    pub iterations: usize,
}

/// Minimises `p` from `theta0` with L-BFGS (history 10, diagonal initial inverse Hessian)
/// and a backtracking Armijo line search; stops when the gradient's max-norm with respect
/// to (W, b) falls below `tol`, when the relative decrease stalls, when no step along the
/// search direction decreases the loss, or after `max_iter`. A signal is an error: an
/// interrupted solve is never mistaken for a finished one.
pub fn minimize(p: &Problem, theta0: Tensor, max_iter: usize, tol: f64) -> anyhow::Result<Solution> {
    const M: usize = 10;
    let d0 = p.preconditioner();
    let mut theta = theta0;
    let (mut f, mut g) = p.eval(&theta);
    let mut s_hist: Vec<Tensor> = Vec::new();
    let mut y_hist: Vec<Tensor> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let dot = |a: &Tensor, b: &Tensor| a.dot(b).double_value(&[]);
    let mut iterations = 0;
    while iterations < max_iter {
        crate::util::interrupt::check()?;
        if p.w_gradient_max(&g) < tol {
            break;
        }
        // Two-loop recursion: d = −H·g, with H₀ = γ·D.
        let mut q = g.copy();
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &q);
            q -= &y_hist[i] * alpha[i];
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, &(y * &d0)),
            _ => 1.0,
        };
        q *= &d0 * gamma;
        for i in 0..s_hist.len() {
            let beta = rho[i] * dot(&y_hist[i], &q);
            q += &s_hist[i] * (alpha[i] - beta);
        }
        let mut d = -q;
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from preconditioned descent.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            d = -(&g * &d0);
            slope = dot(&g, &d);
        }
        let Some((theta_new, f_new, g_new)) = line_search(|t| p.eval(t), &theta, &d, f, slope) else {
            // No step decreases the loss: theta is as good as this direction allows.
            break;
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
        let scale = f.abs().max(f_new.abs()).max(1.0);
        theta = theta_new;
        f = f_new;
        g = g_new;
        iterations += 1;
        // scipy's L-BFGS-B stopping rule on the relative decrease (factr 1e7 × machine eps),
        // as scikit-learn uses it.
        if improvement.abs() <= 2.2e-9 * scale {
            break;
        }
    }
    Ok(Solution { theta, loss: f, iterations })
}

/// Backtracking from a full step until the Armijo condition holds; None when even a
/// step of 1e-10 does not decrease the loss enough (a worse point is never accepted).
fn line_search(
    eval: impl Fn(&Tensor) -> (f64, Tensor),
    theta: &Tensor,
    d: &Tensor,
    f: f64,
    slope: f64,
) -> Option<(Tensor, f64, Tensor)> {
    let mut step = 1.0;
    while step >= 1e-10 {
        let cand = theta + d * step;
        let (fc, gc) = eval(&cand);
        if fc <= f + 1e-4 * step * slope {
            return Some((cand, fc, gc));
        }
        step *= 0.5;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f(θ) = ‖θ‖², evaluated with its gradient.
    fn bowl(t: &Tensor) -> (f64, Tensor) {
        (t.dot(t).double_value(&[]), t * 2.0)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // In f64, so central differences are accurate to ~1e-8.
        tch::manual_seed(1);
        let opts = (Kind::Double, tch::Device::Cpu);
        let x = Tensor::randn([40, 5], opts) * Tensor::from_slice(&[1.0f64, 3.0, 0.1, 1.0, 2.0]);
        let y = Tensor::randint(3, [40], (Kind::Int64, tch::Device::Cpu));
        let basis = Basis::new(&x, &y, 3);
        let p = basis.problem(0.05);
        let theta = Tensor::randn([3 * 5 + 3], opts) * 0.3;
        let (_, g) = p.eval(&theta);
        let h = 1e-5;
        for i in 0..theta.size()[0] {
            let e = Tensor::zeros_like(&theta);
            let _ = e.get(i).fill_(h);
            let fd = (p.eval(&(&theta + &e)).0 - p.eval(&(&theta - &e)).0) / (2.0 * h);
            let an = g.double_value(&[i]);
            assert!((fd - an).abs() < 1e-6 * (1.0 + an.abs()), "parameter {i}: {an} vs {fd}");
        }
        // The parameters round-trip through original coordinates.
        let (w, b) = p.unpack(&theta);
        assert!(p.pack(&w, &b).allclose(&theta, 1e-10, 1e-10, false));
    }

    #[test]
    fn line_search_takes_a_decreasing_step() {
        let theta = Tensor::from_slice(&[1.0f64, -2.0]);
        let (f, g) = bowl(&theta);
        let d = -&g;
        let slope = g.dot(&d).double_value(&[]);
        let (_, f_new, _) = line_search(bowl, &theta, &d, f, slope).expect("a descent direction has a step");
        assert!(f_new < f);
    }

    #[test]
    fn line_search_never_returns_a_worse_point() {
        // Uphill, while the slope claims descent (as rounding can make it): no step satisfies
        // Armijo, and the search must say so rather than hand back the last, worse, candidate.
        let theta = Tensor::from_slice(&[1.0f64, -2.0]);
        let (f, g) = bowl(&theta);
        assert!(line_search(bowl, &theta, &g, f, -1e-3).is_none());
    }
}
