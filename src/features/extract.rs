//! The batched extraction loop (uint8 batches go to the device, are converted and
//! normalised there, and pooled features land in a preallocated CPU matrix), BatchNorm
//! calibration, and the numerical health check of the result.
use super::taps::{feature_dim, forward_eval, resolve, FeatureSpec};
use crate::data::normalize::ChannelStats;
use crate::data::whiten::Zca;
use crate::data::{split, Source};
use crate::models::layers::BnMode;
use crate::models::{fused, Network};
use crate::util::{device, interrupt, progress};
use anyhow::{bail, ensure, Result};
use clap::ValueEnum;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How uint8 images become network input.
#[derive(Clone)]
pub struct Preprocess {
    pub stats: ChannelStats,
    /// Square input size; images of another size are resized on the device.
    pub input_size: i64,
    pub resize: Resize,
    /// Compute precision of the network (features are always stored as float32).
    pub precision: Precision,
    /// `--whiten zca`: applied after normalisation, at the input size.
    pub zca: Option<std::rc::Rc<Zca>>,
}

/// `--resize`: the interpolation that brings images to the input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    Bilinear,
    /// torchvision's choice for its ImageNet weights' evaluation transforms (and the
    /// standard transfer protocol); values are clamped to the pixel range as on uint8 images.
    Bicubic,
}

/// `--precision`: the dtype the frozen network computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
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

/// `--fused`: whether CPU extraction may use oneDNN's fused convolutions. Their ReLU maps
/// NaN to 0 where aten's keeps it, so a fused batch whose floating-point flags show an
/// overflow or invalid operation is rerun on aten's ops (`taps::forward_eval`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusedConvs {
    /// Where they apply (CPU, fp32, folded BN) and this libtorch runs them.
    #[default]
    Auto,
    Off,
}

/// `--batch-size N|auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum BatchSize {
    /// Start large on CUDA and halve on out-of-memory; 256 on the CPU.
    Auto,
    Fixed(usize),
}

impl FromStr for BatchSize {
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

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
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
pub(super) struct Normalizer {
    scale: Tensor,
    shift: Tensor,
    device: Device,
    size: i64,
    resize: Resize,
    kind: Kind,
    zca: Option<Zca>,
}

impl Normalizer {
    pub(super) fn new(pre: &Preprocess, device: Device) -> Self {
        let (scale, shift) = pre.stats.u8_affine();
        Normalizer {
            scale: scale.to_device(device),
            shift: shift.to_device(device),
            device,
            size: pre.input_size,
            resize: pre.resize,
            kind: pre.precision.kind(),
            zca: pre.zca.as_ref().map(|z| Zca { mean: z.mean.to_device(device), matrix: z.matrix.to_device(device) }),
        }
    }

    pub(super) fn apply(&self, images: &Tensor) -> Tensor {
        // On CUDA: uint8 (4× smaller than float) crosses the bus from pinned memory,
        // asynchronously; conversion happens on the GPU.
        let mut x = match self.device {
            Device::Cuda(_) => fused::pin_memory(images, self.device).to_device_(self.device, Kind::Uint8, true, false),
            _ => images.shallow_clone(),
        }
        .to_kind(Kind::Float);
        x *= &self.scale;
        x += &self.shift;
        let (h, w) = (x.size()[2], x.size()[3]);
        if (h, w) != (self.size, self.size) {
            let out = [self.size, self.size];
            // Shrinking needs antialiasing, as torchvision's Resize does on tensors.
            let shrink = self.size < h.min(w);
            x = match self.resize {
                Resize::Bilinear if shrink => Tensor::internal_upsample_bilinear2d_aa(&x, out, false, None, None),
                Resize::Bilinear => x.upsample_bilinear2d(out, false, None, None),
                Resize::Bicubic => {
                    let y = if shrink {
                        Tensor::internal_upsample_bicubic2d_aa(&x, out, false, None, None)
                    } else {
                        x.upsample_bicubic2d(out, false, None, None)
                    };
                    // Bicubic overshoots; pixels 0 and 255 normalised are the bounds.
                    y.clamp_tensor(Some(&self.shift), Some(&(&self.scale * 255.0 + &self.shift)))
                }
            };
        }
        if let Some(z) = &self.zca {
            x = z.apply(&x);
        }
        if self.kind != Kind::Float {
            x = x.to_kind(self.kind);
        }
        x
    }
}

/// `--bn`: what a random network's BatchNorm statistics are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnSetting {
    /// Running stats 0/1 as initialised: BN is the affine identity at init.
    Eval,
    /// Recompute running mean/var from N training images (no labels, no gradients).
    Calibrate(usize),
}

impl FromStr for BnSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "eval" => Ok(BnSetting::Eval),
            _ => match s.strip_prefix("calibrate:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Ok(BnSetting::Calibrate(n)),
                _ => Err(format!("'{s}': use eval or calibrate:N with N > 0 images")),
            },
        }
    }
}

impl fmt::Display for BnSetting {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BnSetting::Eval => write!(f, "eval"),
            BnSetting::Calibrate(n) => write!(f, "calibrate:{n}"),
        }
    }
}

crate::serde_as_str!(BnSetting);

/// `--bn calibrate:N`: resets every BatchNorm's running statistics and recomputes them as
/// the average over batches of N training images (a seeded sample, no labels, no
/// gradients), then the network is used frozen in eval mode as before.
pub fn calibrate_batchnorm(
    net: &mut Network,
    train: &Source,
    n: usize,
    seed: u64,
    pre: &Preprocess,
    batch_size: usize,
) -> Result<()> {
    ensure!(n > 0, "--bn calibrate:N needs N > 0");
    net.unfold_batchnorm();
    let bns = net.batchnorms();
    ensure!(!bns.is_empty(), "--bn calibrate: {} has no BatchNorm layers", net.arch.name());
    bns.iter().for_each(|bn| bn.reset_running_stats());
    let n = n.min(train.len());
    let order = split::permutation(train.len(), seed ^ 0xB17C);
    let norm = Normalizer::new(pre, net.device());
    let last = net.body.stage_names().len() - 1;
    let bar = progress::images(n as u64, "calibrate");
    tch::no_grad(|| -> Result<()> {
        for (k, chunk) in order[..n].chunks(batch_size).enumerate() {
            let x = norm.apply(&train.get(chunk)?.images);
            let _ = net.body.forward_stages(&x, BnMode::Calibrate { momentum: 1.0 / (k as f64 + 1.0) }, last);
            bar.inc(chunk.len() as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// Features of one split: float32 (N, D) on the CPU, with the labels.
pub struct Features {
    pub x: Tensor,
    pub y: Tensor,
}

/// Where extracted rows go, part by part: a matrix in memory, or files written as the rows
/// arrive (so an export can be larger than memory).
pub trait Sink {
    /// Part `part` (`train`, `test`, …) begins: at most `rows` rows of `dim` features.
    fn begin(&mut self, part: &'static str, rows: usize, dim: i64) -> Result<()>;
    /// The next rows of the part, in order.
    fn rows(&mut self, x: &Tensor, y: &Tensor) -> Result<()>;
    /// The part is complete.
    fn end(&mut self) -> Result<()>;
}

/// Parts collected in memory, each in one preallocated matrix (float32 unless `stored_as`).
#[derive(Default)]
pub struct Collect {
    pub parts: Vec<(&'static str, Features)>,
    current: Option<(&'static str, Tensor, i64, Vec<Tensor>)>,
    kind: Option<Kind>,
}

impl Collect {
    /// Rows rounded to `kind` as they arrive (`--kernel-precision bf16-lean`: bf16).
    pub fn stored_as(kind: Kind) -> Collect {
        Collect { kind: Some(kind), ..Collect::default() }
    }
}

impl Sink for Collect {
    fn begin(&mut self, part: &'static str, rows: usize, dim: i64) -> Result<()> {
        let kind = self.kind.unwrap_or(Kind::Float);
        self.current = Some((part, Tensor::empty([rows as i64, dim], (kind, Device::Cpu)), 0, vec![]));
        Ok(())
    }

    fn rows(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let (_, out, filled, labels) = self.current.as_mut().expect("begin before rows");
        let len = x.size()[0];
        // copy_ converts the batch's features to the matrix's kind.
        out.narrow(0, *filled, len).copy_(x);
        *filled += len;
        labels.push(y.shallow_clone());
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        let (part, out, filled, labels) = self.current.take().expect("begin before end");
        let y =
            if labels.is_empty() { Tensor::empty([0], (Kind::Int64, Device::Cpu)) } else { Tensor::cat(&labels, 0) };
        // Fewer rows than announced only when unreadable images were skipped.
        self.parts.push((part, Features { x: out.narrow(0, 0, filled), y }));
        Ok(())
    }
}

/// How batches reach the network.
#[derive(Clone, Copy, Debug)]
pub struct Feed {
    pub batch_size: BatchSize,
    /// Threads decoding folder images ahead of the network.
    pub workers: usize,
    /// Mirror every image (the `_flip` parts).
    pub flip: bool,
    /// Each row the mean of the image's and its mirror's features (`--kernel-precision bf16-lean`), in
    /// float32 before the sink stores it: the same sum the kernel readout makes of two parts.
    pub mean_flip: bool,
}

/// Extracts features of `source` into `sink` in batches (halving the batch on out-of-memory
/// with `BatchSize::Auto`): each row is the concatenated features of `nets` (one network,
/// or an `--ensemble`'s members), so the images are read and decoded once. Returns the
/// rows' health and the seconds spent.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    nets: &[Network],
    spec: &FeatureSpec,
    pre: &Preprocess,
    source: &Source,
    feed: Feed,
    part: &'static str,
    sink: &mut dyn Sink,
) -> Result<(Health, f64)> {
    ensure!(!nets.is_empty(), "no network to extract features with");
    let taps = nets.iter().map(|net| resolve(net, spec)).collect::<Result<Vec<_>>>()?;
    let dim = nets.iter().map(|net| feature_dim(net, spec, pre.input_size)).sum::<Result<i64>>()?;
    let net = &nets[0];
    let n = source.len();
    sink.begin(part, n, dim)?;
    // The input stays NCHW even for channels-last folded weights: converting it here measured
    // slower than letting the first convolution take it (scripts/bench_ab.sh, results/bench_channels_last.csv).
    let norm = Normalizer::new(pre, net.device());
    let bar = progress::images(n as u64, &part.replace('_', ", "));
    let start = Instant::now();
    // A split smaller than the batch never needs more: the out-of-memory back-off then
    // starts from the split's size.
    let mut size = feed.batch_size.initial(net.device()).min(n.max(1));
    let mut health = Health::default();
    let pad = net.device().is_cuda() && device::cudnn_search();
    tch::no_grad(|| -> Result<()> {
        for batch in source.batches(size, feed.workers) {
            interrupt::check()?;
            let batch = batch?;
            let images = if feed.flip { batch.images.flip([3]) } else { batch.images };
            let (m, mut i) = (batch.labels.size()[0], 0);
            while i < m {
                let ((f, used), worked) = with_backoff(size, |attempt| {
                    let len = attempt.min((m - i) as usize);
                    let x = images.narrow(0, i, len as i64);
                    let x = if pad { pad_to(&x, attempt) } else { x };
                    let features = |x: &Tensor| {
                        let x = norm.apply(x);
                        let parts: Vec<Tensor> =
                            nets.iter().zip(&taps).map(|(net, taps)| forward_eval(net, &x, spec, taps)).collect();
                        let f = if parts.len() == 1 { parts[0].shallow_clone() } else { Tensor::cat(&parts, 1) };
                        f.narrow(0, 0, len as i64)
                    };
                    let run = || {
                        let f = features(&x);
                        if !feed.mean_flip {
                            return (f, len);
                        }
                        let mirrored = features(&x.flip([3]));
                        ((f.to_kind(Kind::Float) + mirrored.to_kind(Kind::Float)) / 2.0, len)
                    };
                    match feed.batch_size {
                        BatchSize::Fixed(_) => Ok(run()),
                        BatchSize::Auto => catch_torch(run),
                    }
                })?;
                size = worked;
                let f = f.to_device(Device::Cpu).to_kind(Kind::Float);
                health.update(&f);
                sink.rows(&f, &batch.labels.narrow(0, i, used as i64))?;
                i += used as i64;
            }
            bar.inc(m as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    sink.end()?;
    Ok((health, start.elapsed().as_secs_f64()))
}

/// A short batch (a split's last) padded with black images to `size`. Done on CUDA when
/// cuDNN searches kernels (`device::cudnn_search`), which it does afresh for every new shape:
/// on an H100 that search took 0.6–0.8 s per shape, against 14–22 ms for a whole batch of
/// 2,048 CIFAR images (results/gpu_check.csv). Images are independent in eval mode, so the
/// padding's rows are dropped without touching the others.
fn pad_to(x: &Tensor, size: usize) -> Tensor {
    let mut shape = x.size();
    if shape[0] >= size as i64 {
        return x.shallow_clone();
    }
    shape[0] = size as i64 - shape[0];
    Tensor::cat(&[x.shallow_clone(), Tensor::zeros(&shape, (x.kind(), x.device()))], 0)
}

/// Row and column of the first NaN/Inf of a (N, D) matrix, scanned in row blocks.
pub fn first_non_finite(x: &Tensor) -> Option<(i64, i64)> {
    let n = x.size()[0];
    let mut start = 0;
    while start < n {
        let len = 4096.min(n - start);
        let bad = x.narrow(0, start, len).isfinite().logical_not_();
        if bool::try_from(bad.any()).unwrap_or(true) {
            let at = bad.nonzero();
            return Some((start + at.int64_value(&[0, 0]), at.int64_value(&[0, 1])));
        }
        start += len;
    }
    None
}

/// What a probe needs to know about a feature matrix, accumulated batch by batch: the first
/// NaN/Inf, and each column's range (all zeros, or one vector for every image, is useless).
#[derive(Default)]
pub struct Health {
    rows: i64,
    non_finite: Option<(i64, i64)>,
    hi: Option<Tensor>,
    lo: Option<Tensor>,
}

impl Health {
    pub fn of(x: &Tensor) -> Health {
        let mut h = Health::default();
        h.update(x);
        h
    }

    pub fn update(&mut self, x: &Tensor) {
        if self.non_finite.is_none() {
            self.non_finite = first_non_finite(x).map(|(r, c)| (self.rows + r, c));
        }
        let (hi, lo) = (x.amax(0, false), x.amin(0, false));
        self.hi = Some(self.hi.as_ref().map_or(hi.shallow_clone(), |h| h.maximum(&hi)));
        self.lo = Some(self.lo.as_ref().map_or(lo.shallow_clone(), |l| l.minimum(&lo)));
        self.rows += x.size()[0];
    }

    /// Columns seen (0 before any row).
    pub fn dim(&self) -> i64 {
        self.hi.as_ref().map_or(0, |h| h.size()[0])
    }

    /// Why the rows are useless to a probe, if they are.
    pub fn problem(&self) -> Option<&'static str> {
        if self.non_finite.is_some() {
            return Some("NaN/Inf");
        }
        let (Some(hi), Some(lo)) = (&self.hi, &self.lo) else { return None };
        if hi.max().double_value(&[]) == 0.0 && lo.min().double_value(&[]) == 0.0 {
            return Some("all zeros");
        }
        // Every sample the same vector: nothing to separate.
        if self.rows > 1 && (hi - lo).max().double_value(&[]) == 0.0 {
            return Some("identical for every image");
        }
        None
    }
}

/// Numerical health of extracted features (a random deep network can overflow or vanish).
/// When they are degenerate, re-runs a few images stage by stage, network by network (an
/// ensemble's members in turn), to name where the problem first appears; fails unless
/// `allow` (then it only warns).
pub fn check_health(nets: &[Network], pre: &Preprocess, source: &Source, health: &Health, allow: bool) -> Result<()> {
    let Some(what) = health.problem() else { return Ok(()) };
    let net = &nets[0];
    let first: Vec<usize> = (0..source.len().min(16)).collect();
    let names = net.body.stage_names();
    let images = source.get(&first)?.images;
    let first = tch::no_grad(|| {
        let x = Normalizer::new(pre, net.device()).apply(&images);
        let located = nets.iter().enumerate().find_map(|(m, net)| {
            // aten's ops: a fused ReLU would hide the NaN being located.
            let stages = net.body.forward_stages(&x, BnMode::EvalAten, names.len() - 1);
            let i =
                stages.iter().position(|s| Health::of(&s.flatten(1, -1).to_kind(Kind::Float)).problem().is_some())?;
            Some(if nets.len() > 1 { format!("{} of ensemble member {m}", names[i]) } else { names[i].clone() })
        });
        located.unwrap_or_else(|| "the pooling/classifier after the last stage".into())
    });
    let msg = format!("features of {} are degenerate ({what}), first at {first}", net.arch.name());
    if allow {
        eprintln!("warning: {msg}; continuing (--allow-degenerate)");
        return Ok(());
    }
    bail!("{msg}: try another --init or --bn calibrate:N, or pass --allow-degenerate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_appends_black_images_and_leaves_full_batches_alone() {
        let x = Tensor::ones([3, 3, 2, 2], (Kind::Uint8, Device::Cpu));
        let p = pad_to(&x, 5);
        assert_eq!(p.size(), [5, 3, 2, 2]);
        assert!(p.narrow(0, 0, 3).equal(&x));
        assert_eq!(p.narrow(0, 3, 2).sum(Kind::Int64).int64_value(&[]), 0);
        assert!(pad_to(&x, 3).equal(&x) && pad_to(&x, 2).equal(&x));
    }
}
