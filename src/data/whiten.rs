//! ZCA whitening of whole images (`--whiten zca[:EPS]`), with statistics from the train
//! images only, never their labels. It is a data-dependent lever (issue 13's "no-gradient"
//! track): a run with it is no longer data-free, and its provenance says so.
use super::normalize::ChannelStats;
use super::Source;
use anyhow::{ensure, Result};
use std::fmt;
use std::str::FromStr;
use tch::{Kind, Tensor};

/// `--whiten [patch-]zca[:EPS]`: EPS is relative to the covariance's mean eigenvalue (its
/// trace over the dimension), so it means the same whatever the input scale.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Whiten {
    pub eps: f64,
    /// `patch-zca`: whiten `--arch patchnet`'s patches, not the images (absent from older
    /// configs, which are all image ZCA).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub patches: bool,
}

/// The default EPS: damps directions below a tenth of the mean variance.
pub const DEFAULT_EPS: f64 = 0.1;

/// Whitening a D-dimensional image needs a D×D matrix; beyond this many dimensions (a
/// 36×36 RGB image) it would cost more than the network it feeds.
pub const MAX_DIM: i64 = 3 * 36 * 36;

impl FromStr for Whiten {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, eps) = match s.split_once(':') {
            None => (s, None),
            Some((name, e)) => (name, Some(e)),
        };
        let patches = match name {
            "zca" => false,
            "patch-zca" => true,
            _ => return Err(format!("--whiten: expected zca, zca:EPS, patch-zca or patch-zca:EPS, got {s:?}")),
        };
        let eps = match eps {
            None => DEFAULT_EPS,
            Some(e) => e.parse::<f64>().map_err(|_| format!("--whiten {name}:EPS: EPS {e:?} is not a number"))?,
        };
        if !(eps.is_finite() && eps > 0.0) {
            return Err(format!("--whiten {name}:EPS: EPS must be positive, got {eps}"));
        }
        Ok(Whiten { eps, patches })
    }
}

impl fmt::Display for Whiten {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}zca:{}", if self.patches { "patch-" } else { "" }, self.eps)
    }
}

/// x ↦ (x − mean)·matrix on flattened images; `matrix` is symmetric, U·diag((λ+ε)^-½)·Uᵀ.
pub struct Zca {
    /// (1, D) float32.
    pub mean: Tensor,
    /// (D, D) float32.
    pub matrix: Tensor,
}

impl Zca {
    /// Whitens a float (N, C, H, W) batch with C·H·W = D, on the batch's device.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        (x.reshape([size[0], -1]) - &self.mean).matmul(&self.matrix).reshape(size.as_slice())
    }
}

/// Running sums of a stream of flattened images: float32 products per block, float64
/// across blocks, so 50k CIFAR images cost one pass and a 3072² matrix.
pub struct Moments {
    n: i64,
    sum: Tensor,
    gram: Tensor,
}

impl Moments {
    pub fn new(dim: i64) -> Moments {
        let opts = (Kind::Double, tch::Device::Cpu);
        Moments { n: 0, sum: Tensor::zeros([dim], opts), gram: Tensor::zeros([dim, dim], opts) }
    }

    /// Adds a float (N, …) batch.
    pub fn add(&mut self, x: &Tensor) {
        let x = x.reshape([x.size()[0], -1]).to_kind(Kind::Float);
        self.n += x.size()[0];
        self.sum += x.sum_dim_intlist(0, false, Kind::Double);
        self.gram += x.tr().matmul(&x).to_kind(Kind::Double);
    }

    /// The ZCA transform of the population covariance (divided by N), with ε = eps × the
    /// mean eigenvalue added to every eigenvalue.
    pub fn zca(&self, eps: f64) -> Result<Zca> {
        ensure!(self.n > 1, "--whiten: needs at least 2 train images, got {}", self.n);
        let n = self.n as f64;
        let mean = &self.sum / n;
        let cov = &self.gram / n - mean.outer(&mean);
        let cov = (&cov + cov.tr()) / 2.0; // exactly symmetric for eigh
        let (values, vectors) = cov.linalg_eigh("L");
        let values = values.clamp_min(0.0);
        let damp = eps * values.mean(Kind::Double).double_value(&[]);
        ensure!(damp > 0.0, "--whiten: the train images have no variance");
        let scale = (values + damp).rsqrt();
        let matrix = (&vectors * scale.unsqueeze(0)).matmul(&vectors.tr());
        Ok(Zca { mean: mean.unsqueeze(0).to_kind(Kind::Float), matrix: matrix.to_kind(Kind::Float) })
    }
}

/// ZCA statistics of every train image, normalised per channel with `stats` as the
/// extraction normalises them. Images must already be at the network's input size.
pub fn fit(train: &Source, stats: ChannelStats, eps: f64, workers: usize) -> Result<Zca> {
    let (h, w) = train.image_size();
    let dim = 3 * h * w;
    ensure!(
        dim <= MAX_DIM,
        "--whiten zca: images of {h}×{w} have {dim} dimensions; image ZCA is for small images (at most {MAX_DIM}, 36×36)"
    );
    let (scale, shift) = stats.u8_affine();
    let mut m = Moments::new(dim);
    tch::no_grad(|| -> Result<()> {
        for batch in train.batches(2048, workers) {
            m.add(&(batch?.images.to_kind(Kind::Float) * &scale + &shift));
        }
        Ok(())
    })?;
    m.zca(eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zca_and_eps() {
        assert_eq!("zca".parse::<Whiten>().unwrap().eps, DEFAULT_EPS);
        assert_eq!("zca:0.01".parse::<Whiten>().unwrap().eps, 0.01);
        assert_eq!("patch-zca:0.01".parse::<Whiten>().unwrap(), Whiten { eps: 0.01, patches: true });
        assert!(!"zca".parse::<Whiten>().unwrap().patches);
        for w in ["zca:0.5", "patch-zca:0.01"] {
            assert_eq!(w.parse::<Whiten>().unwrap().to_string(), w);
        }
        for bad in ["pca", "zca:", "zca:0", "zca:-1", "zca:x", "patch-zca:", "patch:0.1"] {
            assert!(bad.parse::<Whiten>().is_err(), "{bad}");
        }
    }

    #[test]
    fn whitened_data_has_identity_covariance_when_eps_is_small() {
        // Correlated columns through a fixed, well-conditioned mixing (a random one can be
        // near-singular, which float32 cannot whiten to 1e-3 at this EPS).
        let mix: Vec<f32> = (0..36).map(|k| if k / 6 == k % 6 { 1.0 + (k / 6) as f32 } else { 0.3 }).collect();
        let x =
            Tensor::randn([4000, 6], (Kind::Float, tch::Device::Cpu)).matmul(&Tensor::from_slice(&mix).view([6, 6]));
        let mut m = Moments::new(6);
        m.add(&x.narrow(0, 0, 1500));
        m.add(&x.narrow(0, 1500, 2500));
        let z = m.zca(1e-9).unwrap();
        let y = (&x - &z.mean).matmul(&z.matrix).to_kind(Kind::Double);
        let cov = y.tr().matmul(&y) / 4000.0;
        let err = (cov - Tensor::eye(6, (Kind::Double, tch::Device::Cpu))).abs().max().double_value(&[]);
        assert!(err < 1e-3, "covariance off identity by {err}");
        // ZCA, not any whitening: the matrix is symmetric.
        assert!(z.matrix.allclose(&z.matrix.tr(), 1e-5, 1e-5, false));
    }
}
