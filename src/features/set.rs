//! A run's features: the validated extraction settings (`ExtractConfig`), and data →
//! frozen network → train/test features (plus mirrored views) with their provenance.
use super::extract::{
    self, BatchSize, BnSetting, Collect, Features, Feed, FusedConvs, Precision, Preprocess, Resize, Sink,
};
use super::patches::{self, FirstLayer};
use super::taps::FeatureSpec;
use crate::data::whiten::{self, Whiten};
use crate::data::{DataConfig, InputNorm};
use crate::models::{frozen, ModelConfig, WeightsSource};
use crate::util::device::{self, Compute};
use crate::util::digest;
use crate::util::names::value_name;
use anyhow::{ensure, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Device, Kind};

/// Everything that decides which features are extracted, and where.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ExtractConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub weights: WeightsSource,
    /// Base URL for torchvision checkpoints instead of download.pytorch.org.
    pub weights_mirror: Option<String>,
    /// Images are resized (bilinear) to this square size on the device; 32 keeps CIFAR native.
    pub input_size: i64,
    pub resize: Resize,
    pub input_norm: InputNorm,
    pub bn: BnSetting,
    pub fold_bn: bool,
    /// `--whiten zca[:EPS]`: image ZCA from the train images (absent from older configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whiten: Option<Whiten>,
    /// `--first-layer`: the first convolution's filters from training patches (absent from
    /// older configs, which are all random).
    #[serde(default, skip_serializing_if = "FirstLayer::is_random")]
    pub first_layer: FirstLayer,
    /// `--ensemble N`: the features of N networks drawn from `member_seed`s, concatenated
    /// (absent from older configs, which all have one).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub ensemble: usize,
    /// Speed only (features equal within float rounding), so not part of `identity`.
    #[serde(default)]
    pub fused: FusedConvs,
    /// Continue with NaN/Inf, all-zero or constant features (warn instead of failing).
    pub allow_degenerate: bool,
    pub features: FeatureSpec,
    /// Also extract the horizontally flipped train images (extra probe training rows).
    pub hflip: bool,
    /// Score validation and test images on both views (needs `hflip`).
    pub hflip_test: bool,
    /// `--kernel-precision bf16-lean`: each image's row is the mean of its views' features (both where
    /// `hflip`/`hflip_test` give two), averaged as they are extracted and stored in bf16, so
    /// no flipped part is kept (absent from older configs, which are all false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub lean: bool,
    /// With `lean`, for `--kernel-views pairs`: each view kept apart in bf16 instead of averaged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lean_views: bool,
    pub compute: Compute,
    pub batch_size: BatchSize,
    pub precision: Precision,
}

impl ExtractConfig {
    /// A short, readable name for directories: e.g. `cifar10-resnet18-cifar-s0`.
    pub fn short_name(&self) -> String {
        let ensemble = if self.ensemble > 1 { format!("-x{}", self.ensemble) } else { String::new() };
        let (data, arch, stem) = (self.data.short_name(), self.model.arch.name(), self.model.stem.name());
        format!("{data}-{arch}{ensemble}-{stem}-s{}", self.model.seed)
    }

    /// Every setting that changes the features' values, nothing that only changes speed,
    /// logs or where a download comes from: part of the feature cache's and the sweep's keys.
    pub fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a config serialises");
        let o = v.as_object_mut().expect("an object");
        for k in ["compute", "batch_size", "allow_degenerate", "weights_mirror", "fused"] {
            o.remove(k);
        }
        if let Some(d) = o.get_mut("data").and_then(|d| d.as_object_mut()) {
            for k in ["data_dir", "mirror", "archive_md5", "workers"] {
                d.remove(k);
            }
        }
        v
    }

    /// The networks whose features are concatenated: `model` itself, then the ensemble's
    /// other members, the same but for their seeds.
    pub fn members(&self) -> Vec<ModelConfig> {
        (0..self.ensemble as u64)
            .map(|i| ModelConfig { seed: member_seed(self.model.seed, i), ..self.model.clone() })
            .collect()
    }

    /// fp16 convolutions are a CUDA feature; say so before any work.
    pub fn check_precision(&self, device: Device) -> Result<()> {
        if self.precision == Precision::Fp16 && !device.is_cuda() {
            return Err(crate::UsageError("--precision fp16 needs CUDA; use bf16 or fp32 on the CPU".into()).into());
        }
        Ok(())
    }
}

/// Member `i`'s seed in an ensemble drawn with `--seed S`: S, S + 1000, S + 2000, … Member 0
/// is the single network of seed S; runs with seeds below 1000 never share a member.
pub fn member_seed(seed: u64, i: u64) -> u64 {
    seed + 1000 * i
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Every part a feature set can hold, by file-name prefix (a CSV's split column).
pub const PARTS: [&str; 4] = ["train", "test", "train_flip", "test_flip"];

/// Train and test features with what is needed to log them.
pub struct FeatureSet {
    pub train: Features,
    pub test: Features,
    /// Features of the horizontally flipped train images (`--hflip`), rows aligned with
    /// `train`: extra training rows for the probe, never validation rows.
    pub train_flip: Option<Features>,
    /// Features of the flipped test images (`--hflip-test`), rows aligned with `test`.
    pub test_flip: Option<Features>,
    pub class_names: Vec<String>,
    /// How the features were made, as summary columns (dataset, arch, …, extract_s).
    pub provenance: Vec<(String, String)>,
}

impl FeatureSet {
    /// The parts by name: train, test, and the mirrored views when extracted.
    pub fn parts(&self) -> Vec<(&'static str, &Features)> {
        let all = [Some(&self.train), Some(&self.test), self.train_flip.as_ref(), self.test_flip.as_ref()];
        PARTS.iter().zip(all).filter_map(|(name, f)| f.map(|f| (*name, f))).collect()
    }

    /// sha256 of every part's features and labels (values, shapes, dtypes) and the class
    /// names: the same for the same numbers whatever file format holds them.
    pub fn content_sha256(&self) -> String {
        let mut h = Sha256::new();
        for (name, f) in self.parts() {
            h.update(name.as_bytes());
            digest::update_with_tensor(&mut h, &f.x);
            digest::update_with_tensor(&mut h, &f.y);
        }
        h.update(self.class_names.join("\n").as_bytes());
        digest::hex(&h.finalize())
    }

    /// Sets a run label (`tag`, `preset`) in the provenance columns. Labels are added after
    /// the features are made or read from the cache, so a cached entry never carries an old one.
    pub fn label(&mut self, key: &str, value: Option<&str>) {
        self.provenance.retain(|(k, _)| k != key);
        self.provenance.push((key.into(), value.unwrap_or_default().into()));
    }
}

/// What the features are computed from, by content.
pub struct Inputs {
    /// Digest of the data files' content.
    pub data_digest: String,
    /// sha256 of the weights file, or `random:…` for drawn weights.
    pub weights: String,
}

/// The digests of `cfg`'s data and weights (a pretrained checkpoint is fetched first).
pub fn inputs(cfg: &ExtractConfig) -> Result<Inputs> {
    let weights = frozen::identity(&cfg.model, &cfg.weights, cfg.weights_mirror.as_deref())?;
    Ok(Inputs { data_digest: cfg.data.digest()?, weights })
}

/// Data → network → features for both splits.
pub fn extract_features(cfg: &ExtractConfig, device: Device) -> Result<FeatureSet> {
    extract_with(cfg, device, &inputs(cfg)?)
}

/// `extract_features` with the inputs' digests already known: the parts in memory.
pub fn extract_with(cfg: &ExtractConfig, device: Device, inputs: &Inputs) -> Result<FeatureSet> {
    let mut sink = if cfg.lean { Collect::stored_as(Kind::BFloat16) } else { Collect::default() };
    let made = extract_into(cfg, device, inputs, &mut sink)?;
    let mut take = |name: &str| sink.parts.iter().position(|(k, _)| *k == name).map(|i| sink.parts.swap_remove(i).1);
    let (train, test) = (take("train").expect("always extracted"), take("test").expect("always extracted"));
    let (train_flip, test_flip) = (take("train_flip"), take("test_flip"));
    let mut set = FeatureSet { train, test, train_flip, test_flip, class_names: made.class_names, provenance: vec![] };
    set.provenance = made.provenance;
    set.provenance.push(("features_sha256".into(), set.content_sha256()));
    Ok(set)
}

/// What `extract_into` made besides the rows.
pub struct Made {
    pub class_names: Vec<String>,
    /// Summary columns, all but `features_sha256` (the sink's to compute).
    pub provenance: Vec<(String, String)>,
}

/// Data → network → rows of every part (train, test, then the mirrored views), in order,
/// into `sink`. Folder images are decoded batch by batch as they are needed.
pub fn extract_into(cfg: &ExtractConfig, device: Device, inputs: &Inputs, sink: &mut dyn Sink) -> Result<Made> {
    // The networks first: a missing checkpoint or a bad weights file fails before any data work.
    let members = cfg.members();
    let mut nets = members
        .iter()
        .map(|m| frozen::build(m, &cfg.weights, cfg.weights_mirror.as_deref(), device))
        .collect::<Result<Vec<_>>>()?;
    let (dataset, train, test) = cfg.data.load()?;
    let shard = cfg.data.shard.map(|s| format!(" (shard {s})")).unwrap_or_default();
    let ensemble = if nets.len() > 1 { format!(" (an ensemble of {})", nets.len()) } else { String::new() };
    eprintln!(
        "cnnprobe {}: {} train / {} test images{shard}, {} classes, {}{ensemble} on {}",
        cfg.short_name(),
        train.len(),
        test.len(),
        dataset.num_classes(),
        cfg.model.arch.name(),
        device::name(device)
    );
    // A folder's images keep their (common) size unless --input-size was given.
    let input_size = match cfg.data.folder_size {
        None if cfg.data.dataset == crate::data::DatasetName::Folder => dataset.train.image_size().0,
        _ => cfg.input_size,
    };
    let stats = cfg.data.stats(cfg.input_norm, &dataset)?;
    let zca = match cfg.whiten {
        Some(w) if !w.patches => {
            let (h, wd) = dataset.train.image_size();
            ensure!(
                (h, wd) == (input_size, input_size),
                "--whiten zca: the images are {h}×{wd} but the input size is {input_size}; whitening needs them equal"
            );
            eprintln!("whitening: ZCA of {} train images (eps {})", dataset.train.len(), w.eps);
            Some(std::rc::Rc::new(whiten::fit(&dataset.train, stats, w.eps, cfg.data.workers)?))
        }
        _ => None,
    };
    let pre = Preprocess { stats, input_size, resize: cfg.resize, precision: cfg.precision, zca };
    // Patches are sampled in float32 from the whole train split whatever the shard, like BN
    // calibration, so every shard builds the same network.
    let fp32 = Preprocess { precision: Precision::Fp32, ..pre.clone() };
    if let Some(w) = cfg.whiten.filter(|w| w.patches) {
        patches::whiten_patchnets(&mut nets, w.eps, &dataset.train, &fp32, cfg.data.workers)?;
    }
    let mut fused = true;
    for (net, member) in nets.iter_mut().zip(&members) {
        patches::init_first_layer(net, cfg.first_layer, &dataset.train, member.seed, &fp32)?;
        if let BnSetting::Calibrate(n) = cfg.bn {
            // Calibration runs in float32 with a fixed batch, before any folding or casting,
            // on the whole train split whatever the shard.
            extract::calibrate_batchnorm(net, &dataset.train, n, member.seed, &fp32, 256)?;
        }
        if cfg.fold_bn {
            net.fold_batchnorm();
        }
        net.set_precision(cfg.precision.kind());
        fused &= net.fuse(cfg.fused == FusedConvs::Auto);
    }
    let feed = Feed { batch_size: cfg.batch_size, workers: cfg.data.workers, flip: false, mean_flip: false };
    let flipped = Feed { flip: true, ..feed };
    let mut parts = vec![("train", &train, feed), ("test", &test, feed)];
    if cfg.lean && !cfg.lean_views {
        parts = vec![
            ("train", &train, Feed { mean_flip: cfg.hflip, ..feed }),
            ("test", &test, Feed { mean_flip: cfg.hflip_test, ..feed }),
        ];
    } else {
        if cfg.hflip {
            parts.push(("train_flip", &train, flipped));
        }
        if cfg.hflip_test {
            parts.push(("test_flip", &test, flipped));
        }
    }
    let (mut extract_s, mut images, mut feature_dim) = (0.0, 0, 0);
    for (part, source, feed) in parts {
        let (health, secs) = extract::extract(&nets, &cfg.features, &pre, source, feed, part, sink)?;
        if part == "train" {
            extract::check_health(&nets, &pre, source, &health, cfg.allow_degenerate)?;
        }
        (extract_s, images, feature_dim) = (extract_s + secs, images + source.len(), health.dim());
    }
    let skipped = train.skipped() + test.skipped();
    if skipped > 0 {
        eprintln!("warning: skipped {skipped} unreadable image(s) (--skip-bad-images)");
    }
    let images_per_s = images as f64 / extract_s;
    eprintln!("features: {feature_dim} dims, {extract_s:.1} s, {images_per_s:.1} images/s");
    let mut provenance = provenance(cfg, device);
    provenance.extend([
        ("convs".to_string(), if fused { "onednn-fused" } else { "aten" }.to_string()),
        ("feature_dim".into(), feature_dim.to_string()),
        ("extract_s".into(), format!("{extract_s:.1}")),
        ("images_per_s".into(), format!("{images_per_s:.1}")),
        ("data_digest".into(), inputs.data_digest.clone()),
        ("weights_sha256".into(), inputs.weights.clone()),
    ]);
    Ok(Made { class_names: dataset.class_names, provenance })
}

/// The extraction settings as summary columns.
fn provenance(cfg: &ExtractConfig, device: Device) -> Vec<(String, String)> {
    let s = |k: &str, v: String| (k.to_string(), v);
    let mut cols = vec![
        s("dataset", cfg.data.dataset_name().into()),
        s("limit", cfg.data.limit.map(|n| n.to_string()).unwrap_or_default()),
        s("labels", cfg.data.labels_name().into()),
        s("arch", cfg.model.arch.name().into()),
        s("stem", cfg.model.stem.name().into()),
        s("init", cfg.model.init.to_string()),
        s("zero_init_residual", cfg.model.zero_init_residual.to_string()),
        s("seed", cfg.model.seed.to_string()),
        s("weights", cfg.weights.to_string()),
        s("input_size", cfg.input_size.to_string()),
        s("resize", value_name(&cfg.resize)),
        s("input_norm", value_name(&cfg.input_norm)),
        s("bn", cfg.bn.to_string()),
        s("fold_bn", cfg.fold_bn.to_string()),
        s("whiten", cfg.whiten.map(|w| w.to_string()).unwrap_or_else(|| "none".into())),
        s("first_layer", cfg.first_layer.to_string()),
        s("features", cfg.features.label()),
        s("pool", value_name(&cfg.features.pool)),
        s("pool_size", cfg.features.pool_size.to_string()),
        s("encode", cfg.features.encode.to_string()),
        s("width_mult", cfg.model.width_mult.to_string()),
        s("ensemble", cfg.ensemble.to_string()),
        s("hflip", cfg.hflip.to_string()),
        s("hflip_test", cfg.hflip_test.to_string()),
        s("device", device::name(device)),
        s("threads", cfg.compute.threads.to_string()),
        s("batch_size", cfg.batch_size.to_string()),
        s("precision", value_name(&cfg.precision)),
    ];
    if let Some(shard) = cfg.data.shard {
        cols.push(s("shard", shard.to_string()));
    }
    if cfg.lean {
        // The rows' form where it is not two float32 views: see `ExtractConfig::lean`.
        let form = if cfg.lean_views { "bf16, views kept apart" } else { "bf16, views averaged at extraction" };
        cols.push(s("kernel_lean", form.into()));
    }
    cols
}
