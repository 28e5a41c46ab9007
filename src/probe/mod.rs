//! The linear probe: multinomial logistic regression on frozen features, the protocol
//! of CLIP's linear-probe evaluation. Features are scaled with statistics of the training
//! part only; the L2 strength is either given or chosen on a seeded stratified validation
//! split by a coarse-to-fine log-grid search, then the head is refit on train+val. The test
//! split is never passed in here: it is scored once, by the caller, with the final head.
mod bf16;
mod dense;
mod fit;
pub mod kernel;
pub mod lbfgs;
pub mod metrics;
pub mod protocol;
pub mod train;

pub use fit::{fit, Fitted, TrainingData};
pub use protocol::{evaluate, Evaluation};

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// Full-batch L-BFGS on the exact regularised objective (cnnprobe's own, on tch tensors).
    Lbfgs,
    Adamw,
    Adam,
    /// SGD with Nesterov momentum 0.9.
    Sgd,
    /// Kernel ridge regression (one-vs-rest) on the arc-cosine kernel of the scaled
    /// features, λ from --weight-decay or chosen on validation; an n×n Gram matrix, so one
    /// row per image (mirrored views are averaged).
    Kernel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Zero mean, unit variance per feature (train statistics).
    Standardize,
    /// Each feature vector scaled to unit L2 norm.
    L2,
    None,
}

/// How the kernel readout holds its scaled features (the Gram matrix is float32 either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelPrecision {
    #[default]
    Fp32,
    /// Rounded to bfloat16 after scaling: half the memory; products summed in float32
    /// (AVX512-BF16 where the CPU has it, float32 copies of row blocks elsewhere).
    Bf16,
}

/// How the kernel readout treats an image's two mirrored views (`--hflip`, `--hflip-test`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelViews {
    /// One row per image, the mean of its views' features.
    #[default]
    Mean,
    /// Both views kept; k between two images is the mean of k over the four pairs of their
    /// views (the kernel of flip-averaged infinitely wide features): twice the rows' memory,
    /// four times the kernel's products.
    Pairs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    /// ×0.1 at 50% and 75% of the epochs.
    Step,
    Constant,
}

/// Everything that decides how the head is trained and chosen.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ProbeConfig {
    /// Fraction of each train class held out for validation.
    pub val_fraction: f64,
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
    /// The kernel readout's stored features (configs logged before it existed: fp32).
    #[serde(default)]
    pub kernel_precision: KernelPrecision,
    /// The kernel readout's function of the angle (configs logged before it existed: arccos).
    #[serde(default)]
    pub kernel: kernel::KernelFn,
    /// The kernel readout's use of mirrored views (configs logged before it existed: mean).
    #[serde(default)]
    pub kernel_views: KernelViews,
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
            Normalize::Standardize if x.kind() != Kind::Float => Self::fit_blocks(std::slice::from_ref(x)),
            Normalize::Standardize => Scaler {
                kind,
                mean: Some(x.mean_dim(0, true, Kind::Float)),
                // Population std, floored so constant (e.g. dead-ReLU) features stay finite.
                std: Some(x.std_correction(0, 0, true).clamp_min(1e-6)),
            },
            _ => Scaler { kind, mean: None, std: None },
        }
    }

    /// The scaling of the rows of several parts together (`--kernel-views pairs`: an image's
    /// two views), without stacking them.
    pub fn fit_views(parts: &[Tensor], kind: Normalize) -> Scaler {
        match kind {
            Normalize::Standardize => Self::fit_blocks(parts),
            _ => Self::fit(&parts[0], kind),
        }
    }

    /// Standardisation statistics of the parts' rows together (bf16 rows of
    /// `--kernel-precision bf16-lean`, or both views): float32 copies of 1024 rows at a time
    /// summed in float64, mean then variance, so no feature-sized temporary.
    fn fit_blocks(parts: &[Tensor]) -> Scaler {
        let n: i64 = parts.iter().map(|x| x.size()[0]).sum();
        let blocks = |f: &mut dyn FnMut(Tensor)| {
            for x in parts {
                let rows = x.size()[0];
                for i in (0..rows).step_by(1024) {
                    f(x.narrow(0, i, 1024.min(rows - i)).to_kind(Kind::Float));
                }
            }
        };
        let x = &parts[0];
        let mut sum = Tensor::zeros([1, x.size()[1]], (Kind::Double, x.device()));
        blocks(&mut |b| sum += b.sum_dim_intlist(0, true, Kind::Double));
        let mean = (sum / n.max(1) as f64).to_kind(Kind::Float);
        let mut squares = Tensor::zeros([1, x.size()[1]], (Kind::Double, x.device()));
        blocks(&mut |b| squares += (b - &mean).square().sum_dim_intlist(0, true, Kind::Double));
        // Population std, floored as in `fit`.
        let std = (squares / n.max(1) as f64).sqrt().clamp_min(1e-6).to_kind(Kind::Float);
        Scaler { kind: Normalize::Standardize, mean: Some(mean), std: Some(std) }
    }

    /// Scales `x` in place (no second feature-sized matrix).
    pub fn apply_in_place(&self, x: &mut Tensor) {
        match (self.kind, &self.mean, &self.std) {
            (Normalize::Standardize, Some(m), Some(s)) if x.kind() != Kind::Float => {
                // bf16 rows (`--kernel-precision bf16-lean`), 1024 at a time through float32 and back:
                // libtorch's mixed-type in-place op promoted the whole matrix to float32
                // first (55,296 features: killed for memory at 24 GB).
                let (m, s) = (m.to_device(x.device()), s.to_device(x.device()));
                let n = x.size()[0];
                for i in (0..n).step_by(1024) {
                    let mut rows = x.narrow(0, i, 1024.min(n - i));
                    let scaled = (rows.to_kind(Kind::Float) - &m) / &s;
                    rows.copy_(&scaled);
                }
            }
            (Normalize::Standardize, Some(m), Some(s)) => {
                let _ = x.g_sub_(&m.to_device(x.device())).g_div_(&s.to_device(x.device()));
            }
            _ => *x = self.apply(x),
        }
    }

    pub fn apply(&self, x: &Tensor) -> Tensor {
        match (self.kind, &self.mean, &self.std) {
            // bf16 rows stay bf16 (the kernel head rounds new rows as its support was).
            (Normalize::Standardize, Some(_), Some(_)) if x.kind() != Kind::Float => {
                let mut out = x.copy();
                self.apply_in_place(&mut out);
                out
            }
            (Normalize::Standardize, Some(m), Some(s)) => (x - m.to_device(x.device())) / s.to_device(x.device()),
            (Normalize::L2, _, _) => x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12),
            _ => x.shallow_clone(),
        }
    }
}

/// A trained head: scaling, then logits = x·Wᵀ + b, or for a kernel head
/// k(x, support)·Wᵀ + b (W then holds one weight per support row).
pub struct Head {
    pub w: Tensor,
    pub b: Tensor,
    pub scaler: Scaler,
    pub kernel: Option<kernel::Support>,
}

impl Head {
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let x = self.scaler.apply(&x.to_device(self.w.device()));
            Ok(match &self.kernel {
                Some(support) => support.map(&x)?.mm(&self.w.tr()) + &self.b,
                None => x.mm(&self.w.tr()) + &self.b,
            })
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
        if let Some(support) = &self.kernel {
            // The scaled rows the kernel compares with; `weight` has one column each (with
            // `--kernel-views pairs`, one per image: both views of it are support rows).
            for (name, rows) in ["kernel_support", "kernel_support_flip"].into_iter().zip(&support.views) {
                named.push((name.into(), cpu(rows)));
            }
        }
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("--save-head: cannot create {}", dir.display()))?;
        let tmp = tempfile::Builder::new().prefix(".head.").suffix(".safetensors").tempfile_in(dir)?.into_temp_path();
        Tensor::write_safetensors(&named, &tmp)
            .with_context(|| format!("--save-head: cannot write {}", path.display()))?;
        crate::util::files::make_public(&tmp)?;
        tmp.persist(path).with_context(|| format!("--save-head: cannot move the file to {}", path.display()))?;
        Ok(())
    }
}
