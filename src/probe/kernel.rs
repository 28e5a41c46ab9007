//! `--solver kernel`: kernel ridge regression, one-vs-rest, on the arc-cosine kernel of
//! order 1 (Cho & Saul 2009) of the scaled features: the readout of an infinitely wide
//! random ReLU layer on top of them. With u = x/√D, v = y/√D and θ their angle,
//! k(x, y) = ‖u‖‖v‖ (sin θ + (π − θ) cos θ) / π, so k(x, x) = ‖u‖² ≈ 1 for standardised
//! features. Targets are one-hot minus 1/C; (K + λI) A = Y is solved for each λ of the grid
//! by conjugate gradients with a Nyström preconditioner. The n×n Gram matrix is the cost:
//! 50k rows take 10 GB in float32, so each image is one row (the protocol averages its
//! mirrored views). With `--kernel-precision bf16` the scaled rows are rounded to bfloat16
//! once, and every kernel value (Gram matrix, support against new rows) is computed from
//! rounded rows with float32 sums.
use super::bf16;
use super::dense;
use super::fit::{place, Fitted};
use super::{metrics, GridPoint, Head, KernelPrecision, KernelViews, ProbeConfig, Scaler};
use crate::data::split;
use crate::features::Features;
use crate::util::{interrupt, progress};
use anyhow::{ensure, Result};
use std::f64::consts::PI;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Relative residual ‖Y − (K + λI)A‖/‖Y‖ (per class) at which the conjugate gradients
/// stop: far below what changes a prediction, and within float32's reach.
const TOL: f64 = 1e-3;
/// λ (relative to k(x, x) ≈ 1) searched on validation with `--wd-search`: half decades.
/// 1e-3 overfitted on every screen tried (5k CIFAR-10 images: 50% validation against 60%
/// at 3.16e-3).
pub const GRID: [f64; 7] = [3.16e-3, 1e-2, 3.16e-2, 1e-1, 3.16e-1, 1.0, 3.16];
/// Rows per block of kernel values: each block's temporaries are a few of (BLOCK, n) floats.
const BLOCK: i64 = 512;

/// `--kernel`: every kernel here is ‖u‖‖v‖ κ(cos θ) with κ(1) = 1, so k(x, x) = ‖u‖² ≈ 1
/// for standardised features and λ's grid means the same for each.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum KernelFn {
    /// Arc-cosine of order 1: κ(c) = (√(1 − c²) + (π − arccos c) c)/π.
    #[default]
    ArcCos,
    /// The arc-cosine of the arc-cosine, κ(κ(c)): two infinitely wide ReLU layers (Cho &
    /// Saul's composed kernel).
    ArcCos2,
    /// κ(c) = exp(β (c − 1)): positive definite on the sphere (a power series in c with
    /// positive coefficients), more local than the arc-cosine as β grows. Near c = 0 the
    /// arc-cosine's curvature matches β ≈ 0.6.
    Exp(f64),
}

impl KernelFn {
    /// ‖u‖‖v‖ κ(c) from the norms' product and the clamped cosine. The arc-cosine keeps the
    /// order of operations it had before the other kernels, so earlier runs reproduce bit
    /// for bit.
    fn value(self, norms: f32, c: f32) -> f32 {
        use std::f32::consts::PI;
        let j = |c: f32| (1.0 - c * c).max(0.0).sqrt() + (PI - c.acos()) * c;
        match self {
            KernelFn::ArcCos => norms * j(c) / PI,
            KernelFn::ArcCos2 => norms * j((j(c) / PI).min(1.0)) / PI,
            KernelFn::Exp(beta) => norms * (beta as f32 * (c - 1.0)).exp(),
        }
    }

    /// `value` with libtorch's ops (on an accelerator), as the CPU loop orders it.
    fn value_ops(self, norms: &Tensor, c: &Tensor) -> Tensor {
        let j = |c: &Tensor| {
            let theta = c.acos();
            theta.sin() + (-theta + PI) * c
        };
        match self {
            KernelFn::ArcCos => norms * j(c) / PI,
            KernelFn::ArcCos2 => norms * j(&(j(c) / PI).clamp_max(1.0)) / PI,
            KernelFn::Exp(beta) => norms * ((c - 1.0) * beta).exp(),
        }
    }
}

impl std::str::FromStr for KernelFn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "arccos" => Ok(KernelFn::ArcCos),
            None if s == "arccos2" => Ok(KernelFn::ArcCos2),
            Some(("exp", b)) => match b.parse::<f64>() {
                Ok(b) if b.is_finite() && b > 0.0 && b <= 100.0 => Ok(KernelFn::Exp(b)),
                _ => Err(format!("--kernel exp:B: B must be a number in (0, 100], got {b:?}")),
            },
            _ => Err(format!("--kernel: expected arccos, arccos2 or exp:B, got {s:?}")),
        }
    }
}

impl std::fmt::Display for KernelFn {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            KernelFn::ArcCos => f.write_str("arccos"),
            KernelFn::ArcCos2 => f.write_str("arccos2"),
            KernelFn::Exp(b) => write!(f, "exp:{b}"),
        }
    }
}

crate::serde_as_str!(KernelFn);

/// The rows a kernel head compares new rows with (scaled; one tensor per view, see
/// `KernelViews`), their norms after the 1/√D, and the training kernel's column means k̄
/// (1, n) and grand mean k̄̄ for the centring.
pub struct Support {
    pub views: Vec<Tensor>,
    f: KernelFn,
    norms: Vec<Tensor>,
    col_means: Tensor,
    grand_mean: f64,
}

impl Support {
    /// `gram` is k over the support rows themselves.
    fn new(views: Vec<Tensor>, gram: &Tensor, f: KernelFn) -> Support {
        let norms = views.iter().map(scaled_norms).collect();
        let col_means = gram.mean_dim(0, true, Kind::Float);
        let grand_mean = col_means.mean(Kind::Float).double_value(&[]);
        Support { views, f, norms, col_means, grand_mean }
    }

    /// The centred kernel k(x, s_j) − m(x) − k̄_j + k̄̄ for scaled rows x, m(x) the mean over
    /// j: (m, n), on the support's device; with two support views, k(x, s_j) is the mean over
    /// them (the caller averages over x's views). Centring before the product with the
    /// weights keeps the kernel's large constant part (k ≈ 0.3 between unrelated rows) out of
    /// a sum of 45k terms whose weights grow as 1/λ: uncentred, float32 rounding there cost
    /// the small λ most of their validation accuracy.
    pub fn map(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(self.views[0].device());
        let mut out = Tensor::empty([x.size()[0], self.views[0].size()[0]], (Kind::Float, x.device()));
        fill(&mut out, &x, &self.views, &self.norms, self.f)?;
        self.centre(&mut out);
        Ok(out)
    }

    /// Whether the support holds both mirrored views of each image (`--kernel-views pairs`).
    pub fn pairs(&self) -> bool {
        self.views.len() == 2
    }

    /// Centres kernel values k(x, s_j) of new rows in place (see `map`).
    fn centre(&self, k: &mut Tensor) {
        let row_means = k.mean_dim(1, true, Kind::Float);
        let _ = k.g_sub_(&row_means).g_sub_(&self.col_means).g_add_scalar_(self.grand_mean);
    }
}

/// ‖x_i‖/√D as a column, BLOCK rows at a time: squaring all of x at once made a temporary
/// as large as the features (3.7 GB at 18,432 features) beside the Gram matrix. Each row's
/// sum is the same arithmetic either way.
fn scaled_norms(x: &Tensor) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[1]);
    let out = Tensor::empty([n, 1], (Kind::Float, x.device()));
    for i in (0..n).step_by(BLOCK as usize) {
        let len = BLOCK.min(n - i);
        // Float rows are used as they are (no copy); bf16 rows a block at a time.
        let sums = x.narrow(0, i, len).to_kind(Kind::Float).square().sum_dim_intlist(1, true, Kind::Float);
        out.narrow(0, i, len).copy_(&(sums / d as f64).sqrt());
    }
    out
}

/// Writes k(a_i, b_j) into `out` (m, n), block by block, with b's rows in `views` (one
/// tensor per view: with two, the mean of a_i's kernel with both views of b_j) and `nb`
/// their norms. Float32 rows go by blocks of `a`'s rows (libtorch's product); bf16 support
/// rows by blocks of b's, with `a` rounded as they were, so the products pack each block
/// once and stream all of `a` past it.
fn fill(out: &mut Tensor, a: &Tensor, views: &[Tensor], nb: &[Tensor], f: KernelFn) -> Result<()> {
    let rounded = views[0].kind() == Kind::BFloat16;
    let a = if rounded { a.to_kind(Kind::BFloat16) } else { a.shallow_clone() };
    let (m, n) = (a.size()[0], views[0].size()[0]);
    // Block by block, each row's sum as over the whole matrix: the same norms either way.
    let na = scaled_norms(&a);
    let (count, axis) = if rounded { (n, 1) } else { (m, 0) };
    let bar = progress::rows(count as u64, "kernel");
    tch::no_grad(|| -> Result<()> {
        for k in (0..count).step_by(BLOCK as usize) {
            interrupt::check()?;
            let len = BLOCK.min(count - k);
            let block = out.narrow(axis, k, len);
            for (v, (b, nb)) in views.iter().zip(nb).enumerate() {
                // The first view straight into the output, others beside it and added.
                let mut dest = match v {
                    0 => block.shallow_clone(),
                    _ => Tensor::empty(block.size(), (Kind::Float, block.device())),
                };
                if rounded {
                    kernel_values(&mut dest, &a, &b.narrow(0, k, len), &na, &nb.narrow(0, k, len), f)?;
                } else {
                    kernel_values(&mut dest, &a.narrow(0, k, len), b, &na.narrow(0, k, len), nb, f)?;
                }
                if v > 0 {
                    let _ = block.shallow_clone().g_add_(&dest);
                }
            }
            if views.len() > 1 {
                let _ = block.shallow_clone().g_div_scalar_(views.len() as f64);
            }
            bar.inc(len as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// k(r_i, c_j) of scaled rows into `out` (rows, cols), with `nr` and `nc` their scaled
/// norms: bf16 rows through `products` (which packs `cols`), float32 ones through libtorch's
/// product.
fn kernel_values(out: &mut Tensor, rows: &Tensor, cols: &Tensor, nr: &Tensor, nc: &Tensor, f: KernelFn) -> Result<()> {
    if cols.kind() == Kind::BFloat16 {
        products(rows, cols, out)?;
    } else {
        let _ = rows.mm_out(out, &cols.tr());
    }
    apply(out, nr, nc, rows.size()[1], f)
}

/// out = a·bᵀ for bf16 rows, summed in float32: AVX512-BF16 where the CPU has it (see
/// `bf16`), else float32 copies of `b` and of `a` a block at a time.
fn products(a: &Tensor, b: &Tensor, out: &mut Tensor) -> Result<()> {
    if bf16::fits(a, b) {
        return bf16::products(a, b, out);
    }
    let bt = b.to_kind(Kind::Float).tr();
    let m = a.size()[0];
    for i in (0..m).step_by(4 * BLOCK as usize) {
        let len = (4 * BLOCK).min(m - i);
        let _ = a.narrow(0, i, len).to_kind(Kind::Float).mm_out(&out.narrow(0, i, len), &bt);
    }
    Ok(())
}

/// Inner products → kernel values, in place: one pass over the block on the CPU, libtorch's
/// elementwise ops elsewhere. `na` and `nb` are the rows' and columns' scaled norms.
fn apply(g: &mut Tensor, na: &Tensor, nb: &Tensor, d: i64, f: KernelFn) -> Result<()> {
    if g.device() == Device::Cpu {
        let to_vec = |t: &Tensor| Vec::<f32>::try_from(&t.to_kind(Kind::Float).reshape([-1]));
        return dense::dot_kernel_in_place(g, &to_vec(na)?, &to_vec(nb)?, d as usize, move |norms, c| {
            f.value(norms, c)
        });
    }
    apply_ops(g, na, nb, d, f);
    Ok(())
}

fn apply_ops(g: &mut Tensor, na: &Tensor, nb: &Tensor, d: i64, f: KernelFn) {
    let norms = na.view([-1, 1]) * nb.view([1, -1]);
    // cos θ = ⟨u, v⟩ / (‖u‖‖v‖), clamped against rounding; a zero row gives k = 0.
    let cos = (&*g / d as f64 / norms.clamp_min(1e-12)).clamp(-1.0, 1.0);
    let k = f.value_ops(&norms, &cos);
    g.copy_(&k);
}

/// The Gram matrix of scaled rows, (n, n) on their device: k(x_i, x_j) for one view, or
/// for two (`--kernel-views pairs`, the mirrored views a and b) the mean over the four view
/// pairs, ¼[k(a_i, a_j) + k(b_i, b_j) + k(a_i, b_j) + k(b_i, a_j)]: four times the products.
/// Each block of rows computes only the columns from its diagonal on and mirrors them below:
/// half the products. bf16 rows go by column strips instead (the loop runs on the
/// transposed view): each block is packed once, as `b` of `products`, and the rows from it
/// down stream past. Either way the diagonal blocks come out symmetric, as each entry pair
/// sums the same products in the same order (the two cross terms are added to each other
/// first, so their sum is the same either way round).
fn gram(views: &[&Tensor], f: KernelFn) -> Result<Tensor> {
    ensure!(matches!(views.len(), 1 | 2), "the kernel readout takes one or two views of each image");
    let n = views[0].size()[0];
    let out = Tensor::f_empty([n, n], (Kind::Float, views[0].device()))
        .map_err(|e| anyhow::anyhow!("--solver kernel: no room for the {n}×{n} kernel matrix ({e})"))?;
    let rounded = views[0].kind() == Kind::BFloat16;
    let target = if rounded { out.tr() } else { out.shallow_clone() };
    let norms: Vec<Tensor> = views.iter().map(|x| scaled_norms(x)).collect();
    // (row view, column view) of each term, in the order they are summed.
    let terms: &[(usize, usize)] = if views.len() == 1 { &[(0, 0)] } else { &[(0, 0), (1, 1), (0, 1), (1, 0)] };
    let bar = progress::rows(n as u64, "kernel");
    tch::no_grad(|| -> Result<()> {
        for i in (0..n).step_by(BLOCK as usize) {
            interrupt::check()?;
            let len = BLOCK.min(n - i);
            let strip = target.narrow(0, i, len).narrow(1, i, n - i);
            let mut sums: Vec<Tensor> = Vec::with_capacity(terms.len());
            for (t, &(u, v)) in terms.iter().enumerate() {
                let (block, from_block) = (views[u].narrow(0, i, len), views[v].narrow(0, i, n - i));
                let (nr, nc) = (norms[u].narrow(0, i, len), norms[v].narrow(0, i, n - i));
                // The first term straight into the strip, the others beside it (laid out
                // as the products write: rows of the column strip for bf16).
                let opts = (Kind::Float, strip.device());
                let dest = match (t, rounded) {
                    (0, _) => strip.shallow_clone(),
                    (_, true) => Tensor::empty([n - i, len], opts).tr(),
                    (_, false) => Tensor::empty([len, n - i], opts),
                };
                if rounded {
                    kernel_values(&mut dest.tr(), &from_block, &block, &nc, &nr, f)?;
                } else {
                    kernel_values(&mut dest.shallow_clone(), &block, &from_block, &nr, &nc, f)?;
                }
                sums.push(dest);
            }
            if let [first, second, cross_ab, cross_ba] = &mut sums[..] {
                let _ = cross_ab.g_add_(cross_ba);
                let _ = first.g_add_(second).g_add_(cross_ab).g_div_scalar_(4.0);
            }
            drop(sums);
            if i + len < n {
                let mut mirror = target.narrow(0, i + len, n - i - len).narrow(1, i, len);
                mirror.copy_(&strip.narrow(1, len, n - i - len).tr());
            }
            bar.inc(len as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(out)
}

/// One-vs-rest targets: one-hot minus 1/C, (n, C).
fn targets(y: &Tensor, classes: i64) -> Tensor {
    y.one_hot(classes).to_kind(Kind::Float) - 1.0 / classes as f64
}

/// K·Pᵀ, reading K once: cnnprobe's own loop on the CPU, `linear` (p's rows against K's,
/// K symmetric) on an accelerator.
fn times(k: &Tensor, pt: &Tensor) -> Result<Tensor> {
    if k.device() == Device::Cpu {
        return dense::times(k, pt);
    }
    Ok(k.linear::<&Tensor>(&pt.contiguous(), None))
}

/// Landmarks of the Nyström preconditioner: the kernel columns it keeps (n × 2000 floats,
/// 400 MB at 50k rows).
const LANDMARKS: i64 = 2000;

/// The Nyström approximation K̃ = K_nm K_mm⁺ K_mn of the kernel from seeded landmark columns
/// (Williams & Seeger 2001; as a preconditioner, Rudi et al.'s Falkon, 2017), as K̃ = UUᵀ
/// with U = K_nm K_mm^-½, its columns centred (U_c). (λI + U_cU_cᵀ) approximates the system
/// HKH + λI, and Woodbury's identity inverts it: (v − U_c (λI + U_cᵀU_c)⁻¹ U_cᵀ v)/λ, two
/// n×r×C products a step. It takes the kernel's large eigenvalues, which set the step count
/// of plain conjugate gradients, out of the system (real features, 8k rows, λ 1e-2: 614
/// steps plain, 15 with 2000 landmarks). U does not depend on λ; one basis serves a search.
struct Nystrom {
    /// U_c (n, r), float64: Woodbury's v − U_c(…)U_cᵀv cancels most of v at small λ, and
    /// in float32 that left the preconditioner indefinite (a refit at λ 3.16e-3 broke down
    /// into NaN). r = 0 gives plain conjugate gradients.
    u: Tensor,
    /// U_cᵀU_c (r, r), float64.
    utu: Tensor,
}

impl Nystrom {
    fn new(k: &Tensor, rank: i64, seed: u64) -> Result<Nystrom> {
        let n = k.size()[0];
        let r = rank.clamp(0, n);
        if r == 0 {
            let u = Tensor::zeros([n, 0], (Kind::Double, k.device()));
            return Ok(Nystrom { utu: Tensor::zeros([0, 0], (Kind::Double, k.device())), u });
        }
        let picks: Vec<i64> =
            split::permutation(n as usize, seed ^ 0x4E59).into_iter().take(r as usize).map(|i| i as i64).collect();
        let idx = Tensor::from_slice(&picks).to_device(k.device());
        // The landmark rows K[idx, :], copied one by one (K is symmetric: K_nm is their
        // transpose). index_select on a block view of K first copied the whole block: 8 GB
        // at 45k rows.
        let rows = Tensor::empty([r, n], (Kind::Float, k.device()));
        for (i, &j) in picks.iter().enumerate() {
            let mut row = rows.get(i as i64);
            row.copy_(&k.get(j));
        }
        let kmm = rows.index_select(1, &idx).to_kind(Kind::Double);
        // K_mm^-½ on its range: eigenvalues below 1e-6 of the largest are dropped (a
        // pseudo-inverse), as landmarks can be nearly collinear.
        let (evals, v) = kmm.f_linalg_eigh("L")?;
        let floor = (evals.max().double_value(&[]) * 1e-6).max(1e-30);
        let scale = evals.clamp_min(floor).rsqrt() * evals.gt(floor).to_kind(Kind::Double);
        let u = rows.tr().mm(&(v * scale.unsqueeze(0)).to_kind(Kind::Float));
        // The landmark rows go before U's float64 copy is made: one n×r buffer fewer at the peak.
        drop(rows);
        let mut u = u.to_kind(Kind::Double);
        // Centred in place: at 50k rows U is 800 MB in float64.
        let means = u.mean_dim(0, true, Kind::Double);
        let _ = u.g_sub_(&means);
        let utu = u.tr().mm(&u);
        Ok(Nystrom { u, utu })
    }

    /// The Cholesky factor of λI + U_cᵀU_c: what applying the inverse at λ needs.
    fn at(&self, lambda: f64) -> Result<Tensor> {
        let r = self.utu.size()[0];
        (&self.utu + Tensor::eye(r, (Kind::Double, self.utu.device())) * lambda).f_linalg_cholesky(false).map_err(|e| {
            anyhow::anyhow!("--solver kernel: the preconditioner at λ {lambda:e} is not positive definite ({e})")
        })
    }

    /// (λI + U_cU_cᵀ)⁻¹ v with `chol` from `at(λ)`.
    fn apply(&self, chol: &Tensor, lambda: f64, v: &Tensor) -> Tensor {
        if self.u.size()[1] == 0 {
            return v / lambda;
        }
        let v = v.to_kind(Kind::Double);
        // U_cᵀv as (vᵀU_c)ᵀ: libtorch's product with the transposed n×r view took 1.5–2.2 s
        // at 45k rows (one thread), five times this form, and it ran at every step.
        let t = v.tr().mm(&self.u).tr().cholesky_solve(chol, false);
        ((v - self.u.mm(&t)) / lambda).to_kind(Kind::Float)
    }
}

/// What a solve produced: one solution per λ, and the steps each took to reach `TOL` (or
/// the cap).
pub struct Solved {
    pub xs: Vec<Tensor>,
    pub steps: Vec<usize>,
}

/// Solves (HKH + λ_j I) A_j = HY for every λ_j of `lambdas`, H the centring of the rows
/// (kernel ridge with an intercept; centring also takes the kernel's large constant
/// direction out of the spectrum), each class column its own system, by conjugate gradients
/// preconditioned with a Nyström basis of `rank` landmarks (0: none) drawn with `seed`.
/// The λ run from the largest down, each starting from the previous solution; `start`, if
/// given, is the first one's first guess (a smaller problem's solution). Each stops at
/// relative residual `TOL` or `max_iter` steps. `k` may be a leading block of a larger matrix.
pub fn solve(
    k: &Tensor,
    y: &Tensor,
    lambdas: &[f64],
    max_iter: usize,
    start: Option<&Tensor>,
    (rank, seed): (i64, u64),
) -> Result<Solved> {
    ensure!(!lambdas.is_empty() && lambdas.iter().all(|&l| l > 0.0), "--solver kernel needs λ > 0");
    let center = |t: &Tensor| t - t.mean_dim(0, true, Kind::Float);
    let col_sum = |a: &Tensor, b: &Tensor| (a * b).sum_dim_intlist(0, true, Kind::Float);
    tch::no_grad(|| -> Result<Solved> {
        let basis = Nystrom::new(k, rank, seed)?;
        let y = center(y);
        let y_norm = col_sum(&y, &y).sqrt().clamp_min(1e-30);
        let mut order: Vec<usize> = (0..lambdas.len()).collect();
        order.sort_by(|&a, &b| lambdas[b].total_cmp(&lambdas[a]));
        let mut xs: Vec<Option<Tensor>> = lambdas.iter().map(|_| None).collect();
        let mut steps = vec![0; lambdas.len()];
        let mut guess = start.map(|x0| center(&x0.to_device(y.device())));
        let bar = progress::steps((max_iter * lambdas.len()) as u64, "kernel CG");
        for j in order {
            let lambda = lambdas[j];
            let chol = basis.at(lambda)?;
            let apply = |p: &Tensor| -> Result<Tensor> { Ok(center(&times(k, &center(p).tr())?) + p * lambda) };
            let (mut x, mut r) = match guess.take() {
                Some(x0) => {
                    let r = &y - apply(&x0)?;
                    (x0, r)
                }
                None => (y.zeros_like(), y.copy()),
            };
            let mut z = center(&basis.apply(&chol, lambda, &r));
            let mut p = z.copy();
            let mut rz = col_sum(&r, &z);
            let residual = |r: &Tensor| (col_sum(r, r).sqrt() / &y_norm).max().double_value(&[]);
            while steps[j] < max_iter && residual(&r) >= TOL {
                interrupt::check()?;
                // This product reads all of K: its speed is the solver's.
                let ap = apply(&p)?;
                let curvature = col_sum(&p, &ap);
                // Both are positive for a positive definite system and preconditioner; a
                // sign change or a non-finite value is a breakdown, never a result.
                let (pap, rz_min) = (curvature.min().double_value(&[]), rz.min().double_value(&[]));
                ensure!(
                    pap > 0.0 && rz_min > 0.0 && pap.is_finite() && rz_min.is_finite(),
                    "--solver kernel: the conjugate gradients broke down at λ {lambda:e}, step {} \
                     (pᵀAp {pap:e}, rᵀz {rz_min:e})",
                    steps[j]
                );
                let alpha = &rz / curvature;
                let _ = x.g_add_(&(&p * &alpha));
                let _ = r.g_sub_(&(&ap * &alpha));
                z = center(&basis.apply(&chol, lambda, &r));
                let rz_next = col_sum(&r, &z);
                p = &z + &p * (&rz_next / rz.clamp_min(1e-30));
                rz = rz_next;
                steps[j] += 1;
                bar.inc(1);
            }
            // The recurrence's residual can drift from the true one: check the solution itself.
            let true_residual = residual(&(&y - apply(&x)?));
            ensure!(
                true_residual.is_finite() && true_residual < (10.0 * TOL).max(2.0 * residual(&r)),
                "--solver kernel: the solution at λ {lambda:e} misses its system: relative residual \
                 {true_residual:e} after {} steps",
                steps[j]
            );
            guess = Some(x.copy());
            xs[j] = Some(x);
        }
        bar.finish_and_clear();
        Ok(Solved { xs: xs.into_iter().map(|x| x.expect("every λ solved")).collect(), steps })
    })
}

/// A kernel head: one weight per support row and class.
fn head(support: Support, alpha: Tensor, b: Tensor, scaler: Scaler) -> Head {
    Head { w: alpha.tr().contiguous(), b, scaler, kernel: Some(support) }
}

/// Fits the kernel head: λ chosen on validation among `GRID` (or `--weight-decay` as λ),
/// then a refit on train+val unless `--val-only`. One Gram matrix serves all three: the
/// fit rows come first, so its leading block is the search's system, the block below it
/// scores validation, and the whole matrix is the refit's. Features are scaled with the fit
/// rows' statistics throughout (the refit does not rescale: its matrix is the same one).
/// `rows` are one per image, the `m` fit rows first, then the validation rows: owned, as
/// they are scaled in place and become the head's support. `flipped` holds the same images'
/// mirrored views, row for row, for `--kernel-views pairs` (the scaling's statistics are
/// then those of both views).
pub fn fit(
    rows: Features,
    flipped: Option<Tensor>,
    m: i64,
    classes: usize,
    s: &ProbeConfig,
    device: Device,
) -> Result<Fitted> {
    let start = Instant::now();
    let c = classes as i64;
    let n = rows.x.size()[0];
    ensure!(m > 0, "the training split is empty");
    ensure!(n > m, "the validation split is empty: use more data or a larger --val-fraction");
    ensure!(
        flipped.is_some() == (s.kernel_views == KernelViews::Pairs),
        "--kernel-views {}: the rows given do not match",
        crate::util::names::value_name(&s.kernel_views)
    );
    let mut views: Vec<Tensor> = std::iter::once(rows.x).chain(flipped).map(|x| place(x, device)).collect();
    let labels = rows.y.to_device(views[0].device());
    let scaler = match &views[..] {
        [x] => Scaler::fit(&x.narrow(0, 0, m), s.normalize),
        _ => Scaler::fit_views(&views.iter().map(|x| x.narrow(0, 0, m)).collect::<Vec<_>>(), s.normalize),
    };
    for x in &mut views {
        scaler.apply_in_place(x);
        // Rounded once, after scaling: each float32 view goes before the next is rounded.
        if s.kernel_precision == KernelPrecision::Bf16 {
            *x = x.to_kind(Kind::BFloat16);
        }
    }
    let lambdas: Vec<f64> = if s.wd_search { GRID.to_vec() } else { vec![s.weight_decay] };
    ensure!(lambdas[0] > 0.0, "--solver kernel needs λ (--weight-decay) > 0");
    eprintln!(
        "kernel: {n}×{n} {} Gram matrix ({:.1} GB) from {} rows{}",
        s.kernel,
        (n * n * 4) as f64 / 1e9,
        crate::util::names::value_name(&s.kernel_precision),
        if views.len() == 2 { ", averaged over the four pairs of mirrored views" } else { "" }
    );
    let clock = Instant::now();
    let k = gram(&views.iter().collect::<Vec<_>>(), s.kernel)?;
    eprintln!("kernel: Gram matrix in {:.1} s", clock.elapsed().as_secs_f64());
    let fit_block = k.narrow(0, 0, m).narrow(1, 0, m);
    let y = targets(&labels.narrow(0, 0, m), c);
    let clock = Instant::now();
    let solved = solve(&fit_block, &y, &lambdas, s.max_iter, None, (LANDMARKS, s.seed))?;
    eprintln!(
        "kernel: {} λ in {} preconditioned conjugate-gradient steps ({:?}), {:.1} s",
        lambdas.len(),
        solved.steps.iter().sum::<usize>(),
        solved.steps,
        clock.elapsed().as_secs_f64()
    );
    // Centred kernel ridge: f(x) = k_c(x, ·)·A + mean(Y).
    let ymean = y.mean_dim(0, false, Kind::Float);
    let support = Support::new(views.iter().map(|x| x.narrow(0, 0, m)).collect(), &fit_block, s.kernel);
    let mut kv = Tensor::empty([n - m, m], (Kind::Float, k.device()));
    kv.copy_(&k.narrow(0, m, n - m).narrow(1, 0, m));
    support.centre(&mut kv);
    let yv = labels.narrow(0, m, n - m);
    let grid: Vec<GridPoint> = lambdas
        .iter()
        .zip(&solved.xs)
        .zip(&solved.steps)
        .map(|((&l, a), &steps)| GridPoint {
            stage: if s.wd_search { "kernel" } else { "fixed" },
            weight_decay: l,
            val_acc: metrics::accuracy(&(kv.mm(a) + &ymean), &yv),
            steps,
        })
        .collect();
    drop(kv);
    let best = super::fit::best_point(&grid);
    let at = grid.iter().position(|g| g.weight_decay == best).expect("in the grid");
    let (chosen, val_acc) = (grid[at].weight_decay, grid[at].val_acc);
    let alpha = solved.xs.into_iter().nth(at).expect("one solution per λ");
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
        return Ok(done(head(support, alpha, ymean, scaler), false));
    }
    drop(support);
    // The refit on train+val, from the search's solution (zeros for the validation rows),
    // with its own landmarks among all the rows.
    let all_y = targets(&labels, c);
    let first_guess = Tensor::cat(&[alpha, Tensor::zeros([n - m, c], (Kind::Float, k.device()))], 0);
    let clock = Instant::now();
    let mut refit = solve(&k, &all_y, &[chosen], s.max_iter, Some(&first_guess), (LANDMARKS, s.seed))?;
    eprintln!("kernel: refit on {n} rows in {} steps, {:.1} s", refit.steps[0], clock.elapsed().as_secs_f64());
    let support = Support::new(views, &k, s.kernel);
    drop(k);
    let b = all_y.mean_dim(0, false, Kind::Float);
    Ok(done(head(support, refit.xs.remove(0), b, scaler), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ‖a − A*‖/‖A*‖ for A* the solution of (HKH + λI) A = HY, H the centring, solved
    /// directly in float64.
    fn error_against_direct(a: &Tensor, k: &Tensor, y: &Tensor, lambda: f64) -> f64 {
        let n = k.size()[0];
        let h = Tensor::eye(n, (Kind::Double, Device::Cpu)) - 1.0 / n as f64;
        let shifted = h.mm(&k.to_kind(Kind::Double)).mm(&h) + Tensor::eye(n, (Kind::Double, Device::Cpu)) * lambda;
        let direct = Tensor::linalg_solve(&shifted, &h.mm(&y.to_kind(Kind::Double)), true);
        (a.to_kind(Kind::Double) - &direct).norm().double_value(&[]) / direct.norm().double_value(&[])
    }

    #[test]
    fn every_lambdas_solution_equals_the_direct_solve() {
        tch::manual_seed(0);
        let n = 60;
        let x = Tensor::randn([n, 8], (Kind::Float, Device::Cpu));
        let k = gram(&[&x], KernelFn::ArcCos).unwrap();
        let y = targets(&Tensor::randint(3, [n], (Kind::Int64, Device::Cpu)), 3);
        let lambdas = [0.05, 0.2, 1.0, 30.0];
        let Solved { xs, steps } = solve(&k, &y, &lambdas, 500, None, (10, 0)).unwrap();
        assert!(steps.iter().all(|&s| s < 500), "{steps:?} steps");
        for (a, l) in xs.iter().zip(lambdas) {
            let err = error_against_direct(a, &k, &y, l);
            assert!(err < 1e-2, "λ {l}: relative error {err}");
        }
    }

    #[test]
    fn the_kernel_is_the_arc_cosine_formula() {
        let a = Tensor::from_slice(&[3.0f32, 0.0, 1.0, 1.0]).view([2, 2]);
        let k = gram(&[&a], KernelFn::ArcCos).unwrap();
        // u = a/√2: ‖u0‖ = 3/√2, ‖u1‖ = 1, θ = 45°.
        let (n0, t) = (3.0 / 2f64.sqrt(), PI / 4.0);
        let want01 = n0 * (t.sin() + (PI - t) * t.cos()) / PI;
        assert!((k.double_value(&[0, 1]) - want01).abs() < 1e-5);
        assert!((k.double_value(&[0, 0]) - 4.5).abs() < 1e-5, "k(x, x) = ‖x‖²/D");
        assert!((k.double_value(&[1, 0]) - want01).abs() < 1e-5);
    }

    /// Each `--kernel` against its formula in float64, through the CPU loop and through
    /// libtorch's ops (the accelerator path).
    #[test]
    fn every_kernel_is_its_formula_on_both_paths() {
        tch::manual_seed(6);
        let x = Tensor::randn([40, 7], (Kind::Float, Device::Cpu));
        let xd = x.to_kind(Kind::Double) / 7f64.sqrt();
        let norms = xd.square().sum_dim_intlist(1, true, Kind::Double).sqrt();
        let outer = norms.mm(&norms.tr());
        let c = (xd.mm(&xd.tr()) / &outer).clamp(-1.0, 1.0);
        let j = |c: &Tensor| {
            let t = c.acos();
            (t.sin() + (-&t + PI) * c) / PI
        };
        for (f, kappa) in [
            (KernelFn::ArcCos, j(&c)),
            (KernelFn::ArcCos2, j(&j(&c).clamp_max(1.0))),
            (KernelFn::Exp(3.0), ((&c - 1.0) * 3.0).exp()),
        ] {
            let want = &outer * kappa;
            let cpu = gram(&[&x], f).unwrap().to_kind(Kind::Double);
            let mut ops = x.mm(&x.tr());
            apply_ops(&mut ops, &scaled_norms(&x), &scaled_norms(&x), 7, f);
            for (path, got) in [("cpu", cpu), ("ops", ops.to_kind(Kind::Double))] {
                let err = (&got - &want).abs().max().double_value(&[]);
                assert!(err < 1e-4, "{f} ({path}): {err}");
            }
            let diag = want.diagonal(0, 0, 1) - norms.square().squeeze();
            assert!(diag.abs().max().double_value(&[]) < 1e-9, "{f}: k(x, x) = ‖u‖²");
        }
    }

    #[test]
    fn kernel_names_parse_and_print_back() {
        for s in ["arccos", "arccos2", "exp:2", "exp:0.5"] {
            assert_eq!(s.parse::<KernelFn>().unwrap().to_string(), s);
        }
        for bad in ["exp:0", "exp:-1", "exp:x", "exp", "rbf", "exp:1000"] {
            assert!(bad.parse::<KernelFn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_first_guess_reaches_the_same_solution_in_fewer_steps() {
        tch::manual_seed(2);
        let n = 80;
        let x = Tensor::randn([n, 6], (Kind::Float, Device::Cpu));
        let k = gram(&[&x], KernelFn::ArcCos).unwrap();
        let y = targets(&Tensor::randint(4, [n], (Kind::Int64, Device::Cpu)), 4);
        let cold = solve(&k, &y, &[0.1], 500, None, (0, 0)).unwrap();
        let near = &cold.xs[0] + Tensor::randn([n, 4], (Kind::Float, Device::Cpu)) * 1e-3;
        let warm = solve(&k, &y, &[0.1], 500, Some(&near), (0, 0)).unwrap();
        let err = (&warm.xs[0] - &cold.xs[0]).norm().double_value(&[]) / cold.xs[0].norm().double_value(&[]);
        assert!(err < 1e-2, "relative difference {err}");
        assert!(warm.steps[0] < cold.steps[0], "{:?} against {:?}", warm.steps, cold.steps);
    }

    #[test]
    fn the_half_computed_gram_matrix_equals_the_full_product_and_libtorchs_ops() {
        tch::manual_seed(3);
        // Three blocks of rows, the last one short; one zero row.
        let x = Tensor::randn([2 * BLOCK + 37, 5], (Kind::Float, Device::Cpu));
        let _ = x.get(7).zero_();
        let half = gram(&[&x], KernelFn::ArcCos).unwrap();
        let norms = scaled_norms(&x);
        let whole = (x.square().sum_dim_intlist(1, true, Kind::Float) / 5.0).sqrt();
        assert!(norms.equal(&whole), "block-wise norms are the whole matrix's, bit for bit");
        let mut ops = x.mm(&x.tr());
        apply_ops(&mut ops, &norms, &norms, 5, KernelFn::ArcCos);
        let err = (&half - &ops).abs().max().double_value(&[]);
        assert!(err < 1e-4, "max difference {err}");
        assert_eq!(half.get(7).abs().max().double_value(&[]), 0.0, "a zero row has k = 0");
        assert!(half.allclose(&half.tr(), 0.0, 0.0, false), "symmetric");
    }

    /// bf16 rows give the float32 kernel of the rounded rows: the Gram matrix by column
    /// strips (the AVX512-BF16 products where the CPU has them; d odd always takes the
    /// float32 copies) and new rows against the support, rounded as the support was.
    #[test]
    fn bf16_rows_give_the_kernel_of_the_rounded_rows() {
        tch::manual_seed(5);
        for d in [64, 33] {
            let x = Tensor::randn([2 * BLOCK + 37, d], (Kind::Float, Device::Cpu));
            let _ = x.get(9).zero_();
            let rounded = x.to_kind(Kind::BFloat16);
            let exact = rounded.to_kind(Kind::Float);
            let (got, want) =
                (gram(&[&rounded], KernelFn::ArcCos).unwrap(), gram(&[&exact], KernelFn::ArcCos).unwrap());
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-5, "d {d}: Gram matrices differ by {err}");
            assert!(got.allclose(&got.tr(), 0.0, 0.0, false), "d {d}: symmetric");
            assert_eq!(got.get(9).abs().max().double_value(&[]), 0.0, "a zero row has k = 0");

            let new = Tensor::randn([70, d], (Kind::Float, Device::Cpu));
            let nb = scaled_norms(&rounded);
            let mut got = Tensor::zeros([70, x.size()[0]], (Kind::Float, Device::Cpu));
            fill(&mut got, &new, &[rounded.shallow_clone()], &[nb.shallow_clone()], KernelFn::ArcCos).unwrap();
            let mut want = got.zeros_like();
            let rounded_new = new.to_kind(Kind::BFloat16).to_kind(Kind::Float);
            fill(&mut want, &rounded_new, &[exact.shallow_clone()], &[nb.shallow_clone()], KernelFn::ArcCos).unwrap();
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-5, "d {d}: new rows' kernel values differ by {err}");
        }
    }

    /// `--kernel-views pairs`: the Gram matrix is the mean of the kernel over the four view
    /// pairs, exactly symmetric, for float32 and bf16 rows (the latter against the float32
    /// kernel of the rounded rows); new rows against two support views get the mean of
    /// both; identical views give the one-view kernel bit for bit.
    #[test]
    fn the_pair_kernel_is_the_mean_over_the_four_view_pairs() {
        tch::manual_seed(8);
        let n = 2 * BLOCK + 37;
        let (a, b) =
            (Tensor::randn([n, 64], (Kind::Float, Device::Cpu)), Tensor::randn([n, 64], (Kind::Float, Device::Cpu)));
        let one = |u: &Tensor, v: &Tensor| {
            let mut k = u.mm(&v.tr());
            apply_ops(&mut k, &scaled_norms(u), &scaled_norms(v), 64, KernelFn::ArcCos);
            k
        };
        for kind in [Kind::Float, Kind::BFloat16] {
            let (ra, rb) = (a.to_kind(kind), b.to_kind(kind));
            let (ea, eb) = (ra.to_kind(Kind::Float), rb.to_kind(Kind::Float));
            let want = (one(&ea, &ea) + one(&eb, &eb) + one(&ea, &eb) + one(&eb, &ea)) / 4.0;
            let got = gram(&[&ra, &rb], KernelFn::ArcCos).unwrap();
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-4, "{kind:?}: the pair Gram matrix differs by {err}");
            assert!(got.equal(&got.tr()), "{kind:?}: symmetric bit for bit");

            let new = Tensor::randn([70, 64], (Kind::Float, Device::Cpu));
            let en = new.to_kind(kind).to_kind(Kind::Float);
            let (views, norms) = ([ra.shallow_clone(), rb.shallow_clone()], [scaled_norms(&ra), scaled_norms(&rb)]);
            let mut got = Tensor::zeros([70, n], (Kind::Float, Device::Cpu));
            fill(&mut got, &new, &views, &norms, KernelFn::ArcCos).unwrap();
            let want = (one(&en, &ea) + one(&en, &eb)) / 2.0;
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-4, "{kind:?}: new rows against both views differ by {err}");

            let single = gram(&[&ra], KernelFn::ArcCos).unwrap();
            assert!(gram(&[&ra, &ra], KernelFn::ArcCos).unwrap().equal(&single), "{kind:?}: identical views");
        }
    }

    /// Through `fit`: two identical views are one view (the same choice and weights, up to
    /// the statistics' summation order), and the support keeps both.
    #[test]
    fn a_pair_fit_on_identical_views_is_the_one_view_fit() {
        tch::manual_seed(9);
        let (n, m) = (300, 240);
        let centres = Tensor::randn([3, 12], (Kind::Float, Device::Cpu)) * 2.0;
        let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3);
        let x = centres.index_select(0, &y) + Tensor::randn([n, 12], (Kind::Float, Device::Cpu));
        let cfg = ProbeConfig {
            val_fraction: 0.2,
            solver: super::super::Solver::Kernel,
            normalize: super::super::Normalize::Standardize,
            weight_decay: 0.1,
            wd_search: true,
            epochs: 1,
            lr: 0.1,
            batch_size: 32,
            schedule: super::super::Schedule::Constant,
            patience: 0,
            max_iter: 500,
            seed: 0,
            val_only: false,
            kernel_precision: KernelPrecision::Fp32,
            kernel: KernelFn::ArcCos,
            kernel_views: KernelViews::Mean,
        };
        let rows = || Features { x: x.copy(), y: y.copy() };
        let single = fit(rows(), None, m, 3, &cfg, Device::Cpu).unwrap();
        let pairs = KernelViews::Pairs;
        let double =
            fit(rows(), Some(x.copy()), m, 3, &ProbeConfig { kernel_views: pairs, ..cfg.clone() }, Device::Cpu)
                .unwrap();
        assert_eq!(single.chosen_weight_decay, double.chosen_weight_decay);
        assert_eq!(single.val_acc, double.val_acc);
        assert!(double.head.w.allclose(&single.head.w, 1e-3, 1e-3, false), "weights differ");
        let support = double.head.kernel.as_ref().unwrap();
        assert!(support.pairs() && support.views[1].size() == [n, 12]);
        let new = Tensor::randn([20, 12], (Kind::Float, Device::Cpu));
        let (l1, l2) = (single.head.logits(&new).unwrap(), double.head.logits(&new).unwrap());
        assert!(l1.allclose(&l2, 1e-3, 1e-3, false), "logits differ");
        // The views must be given as the config says.
        assert!(fit(rows(), None, m, 3, &ProbeConfig { kernel_views: pairs, ..cfg }, Device::Cpu).is_err());
    }

    #[test]
    fn the_preconditioned_solve_matches_the_direct_one_in_fewer_steps() {
        tch::manual_seed(4);
        let n = 400;
        // Correlated rows: a spectrum with a few large eigenvalues, as real features give.
        let x = Tensor::randn([n, 3], (Kind::Float, Device::Cpu))
            .mm(&Tensor::randn([3, 20], (Kind::Float, Device::Cpu)))
            + Tensor::randn([n, 20], (Kind::Float, Device::Cpu)) * 0.3;
        let k = gram(&[&x], KernelFn::ArcCos).unwrap();
        let y = targets(&Tensor::randint(5, [n], (Kind::Int64, Device::Cpu)), 5);
        let lambda = 0.01;
        let plain = solve(&k, &y, &[lambda], 2000, None, (0, 0)).unwrap();
        let pre = solve(&k, &y, &[lambda], 2000, None, (60, 9)).unwrap();
        let err = error_against_direct(&pre.xs[0], &k, &y, lambda);
        assert!(err < 1e-2, "relative error {err}");
        assert!(pre.steps[0] * 2 < plain.steps[0], "{:?} against {:?} plain", pre.steps, plain.steps);
    }

    #[test]
    fn a_system_that_is_not_positive_definite_is_an_error_not_a_result() {
        let n = 30;
        let k = Tensor::eye(n, (Kind::Float, Device::Cpu)) * -2.0;
        let y = targets(&Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3), 3);
        let err = solve(&k, &y, &[0.1], 100, None, (5, 0)).err().expect("an indefinite system must fail");
        assert!(err.to_string().contains("broke down"), "{err}");
    }
}
