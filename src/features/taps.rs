//! Which stages to tap and how each is pooled into the feature vector.
use crate::models::layers::BnMode;
use crate::models::pooling::Grid;
use crate::models::{fused, Network};
use crate::UsageError;
use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;
use tch::Tensor;

/// How a stage's feature map becomes a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    Avg,
    Max,
    /// Average and max pooled maps, concatenated (twice the dimension).
    Avgmax,
}

/// `--encode`: what a tapped map goes through before pooling.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Encode {
    /// The map as it is (every network's stages already end in a ReLU, but patchnet's).
    #[default]
    None,
    /// Coates & Ng's soft threshold with both polarities: ReLU(z − A) and ReLU(−z − A),
    /// pooled separately and concatenated (twice the dimension).
    Soft(f64),
}

impl Encode {
    pub fn is_none(&self) -> bool {
        *self == Encode::None
    }

    /// The soft threshold, if any.
    pub fn threshold(&self) -> Option<f64> {
        match self {
            Encode::None => None,
            Encode::Soft(a) => Some(*a),
        }
    }
}

impl std::str::FromStr for Encode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "none" => Ok(Encode::None),
            Some(("soft", a)) => match a.parse::<f64>() {
                Ok(a) if a.is_finite() && a >= 0.0 => Ok(Encode::Soft(a)),
                _ => Err(format!("--encode soft:A: A must be a number ≥ 0, got {a:?}")),
            },
            _ => Err(format!("--encode: expected none or soft:A, got {s:?}")),
        }
    }
}

impl std::fmt::Display for Encode {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Encode::None => f.write_str("none"),
            Encode::Soft(a) => write!(f, "soft:{a}"),
        }
    }
}

crate::serde_as_str!(Encode);

/// Which features a run extracts.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FeatureSpec {
    /// Stage names (layer1…, block1…, or `fc2` for VGG's classifier features); empty means
    /// the family's default, the last stage.
    pub taps: Vec<String>,
    pub pool: Pool,
    /// Adaptive K×K pooling: each tapped stage gives C·K² values (2·C·K² with avgmax).
    pub pool_size: i64,
    /// Absent from older configs (which are all `none`), so their cache keys still match.
    #[serde(default, skip_serializing_if = "Encode::is_none")]
    pub encode: Encode,
}

impl FeatureSpec {
    pub fn label(&self) -> String {
        if self.taps.is_empty() {
            "last".into()
        } else {
            self.taps.join("+")
        }
    }
}

/// A tap resolved against a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tap {
    Stage(usize),
    Classifier,
}

/// The taps of `spec` resolved against `net`, each with its pooling (`name:K` cells or
/// `name:W/S` windows override `--pool-size` for that tap); errors name the valid choices.
pub(crate) fn resolve(net: &Network, spec: &FeatureSpec) -> Result<Vec<(Tap, Grid)>> {
    let names = net.body.stage_names();
    if spec.taps.is_empty() {
        return Ok(vec![(Tap::Stage(names.len() - 1), Grid::Cells(spec.pool_size))]);
    }
    let mut taps = Vec::new();
    for t in &spec.taps {
        let (name, size) = match t.split_once(':') {
            Some((name, g)) => match g.parse::<Grid>() {
                Ok(g) => (name, g),
                Err(e) => return Err(UsageError(format!("--features {t}: {e}")).into()),
            },
            None => (t.as_str(), Grid::Cells(spec.pool_size)),
        };
        if name == "fc2" && net.arch.is_vgg() {
            taps.push((Tap::Classifier, size));
        } else if let Some(i) = names.iter().position(|n| n == name) {
            taps.push((Tap::Stage(i), size));
        } else {
            let extra = if net.arch.is_vgg() { ", fc2" } else { "" };
            return Err(UsageError(format!(
                "--features {t}: {} has no such stage; choose from {}{extra}",
                net.arch.name(),
                names.join(", ")
            ))
            .into());
        }
    }
    Ok(taps)
}

/// The frozen network's features of a batch, exact whatever the convolutions: a fused
/// forward pass after which `fused::fp_raised` reports an invalid operation or overflow
/// (oneDNN's ReLU may then have turned a NaN into 0) is rerun on aten's ops, and so is a
/// batch with a non-finite pixel (a NaN crosses a convolution without raising a flag).
pub(crate) fn forward_eval(net: &Network, x: &Tensor, spec: &FeatureSpec, taps: &[(Tap, Grid)]) -> Tensor {
    if net.device() != tch::Device::Cpu {
        return forward_checked(net, x, spec, taps);
    }
    // The pass's activations come from (and go back to) the heap, not fresh mappings the
    // kernel zeroes page by page (util::libtorch::keep_freed_memory).
    let _keep = crate::util::libtorch::keep_freed_memory();
    forward_checked(net, x, spec, taps)
}

fn forward_checked(net: &Network, x: &Tensor, spec: &FeatureSpec, taps: &[(Tap, Grid)]) -> Tensor {
    if !net.is_fused() {
        return forward(net, x, spec, taps, BnMode::Eval);
    }
    fused::fp_raised(); // clears flags left by earlier work
    let y = forward(net, x, spec, taps, BnMode::Eval);
    if !fused::fp_raised() && bool::try_from(x.isfinite().all()).unwrap_or(false) {
        return y;
    }
    if std::env::var_os("CNNPROBE_DEBUG").is_some() {
        eprintln!("debug: floating-point flags raised in a fused batch; rerun on aten's convolutions");
    }
    forward(net, x, spec, taps, BnMode::EvalAten)
}

/// The last stage the taps read (the classifier reads the last of all).
fn last_stage_needed(net: &Network, taps: &[(Tap, Grid)]) -> usize {
    let last = net.body.stage_names().len() - 1;
    taps.iter()
        .map(|(t, _)| match t {
            Tap::Stage(i) => *i,
            Tap::Classifier => last,
        })
        .max()
        .unwrap_or(last)
}

/// The feature vector of a batch, under `mode`: the network's own pooled features where it
/// has them (whole batch: it chunks and reuses its buffers itself), else its maps pooled
/// here, in chunks where the network asks for them.
pub(crate) fn forward(net: &Network, x: &Tensor, spec: &FeatureSpec, taps: &[(Tap, Grid)], mode: BnMode) -> Tensor {
    if let ([(Tap::Stage(0), grid)], Pool::Avg) = (taps, spec.pool) {
        if let Some(f) = net.body.pooled_features(x, spec.encode.threshold(), *grid) {
            // `feature_dim`'s dry run has checked that the grid fits the map.
            return f.expect("the pooling grid fits the map");
        }
    }
    let n = x.size()[0];
    match net.body.chunk() {
        Some(c) if n > c => {
            let parts: Vec<Tensor> = (0..n)
                .step_by(c as usize)
                .map(|i| forward_whole(net, &x.narrow(0, i, c.min(n - i)), spec, taps, mode))
                .collect();
            Tensor::cat(&parts, 0)
        }
        _ => forward_whole(net, x, spec, taps, mode),
    }
}

fn forward_whole(net: &Network, x: &Tensor, spec: &FeatureSpec, taps: &[(Tap, Grid)], mode: BnMode) -> Tensor {
    let until = last_stage_needed(net, taps);
    let stages = net.body.forward_stages(x, mode, until);
    let parts: Vec<Tensor> = taps
        .iter()
        .map(|(t, k)| match t {
            Tap::Stage(i) => encode_pool(&stages[*i], spec, *k),
            Tap::Classifier => net.body.classifier_features(&stages[until]).expect("VGG has a classifier"),
        })
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().expect("one part")
    } else {
        Tensor::cat(&parts, 1)
    }
}

fn encode_pool(map: &Tensor, spec: &FeatureSpec, k: Grid) -> Tensor {
    match spec.encode {
        Encode::None => pool(map, spec.pool, k),
        Encode::Soft(a) => {
            Tensor::cat(&[pool(&(map - a).relu(), spec.pool, k), pool(&(-map - a).relu(), spec.pool, k)], 1)
        }
    }
}

fn pool(map: &Tensor, pool: Pool, grid: Grid) -> Tensor {
    let avg = || grid.avg(map);
    let max = || grid.max(map);
    match pool {
        Pool::Avg => avg(),
        Pool::Max => max(),
        Pool::Avgmax => Tensor::cat(&[avg(), max()], 1),
    }
}

/// Features of an already normalised float batch (parity checks, library users).
pub fn forward_batch(net: &Network, spec: &FeatureSpec, x: &Tensor) -> Result<Tensor> {
    let taps = resolve(net, spec)?;
    Ok(tch::no_grad(|| forward_eval(net, x, spec, &taps)))
}

/// The feature dimension for `input` × `input` images, from one dry run on zeros. Fails
/// when a tap's cells or windows do not fit its stage's map.
pub fn feature_dim(net: &Network, spec: &FeatureSpec, input: i64) -> Result<i64> {
    let taps = resolve(net, spec)?;
    tch::no_grad(|| {
        let x = Tensor::zeros([1, 3, input, input], (net.kind(), net.device()));
        // Only the stages the taps read, on aten's ops: the fused ones would pack weights
        // for a one-image input that no real batch has (and, through the unused stages,
        // random-best's 2048-channel blocks: 0.6 GB, 0.6 s).
        let stages = net.body.forward_stages(&x, BnMode::EvalAten, last_stage_needed(net, &taps));
        for (t, grid) in &taps {
            if let Tap::Stage(i) = t {
                let size = stages[*i].size();
                let (h, w, stage) = (size[2], size[3], &net.body.stage_names()[*i]);
                if grid.out_size(h, w).is_err() {
                    let what = match grid {
                        Grid::Cells(k) => format!("--pool-size {k} is larger than"),
                        Grid::Window { size, .. } => {
                            format!("--features {stage}:{grid}: a {size}×{size} window exceeds")
                        }
                    };
                    return Err(
                        UsageError(format!("{what} the {h}×{w} map of {stage} at {input}×{input} input")).into()
                    );
                }
            }
        }
        Ok(forward(net, &x, spec, &taps, BnMode::EvalAten).size()[1])
    })
}
