//! The `run` command: data → frozen network → features → probe → logs.
use crate::config::{BnSetting, DatasetName, InputNorm, LabelSet, RunConfig, WeightsSource};
use crate::data::cifar::{self, Cifar};
use crate::data::{download, normalize, split, Dataset};
use crate::features::{self, Features, Preprocess};
use crate::models::{pretrained, Network};
use crate::report::{self, frac, Row};
use crate::{device, probe, VERSION};
use anyhow::{Context, Result};
use std::path::PathBuf;
use tch::Kind;

/// What a finished run reports back (also printed).
pub struct Outcome {
    pub run_dir: PathBuf,
    pub val_acc: f64,
    pub test_top1: f64,
    pub test_top5: f64,
}

pub fn run(cfg: &RunConfig) -> Result<Outcome> {
    tch::set_num_threads(cfg.threads as i32);
    let device = device::resolve(&cfg.device)?;
    // The network first: a missing checkpoint or a bad weights file fails before any data work.
    let mut net = build_network(cfg, device)?;
    let dataset = load_dataset(cfg)?;
    let run_dir = report::create_run_dir(cfg)?;
    report::write_config(&run_dir, cfg)?;
    eprintln!(
        "cnnprobe {}: {} train / {} test images, {} classes, {} on {}",
        cfg.short_name(),
        dataset.train.len(),
        dataset.test.len(),
        dataset.num_classes(),
        cfg.model.arch.name(),
        device::name(device)
    );
    let pre = preprocess(cfg);
    if let BnSetting::Calibrate(n) = cfg.bn {
        features::calibrate_batchnorm(&mut net, &dataset.train, n, cfg.model.seed, pre, cfg.batch_size)?;
    }
    if cfg.fold_bn {
        net.fold_batchnorm();
    }
    let spec = &cfg.features;
    let (train, train_s) = features::extract(&net, spec, pre, &dataset.train, cfg.batch_size, "train")?;
    let (test, test_s) = features::extract(&net, spec, pre, &dataset.test, cfg.batch_size, "test")?;
    let feature_dim = train.x.size()[1];
    let extract_s = train_s + test_s;
    let n_images = (dataset.train.len() + dataset.test.len()) as f64;
    eprintln!("features: {feature_dim} dims, {extract_s:.1} s, {:.1} images/s", n_images / extract_s);

    let parts = split::stratified(&train.y, dataset.num_classes(), cfg.val_fraction, cfg.model.seed);
    let fit = select(&train, &parts.fit);
    let val = select(&train, &parts.val);
    let fitted = probe::train(&fit, &val, dataset.num_classes(), &cfg.probe, device)?;
    // The only place the test split meets the head: after every choice is made.
    let (test_top1, test_top5) = probe::evaluate(&fitted.head, &test);
    report::write_epochs(&run_dir, &fitted.epochs)?;

    let mut row = Row::default();
    row.set("finished_at", humantime::format_rfc3339_seconds(std::time::SystemTime::now()))
        .set("dataset", cfg.data.dataset_name())
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
        .set("device", device::name(device))
        .set("threads", cfg.threads)
        .set("batch_size", cfg.batch_size)
        .set("feature_dim", feature_dim)
        .set("normalize", &cfg.normalize)
        .set("optimizer", &cfg.optimizer)
        .set("schedule", &cfg.schedule)
        .set("epochs", cfg.probe.epochs)
        .set("lr", cfg.probe.lr)
        .set("weight_decay", cfg.probe.weight_decay)
        .set("probe_batch_size", cfg.probe.batch_size)
        .set("val_fraction", cfg.val_fraction)
        .set("best_epoch", fitted.best_epoch)
        .set("n_train", parts.fit.len())
        .set("n_val", parts.val.len())
        .set("n_test", dataset.test.len())
        .set("val_acc", frac(fitted.val_acc))
        .set("test_top1", frac(test_top1))
        .set("test_top5", frac(test_top5))
        .set("extract_s", format!("{extract_s:.1}"))
        .set("images_per_s", format!("{:.1}", n_images / extract_s))
        .set("fit_s", format!("{:.1}", fitted.fit_s))
        .set("run_dir", run_dir.display())
        .set("cnnprobe_version", VERSION)
        .set("libtorch_version", report::LIBTORCH_VERSION);
    row.write_single(&run_dir.join("result.csv"))?;
    row.append_to(&cfg.summary)?;
    eprintln!(
        "probe: best epoch {} val_acc {:.4}; test top1 {:.4} top5 {:.4} → {}",
        fitted.best_epoch,
        fitted.val_acc,
        test_top1,
        test_top5,
        run_dir.display()
    );
    Ok(Outcome { run_dir, val_acc: fitted.val_acc, test_top1, test_top5 })
}

/// The frozen network: drawn from the seed, or loaded from pretrained weights, then moved
/// to the device.
pub fn build_network(cfg: &RunConfig, device: tch::Device) -> Result<Network> {
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

pub fn preprocess(cfg: &RunConfig) -> Preprocess {
    let stats = match (cfg.input_norm, cfg.data.dataset) {
        (InputNorm::Imagenet, _) => normalize::IMAGENET,
        (InputNorm::Dataset, DatasetName::Cifar10) => normalize::CIFAR10,
        (InputNorm::Dataset, DatasetName::Cifar100) => normalize::CIFAR100,
    };
    Preprocess { stats, input_size: cfg.input_size }
}

fn load_dataset(cfg: &RunConfig) -> Result<Dataset> {
    let which = match (cfg.data.dataset, cfg.data.labels) {
        (DatasetName::Cifar10, _) => Cifar::Ten,
        (DatasetName::Cifar100, LabelSet::Fine) => Cifar::HundredFine,
        (DatasetName::Cifar100, LabelSet::Coarse) => Cifar::HundredCoarse,
    };
    let dir = match &cfg.data.data {
        Some(d) => cifar::locate(d, which).context("--data")?,
        None => download::ensure_cifar(
            &cfg.data.data_dir,
            which,
            cfg.data.mirror.as_deref(),
            cfg.data.archive_md5.as_deref(),
        )?,
    };
    cifar::load(&dir, which)
}

fn select(f: &Features, idx: &[i64]) -> Features {
    let idx = tch::Tensor::from_slice(idx).to_kind(Kind::Int64);
    Features { x: f.x.index_select(0, &idx), y: f.y.index_select(0, &idx) }
}
