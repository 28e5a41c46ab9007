//! Frozen feature extraction: which stages to tap and how to pool them, BatchNorm
//! calibration, and the batched extraction loop (uint8 batches go to the device, are
//! converted and normalised there, and pooled features land in a preallocated CPU matrix).
use crate::data::normalize::ChannelStats;
use crate::data::{split, Split};
use crate::models::layers::BnMode;
use crate::models::Network;
use crate::progress;
use anyhow::{bail, ensure, Result};
use clap::ValueEnum;
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How a stage's feature map becomes a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    Avg,
    Max,
    /// Average and max pooled maps, concatenated (twice the dimension).
    Avgmax,
}

/// Which features a run extracts.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureSpec {
    /// Stage names (layer1…, block1…, or `fc2` for VGG's classifier features); empty means
    /// the family's default, the last stage.
    pub taps: Vec<String>,
    pub pool: Pool,
    /// Adaptive K×K pooling: each tapped stage gives C·K² values (2·C·K² with avgmax).
    pub pool_size: i64,
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
enum Tap {
    Stage(usize),
    Classifier,
}

/// The taps of `spec` resolved against `net`, each with its pooling size (`name:K`
/// overrides `--pool-size` for that tap); errors name the valid choices.
fn resolve(net: &Network, spec: &FeatureSpec) -> Result<Vec<(Tap, i64)>> {
    let names = net.body.stage_names();
    if spec.taps.is_empty() {
        return Ok(vec![(Tap::Stage(names.len() - 1), spec.pool_size)]);
    }
    let mut taps = Vec::new();
    for t in &spec.taps {
        let (name, size) = match t.split_once(':') {
            Some((name, k)) => match k.parse::<i64>() {
                Ok(k) if k > 0 => (name, k),
                _ => {
                    return Err(crate::UsageError(format!(
                        "--features {t}: the pooling size after ':' must be a positive whole number"
                    ))
                    .into())
                }
            },
            None => (t.as_str(), spec.pool_size),
        };
        if name == "fc2" && net.arch.is_vgg() {
            taps.push((Tap::Classifier, size));
        } else if let Some(i) = names.iter().position(|n| n == name) {
            taps.push((Tap::Stage(i), size));
        } else {
            let extra = if net.arch.is_vgg() { ", fc2" } else { "" };
            return Err(crate::UsageError(format!(
                "--features {t}: {} has no such stage; choose from {}{extra}",
                net.arch.name(),
                names.join(", ")
            ))
            .into());
        }
    }
    Ok(taps)
}

/// The feature vector of a batch, under `mode`.
fn forward(net: &Network, x: &Tensor, spec: &FeatureSpec, taps: &[(Tap, i64)], mode: BnMode) -> Tensor {
    let last_needed = net.body.stage_names().len() - 1;
    let until = taps
        .iter()
        .map(|(t, _)| match t {
            Tap::Stage(i) => *i,
            Tap::Classifier => last_needed,
        })
        .max()
        .unwrap_or(last_needed);
    let stages = net.body.forward_stages(x, mode, until);
    let parts: Vec<Tensor> = taps
        .iter()
        .map(|(t, k)| match t {
            Tap::Stage(i) => pool(&stages[*i], spec.pool, *k),
            Tap::Classifier => net.body.classifier_features(&stages[until]).expect("VGG has a classifier"),
        })
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().expect("one part")
    } else {
        Tensor::cat(&parts, 1)
    }
}

fn pool(map: &Tensor, pool: Pool, k: i64) -> Tensor {
    let avg = || map.adaptive_avg_pool2d([k, k]).flatten(1, -1);
    let max = || map.adaptive_max_pool2d([k, k]).0.flatten(1, -1);
    match pool {
        Pool::Avg => avg(),
        Pool::Max => max(),
        Pool::Avgmax => Tensor::cat(&[avg(), max()], 1),
    }
}

/// Features of an already normalised float batch (parity checks, library users).
pub fn forward_batch(net: &Network, spec: &FeatureSpec, x: &Tensor) -> Result<Tensor> {
    let taps = resolve(net, spec)?;
    Ok(tch::no_grad(|| forward(net, x, spec, &taps, BnMode::Eval)))
}

/// The feature dimension for `input` × `input` images, from one dry run on zeros. Fails
/// when `--pool-size` exceeds a tapped stage's map.
pub fn feature_dim(net: &Network, spec: &FeatureSpec, input: i64) -> Result<i64> {
    let taps = resolve(net, spec)?;
    tch::no_grad(|| {
        let x = Tensor::zeros([1, 3, input, input], (net.kind(), net.device()));
        let stages = net.body.forward_stages(&x, BnMode::Eval, net.body.stage_names().len() - 1);
        for (t, k) in &taps {
            if let Tap::Stage(i) = t {
                let size = stages[*i].size();
                let (h, w) = (size[2], size[3]);
                if *k > h.min(w) {
                    return Err(crate::UsageError(format!(
                        "--pool-size {k} is larger than the {h}×{w} map of {} at {input}×{input} input",
                        net.body.stage_names()[*i]
                    ))
                    .into());
                }
            }
        }
        Ok(forward(net, &x, spec, &taps, BnMode::Eval).size()[1])
    })
}

/// How uint8 images become network input.
#[derive(Clone, Copy, Debug)]
pub struct Preprocess {
    pub stats: ChannelStats,
    /// Square input size; images of another size are resized (bilinear) on the device.
    pub input_size: i64,
    /// Compute precision of the network (features are always stored as float32).
    pub precision: Precision,
}

/// `--precision`: the dtype the frozen network computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// `--batch-size N|auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BatchSize {
    /// Start large on CUDA and halve on out-of-memory; 256 on the CPU.
    Auto,
    Fixed(usize),
}

impl std::str::FromStr for BatchSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BatchSize::Auto),
            _ => match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(BatchSize::Fixed(n)),
                _ => Err(format!("'{s}' is not a positive whole number or auto")),
            },
        }
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            BatchSize::Auto => write!(f, "auto"),
            BatchSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl BatchSize {
    /// The size to start with on `device`.
    pub fn initial(self, device: Device) -> usize {
        match (self, device) {
            (BatchSize::Fixed(n), _) => n,
            (BatchSize::Auto, Device::Cuda(_)) => 2048,
            (BatchSize::Auto, _) => 256,
        }
    }
}

/// Runs `attempt(size)`, halving `size` while it fails for lack of memory. Returns the
/// result and the size that worked; any other failure is returned as it is.
pub fn with_backoff<T>(mut size: usize, mut attempt: impl FnMut(usize) -> Result<T, String>) -> Result<(T, usize)> {
    loop {
        match attempt(size) {
            Ok(v) => return Ok((v, size)),
            Err(msg) if msg.contains("out of memory") && size > 1 => {
                size /= 2;
                eprintln!("out of memory: batch size down to {size}");
            }
            Err(msg) => bail!("extraction failed at batch size {size}: {msg}"),
        }
    }
}

/// Runs `f`, turning a libtorch panic (e.g. CUDA out of memory) into an Err with its
/// message, without printing the panic.
fn catch_torch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// Normalises (and resizes) a uint8 batch on the device: x/255 normalised = x·scale + shift.
struct Normalizer {
    scale: Tensor,
    shift: Tensor,
    device: Device,
    size: i64,
    kind: Kind,
    /// Match the folded (channels-last) weights, so no layer converts layouts.
    channels_last: bool,
}

impl Normalizer {
    fn new(pre: Preprocess, device: Device) -> Self {
        let stats = pre.stats;
        let scale: Vec<f32> = stats.std.iter().map(|s| (1.0 / (255.0 * s)) as f32).collect();
        let shift: Vec<f32> = stats.mean.iter().zip(stats.std).map(|(m, s)| (-m / s) as f32).collect();
        Normalizer {
            scale: Tensor::from_slice(&scale).view([1, 3, 1, 1]).to_device(device),
            shift: Tensor::from_slice(&shift).view([1, 3, 1, 1]).to_device(device),
            device,
            size: pre.input_size,
            kind: pre.precision.kind(),
            channels_last: false,
        }
    }

    fn apply(&self, images: &Tensor) -> Tensor {
        // On CUDA: uint8 (4× smaller than float) crosses the bus from pinned memory,
        // asynchronously; conversion happens on the GPU.
        let mut x = match self.device {
            Device::Cuda(_) => images.pin_memory(self.device).to_device_(self.device, Kind::Uint8, true, false),
            _ => images.shallow_clone(),
        }
        .to_kind(Kind::Float);
        x *= &self.scale;
        x += &self.shift;
        let (h, w) = (x.size()[2], x.size()[3]);
        if (h, w) != (self.size, self.size) {
            let out = [self.size, self.size];
            x = if self.size < h.min(w) {
                // Shrinking needs antialiasing, as torchvision's Resize does on tensors.
                Tensor::internal_upsample_bilinear2d_aa(&x, out, false, None, None)
            } else {
                x.upsample_bilinear2d(out, false, None, None)
            };
        }
        if self.kind != Kind::Float {
            x = x.to_kind(self.kind);
        }
        if self.channels_last {
            x = crate::models::layers::channels_last(&x);
        }
        x
    }
}

/// `--bn calibrate:N`: resets every BatchNorm's running statistics and recomputes them as
/// the average over batches of N training images (a seeded sample, no labels, no
/// gradients), then the network is used frozen in eval mode as before.
pub fn calibrate_batchnorm(
    net: &mut Network,
    train: &Split,
    n: usize,
    seed: u64,
    pre: Preprocess,
    batch_size: usize,
) -> Result<()> {
    ensure!(n > 0, "--bn calibrate:N needs N > 0");
    net.unfold_batchnorm();
    let bns = net.batchnorms();
    ensure!(!bns.is_empty(), "--bn calibrate: {} has no BatchNorm layers", net.arch.name());
    bns.iter().for_each(|bn| bn.reset_running_stats());
    let n = n.min(train.len());
    let order = split::permutation(train.len(), seed ^ 0xB17C);
    let idx: Vec<i64> = order[..n].iter().map(|&i| i as i64).collect();
    let norm = Normalizer::new(pre, net.device());
    let last = net.body.stage_names().len() - 1;
    let bar = progress::images(n as u64, "calibrate");
    tch::no_grad(|| {
        for (k, chunk) in idx.chunks(batch_size).enumerate() {
            let images = train.images.index_select(0, &Tensor::from_slice(chunk));
            let x = norm.apply(&images);
            let _ = net.body.forward_stages(&x, BnMode::Calibrate { momentum: 1.0 / (k as f64 + 1.0) }, last);
            bar.inc(chunk.len() as u64);
        }
    });
    bar.finish_and_clear();
    Ok(())
}

/// Features of one split: float32 (N, D) on the CPU, with the labels.
pub struct Features {
    pub x: Tensor,
    pub y: Tensor,
}

/// Extracts features of `split` in batches (halving the batch on out-of-memory with
/// `BatchSize::Auto`). Returns them with the seconds spent.
pub fn extract(
    net: &Network,
    spec: &FeatureSpec,
    pre: Preprocess,
    split: &Split,
    batch_size: BatchSize,
    what: &str,
) -> Result<(Features, f64)> {
    let taps = resolve(net, spec)?;
    let n = split.len() as i64;
    let dim = feature_dim(net, spec, pre.input_size)?;
    let out = Tensor::empty([n, dim], (Kind::Float, Device::Cpu));
    let mut norm = Normalizer::new(pre, net.device());
    norm.channels_last = net.is_folded();
    let bar = progress::images(n as u64, what);
    let start = Instant::now();
    let mut size = batch_size.initial(net.device());
    tch::no_grad(|| -> Result<()> {
        let mut i = 0;
        while i < n {
            crate::interrupt::check()?;
            let (f, used) = with_backoff(size.min((n - i) as usize), |len| {
                let batch = split.images.narrow(0, i, len as i64);
                match batch_size {
                    BatchSize::Fixed(_) => Ok(forward(net, &norm.apply(&batch), spec, &taps, BnMode::Eval)),
                    BatchSize::Auto => catch_torch(|| forward(net, &norm.apply(&batch), spec, &taps, BnMode::Eval)),
                }
            })?;
            size = size.min(used.max(1));
            let len = used as i64;
            // copy_ converts bf16/fp16 features to the float32 matrix.
            out.narrow(0, i, len).copy_(&f);
            i += len;
            bar.inc(len as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    Ok((Features { x: out, y: split.labels.shallow_clone() }, secs))
}

/// Why a feature matrix is useless to a probe, if it is. Works in row blocks and column
/// reductions, so checking 50k×2048 features adds no full-size temporaries.
fn degeneracy(x: &Tensor) -> Option<&'static str> {
    let n = x.size()[0];
    let mut start = 0;
    while start < n {
        let len = 4096.min(n - start);
        if !bool::try_from(x.narrow(0, start, len).isfinite().all()).unwrap_or(false) {
            return Some("NaN/Inf");
        }
        start += len;
    }
    let (hi, lo) = (x.amax(0, false), x.amin(0, false));
    if hi.max().double_value(&[]) == 0.0 && lo.min().double_value(&[]) == 0.0 {
        return Some("all zeros");
    }
    // Every sample the same vector: nothing to separate.
    if n > 1 && (hi - lo).max().double_value(&[]) == 0.0 {
        return Some("identical for every image");
    }
    None
}

/// Numerical health of extracted features (a random deep network can overflow or vanish).
/// When they are degenerate, re-runs a few images stage by stage to name where the
/// problem first appears; fails unless `allow` (then it only warns).
pub fn check_health(net: &Network, pre: Preprocess, split: &Split, features: &Tensor, allow: bool) -> Result<()> {
    let Some(what) = degeneracy(features) else { return Ok(()) };
    let n = split.len().min(16) as i64;
    let names = net.body.stage_names();
    let first = tch::no_grad(|| {
        let x = Normalizer::new(pre, net.device()).apply(&split.images.narrow(0, 0, n));
        let stages = net.body.forward_stages(&x, BnMode::Eval, names.len() - 1);
        stages
            .iter()
            .position(|s| degeneracy(&s.flatten(1, -1).to_kind(Kind::Float)).is_some())
            .map(|i| names[i].clone())
            .unwrap_or_else(|| "the pooling/classifier after the last stage".into())
    });
    let msg = format!("features of {} are degenerate ({what}), first at {first}", net.arch.name());
    if allow {
        eprintln!("warning: {msg}; continuing (--allow-degenerate)");
        return Ok(());
    }
    bail!("{msg}: try another --init or --bn calibrate:N, or pass --allow-degenerate")
}
