//! The commands' stages in order: data → frozen network → features → probe → logs.
//! `run` = `extract_features` + `probe_and_report`; `extract` and `fit` split them at the
//! feature files.
use crate::config::{BnSetting, DatasetName, InputNorm, LabelSet, RunConfig, WeightsSource};
use crate::data::cifar::{self, Cifar};
use crate::data::{download, folder, normalize, split, Dataset, Split};
use crate::features::{self, Features, Precision, Preprocess};
use crate::models::{pretrained, Network};
use crate::probe::{self, metrics, ProbeSettings};
use crate::report::{self, frac, Row};
use crate::{device, VERSION};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

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

/// What a finished run reports back (also printed).
pub struct Outcome {
    pub run_dir: PathBuf,
    pub val_acc: f64,
    pub test_top1: f64,
    pub test_top5: f64,
}

pub fn run(cfg: &RunConfig) -> Result<Outcome> {
    let device = setup_compute(&cfg.device, cfg.threads)?;
    check_precision(cfg, device)?;
    let mut set = match &cfg.cache_dir {
        Some(dir) => crate::cache::features(cfg, device, dir)?,
        None => extract_features(cfg, device)?,
    };
    report::label(&mut set.provenance, "preset", cfg.preset.as_deref());
    report::label(&mut set.provenance, "tag", cfg.tag.as_deref());
    let run_dir = report::create_run_dir(cfg.out.as_deref(), &cfg.short_name())?;
    report::write_json(&run_dir.join("config.json"), cfg)?;
    probe_and_report(&set, &cfg.probe, cfg.val_fraction, cfg.save_head.as_deref(), device, &run_dir, &cfg.summary)
}

pub fn setup_compute(spec: &str, threads: usize) -> Result<Device> {
    tch::set_num_threads(threads as i32);
    let device = device::resolve(spec)?;
    if device.is_cuda() {
        // Fixed input shapes: let cuDNN pick the fastest kernels once.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(device)
}

/// fp16 convolutions are a CUDA feature; say so before any work.
pub fn check_precision(cfg: &RunConfig, device: Device) -> Result<()> {
    if cfg.precision == Precision::Fp16 && !device.is_cuda() {
        return Err(crate::UsageError("--precision fp16 needs CUDA; use bf16 or fp32 on the CPU".into()).into());
    }
    Ok(())
}

/// Data → network → features for both splits.
pub fn extract_features(cfg: &RunConfig, device: Device) -> Result<FeatureSet> {
    // The network first: a missing checkpoint or a bad weights file fails before any data work.
    let mut net = build_network(cfg, device)?;
    let dataset = load_dataset(cfg)?;
    eprintln!(
        "cnnprobe {}: {} train / {} test images, {} classes, {} on {}",
        cfg.short_name(),
        dataset.train.len(),
        dataset.test.len(),
        dataset.num_classes(),
        cfg.model.arch.name(),
        device::name(device)
    );
    let pre = preprocess(cfg, &dataset);
    if let BnSetting::Calibrate(n) = cfg.bn {
        // Calibration runs in float32 with a fixed batch, before any folding or casting.
        let calib = Preprocess { precision: Precision::Fp32, ..pre };
        features::calibrate_batchnorm(&mut net, &dataset.train, n, cfg.model.seed, calib, 256)?;
    }
    if cfg.fold_bn {
        net.fold_batchnorm();
    }
    net.set_precision(cfg.precision.kind());
    let spec = &cfg.features;
    let (train, train_s) = features::extract(&net, spec, pre, &dataset.train, cfg.batch_size, "train")?;
    features::check_health(&net, pre, &dataset.train, &train.x, cfg.allow_degenerate)?;
    let (test, test_s) = features::extract(&net, spec, pre, &dataset.test, cfg.batch_size, "test")?;
    // Mirror images (`--hflip`, `--hflip-test`), flipped along the width axis.
    let mirrored = |on: bool, split: &Split, what: &str| -> Result<(Option<Features>, f64)> {
        if !on {
            return Ok((None, 0.0));
        }
        let mirror = Split { images: split.images.flip([3]), labels: split.labels.shallow_clone() };
        let (f, secs) = features::extract(&net, spec, pre, &mirror, cfg.batch_size, what)?;
        Ok((Some(f), secs))
    };
    let (train_flip, flip_s) = mirrored(cfg.hflip, &dataset.train, "train, flipped")?;
    let (test_flip, test_flip_s) = mirrored(cfg.hflip_test, &dataset.test, "test, flipped")?;
    let feature_dim = train.x.size()[1];
    let extract_s = train_s + test_s + flip_s + test_flip_s;
    let images = (dataset.train.len() * (1 + cfg.hflip as usize)) + dataset.test.len() * (1 + cfg.hflip_test as usize);
    let images_per_s = images as f64 / extract_s;
    eprintln!("features: {feature_dim} dims, {extract_s:.1} s, {images_per_s:.1} images/s");

    let mut p = Row::default();
    p.set("dataset", cfg.data.dataset_name())
        .set("limit", cfg.data.limit.map(|n| n.to_string()).unwrap_or_default())
        .set("labels", cfg.data.labels_name())
        .set("arch", cfg.model.arch.name())
        .set("stem", cfg.model.stem.name())
        .set("init", cfg.model.init)
        .set("zero_init_residual", cfg.model.zero_init_residual)
        .set("seed", cfg.model.seed)
        .set("weights", &cfg.weights)
        .set("input_size", cfg.input_size)
        .set("input_norm", format!("{:?}", cfg.input_norm).to_lowercase())
        .set("bn", cfg.bn)
        .set("fold_bn", cfg.fold_bn)
        .set("features", cfg.features.label())
        .set("pool", format!("{:?}", cfg.features.pool).to_lowercase())
        .set("pool_size", cfg.features.pool_size)
        .set("width_mult", cfg.model.width_mult)
        .set("hflip", cfg.hflip)
        .set("hflip_test", cfg.hflip_test)
        .set("device", device::name(device))
        .set("threads", cfg.threads)
        .set("batch_size", cfg.batch_size)
        .set("precision", format!("{:?}", cfg.precision).to_lowercase())
        .set("feature_dim", feature_dim)
        .set("extract_s", format!("{extract_s:.1}"))
        .set("images_per_s", format!("{images_per_s:.1}"));
    Ok(FeatureSet { train, test, train_flip, test_flip, class_names: dataset.class_names, provenance: p.0 })
}

/// Validation split → probe → test metrics → run directory files and a summary row.
pub fn probe_and_report(
    set: &FeatureSet,
    s: &ProbeSettings,
    val_fraction: f64,
    save_head: Option<&Path>,
    device: Device,
    run_dir: &Path,
    summary: &Path,
) -> Result<Outcome> {
    let classes = set.class_names.len();
    let parts = split::stratified(&set.train.y, classes, val_fraction, s.seed);
    let mut fit = select(&set.train, &parts.fit);
    let val = select(&set.train, &parts.val);
    // Flipped copies of the fit rows train too; those of the validation rows join only the
    // refit, so no view of a validation image is ever fitted before it is scored.
    let mut refit_extra = None;
    if let Some(flip) = &set.train_flip {
        let f = select(flip, &parts.fit);
        fit = Features { x: Tensor::cat(&[&fit.x, &f.x], 0), y: Tensor::cat(&[&fit.y, &f.y], 0) };
        refit_extra = Some(select(flip, &parts.val));
    }
    // Test-time flip: a linear head's mean logit over two views is its logit of their mean.
    let two_views = set.test_flip.is_some();
    let mean_view = |a: &Tensor, b: &Tensor| (a + b) / 2.0;
    let val_view = match (&refit_extra, two_views) {
        (Some(vf), true) => Some(mean_view(&val.x, &vf.x)),
        _ => None,
    };
    let n_train = fit.y.size()[0];
    // Owned, so the probe can free the fit rows before its refit.
    let fitted = probe::fit(fit, &val, val_view.as_ref(), refit_extra.as_ref(), classes, s, device)?;
    // The only place the test split meets the head: after every choice is made, and never
    // in a --val-only screening run.
    let m = (!s.val_only).then(|| {
        let x = match &set.test_flip {
            Some(tf) => mean_view(&set.test.x, &tf.x),
            None => set.test.x.shallow_clone(),
        };
        metrics::score(&fitted.head.logits(&x), &set.test.y, classes)
    });
    if let Some(path) = save_head {
        fitted.head.save(path)?;
    }
    report::write_epochs(run_dir, &fitted.epochs)?;
    report::write_indices(&run_dir.join("val_indices.csv"), &parts.val)?;
    report::write_grid(run_dir, &fitted.grid, fitted.chosen_weight_decay)?;
    if let Some(m) = &m {
        report::write_per_class(run_dir, &set.class_names, m)?;
    }
    let test = |f: fn(&metrics::Metrics) -> f64| m.as_ref().map(|m| frac(f(m))).unwrap_or_default();

    let mut row = Row::default();
    row.set("finished_at", humantime::format_rfc3339_seconds(std::time::SystemTime::now()));
    row.0.extend(set.provenance.iter().cloned());
    row.set("solver", format!("{:?}", s.solver).to_lowercase())
        .set("normalize", format!("{:?}", s.normalize).to_lowercase())
        .set("wd_search", s.wd_search)
        .set("weight_decay", s.weight_decay)
        .set("chosen_weight_decay", format!("{:.4e}", fitted.chosen_weight_decay))
        .set("epochs", s.epochs)
        .set("lr", s.lr)
        .set("schedule", format!("{:?}", s.schedule).to_lowercase())
        .set("probe_batch_size", s.batch_size)
        .set("probe_seed", s.seed)
        .set("val_fraction", val_fraction)
        .set("best_epoch", fitted.best_epoch)
        .set("refit", fitted.refit)
        .set("n_train", n_train)
        .set("n_val", parts.val.len())
        .set("n_test", set.test.y.size()[0])
        .set("val_acc", frac(fitted.val_acc))
        .set("val_only", s.val_only)
        .set("test_top1", test(|m| m.top1))
        .set("test_top5", test(|m| m.top5))
        .set("mean_per_class_recall", test(|m| m.mean_per_class_recall))
        .set("fit_s", format!("{:.1}", fitted.fit_s))
        .set("run_dir", run_dir.display())
        .set("cnnprobe_version", VERSION)
        .set("libtorch_version", report::libtorch_runtime().0);
    row.write_single(&run_dir.join("result.csv"))?;
    row.append_to(summary)?;
    let (top1, top5) = m.as_ref().map(|m| (m.top1, m.top5)).unwrap_or((f64::NAN, f64::NAN));
    match &m {
        Some(_) => eprintln!(
            "probe: val_acc {:.4} (weight decay {:.3e}); test top1 {top1:.4} top5 {top5:.4} → {}",
            fitted.val_acc,
            fitted.chosen_weight_decay,
            run_dir.display()
        ),
        None => eprintln!(
            "probe: val_acc {:.4} (weight decay {:.3e}); test not scored (--val-only) → {}",
            fitted.val_acc,
            fitted.chosen_weight_decay,
            run_dir.display()
        ),
    }
    Ok(Outcome { run_dir: run_dir.to_path_buf(), val_acc: fitted.val_acc, test_top1: top1, test_top5: top5 })
}

/// The frozen network: drawn from the seed, or loaded from pretrained weights, then moved
/// to the device.
pub fn build_network(cfg: &RunConfig, device: Device) -> Result<Network> {
    let mut net = Network::build(&cfg.model)?;
    match &cfg.weights {
        WeightsSource::Random => {}
        WeightsSource::Imagenet => {
            let path = pretrained::ensure_checkpoint(cfg.model.arch, cfg.weights_mirror.as_deref())?;
            net.load_weights(&path)?;
        }
        WeightsSource::File(path) => net.load_weights(path)?,
    }
    net.to_device(device);
    Ok(net)
}

pub fn preprocess(cfg: &RunConfig, dataset: &Dataset) -> Preprocess {
    let stats = match (cfg.input_norm, cfg.data.dataset) {
        (InputNorm::Imagenet, _) => normalize::IMAGENET,
        (InputNorm::Dataset, DatasetName::Cifar10) => normalize::CIFAR10,
        (InputNorm::Dataset, DatasetName::Cifar100) => normalize::CIFAR100,
        // A folder's own train statistics.
        (InputNorm::Dataset, DatasetName::Folder) => folder::channel_stats(&dataset.train.images),
    };
    // A folder's images keep their (common) size unless --input-size was given.
    let input_size = match (cfg.data.dataset, cfg.data.folder_size) {
        (DatasetName::Folder, None) => dataset.train.images.size()[2],
        _ => cfg.input_size,
    };
    Preprocess { stats, input_size, precision: cfg.precision }
}

fn which(cfg: &RunConfig) -> Cifar {
    match (cfg.data.dataset, cfg.data.labels) {
        (DatasetName::Cifar10 | DatasetName::Folder, _) => Cifar::Ten,
        (DatasetName::Cifar100, LabelSet::Fine) => Cifar::HundredFine,
        (DatasetName::Cifar100, LabelSet::Coarse) => Cifar::HundredCoarse,
    }
}

/// The folder holding the dataset's files (downloaded first when needed).
pub fn dataset_dir(cfg: &RunConfig) -> Result<PathBuf> {
    if cfg.data.dataset == DatasetName::Folder {
        let d = cfg.data.data.clone().context("--dataset folder needs --data DIR")?;
        anyhow::ensure!(d.is_dir(), "--data: data dir {} does not exist", d.display());
        return Ok(d);
    }
    match &cfg.data.data {
        Some(d) => cifar::locate(d, which(cfg)).context("--data"),
        None => download::ensure_cifar(
            &cfg.data.data_dir,
            which(cfg),
            cfg.data.mirror.as_deref(),
            cfg.data.archive_md5.as_deref(),
        ),
    }
}

fn load_dataset(cfg: &RunConfig) -> Result<Dataset> {
    let dir = dataset_dir(cfg)?;
    let mut dataset = if cfg.data.dataset == DatasetName::Folder {
        let opts =
            folder::FolderOptions { size: cfg.data.folder_size.map(|s| s as u32), skip_bad: cfg.data.skip_bad_images };
        folder::load(&dir, &opts)?
    } else {
        cifar::load(&dir, which(cfg))?
    };
    if let Some(n) = cfg.data.limit {
        for split in [&mut dataset.train, &mut dataset.test] {
            let n = (n as i64).min(split.labels.size()[0]);
            split.images = split.images.narrow(0, 0, n);
            split.labels = split.labels.narrow(0, 0, n);
        }
    }
    Ok(dataset)
}

fn select(f: &Features, idx: &[i64]) -> Features {
    let idx = tch::Tensor::from_slice(idx).to_kind(Kind::Int64);
    Features { x: f.x.index_select(0, &idx), y: f.y.index_select(0, &idx) }
}
