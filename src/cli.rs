//! Command-line flags, turned into a validated `RunConfig` before any work starts.
//! Bad values fail here with one sentence and exit code 2 (clap's usage-error code).
//! Flags come in groups (data, model, probe, output) shared by the subcommands.
use crate::config::{BnSetting, DataConfig, DatasetName, InputNorm, LabelSet, RunConfig, WeightsSource};
use crate::export::FeatureFormat;
use crate::features::{BatchSize, FeatureSpec, Pool, Precision};
use crate::models::init::InitScheme;
use crate::models::{Arch, ModelConfig, Stem};
use crate::probe::{Normalize, ProbeSettings, Schedule, Solver};
use anyhow::{bail, Result};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "cnnprobe",
    version,
    about = "How good are the features of a CNN that was never trained? Frozen CNN features + a linear probe.",
    // A flag given twice keeps its last value: how `--preset` flags yield to the user's.
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Extract frozen features, fit a linear probe, log the results.
    Run(Box<RunCmd>),
    /// Extract train/test features and labels to files (csv, npy or safetensors).
    Extract(Box<ExtractArgs>),
    /// Fit the probe on features exported by `extract`, with the same options and logs as `run`.
    Fit(Box<FitArgs>),
    /// Random weights over several seeds vs torchvision's ImageNet weights, side by side.
    Compare(Box<CompareArgs>),
    /// Run a grid of configurations, resumable, with a per-configuration aggregate.
    Sweep(Box<SweepArgs>),
    /// Chart of test top-1 per architecture, random (mean ± sd) beside pretrained.
    Plot(PlotArgs),
    /// List the architectures, their stages and default features.
    Models,
    /// What this binary sees: versions, threads, CUDA devices.
    Info,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    #[arg(long, value_enum, default_value_t = DatasetName::Cifar10)]
    pub dataset: DatasetName,
    /// Extracted dataset folder (cifar-10-batches-bin / cifar-100-binary) or its parent.
    /// Without it the official archive is downloaded into --data-dir.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where downloaded datasets are kept [default: ~/.cache/cnnprobe/data].
    #[arg(long, env = "CNNPROBE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base URL to download the archive from instead of the dataset authors' site
    /// (http://, https:// or file://).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Expected md5 of the archive at --mirror, if it is not the official one.
    #[arg(long, requires = "mirror")]
    pub archive_md5: Option<String>,
    /// CIFAR-100 label set.
    #[arg(long, value_enum, default_value_t = LabelSet::Fine)]
    pub labels: LabelSet,
    /// Folder datasets: skip unreadable images with a warning and a count.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Use only the first N train and first N test images (benchmarks, smoke runs).
    #[arg(long, value_parser = positive_usize)]
    pub limit: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Architecture (see `cnnprobe models`).
    #[arg(long, value_enum, default_value_t = Arch::Resnet18)]
    pub arch: Arch,
    /// Stem [default: imagenet; cifar for resnet20…110, which only have that one].
    #[arg(long, value_enum)]
    pub stem: Option<Stem>,
    /// Weight init: torchvision, pytorch-default, kaiming-normal, xavier-uniform,
    /// orthogonal, normal:STD or uniform:A.
    #[arg(long, default_value = "torchvision", value_parser = parse_init)]
    pub init: InitScheme,
    /// random, imagenet (torchvision's checkpoint, cached in $TORCH_HOME/hub/checkpoints),
    /// or a state-dict file (.pth/.pt from torch.save, or .safetensors).
    #[arg(long, default_value = "random", value_parser = parse_weights)]
    pub weights: WeightsSource,
    /// Base URL for torchvision checkpoints instead of download.pytorch.org.
    #[arg(long)]
    pub weights_mirror: Option<String>,
    /// Resize images to N×N on the device [default: 224 with --weights imagenet, else 32].
    #[arg(long, value_parser = positive_usize)]
    pub input_size: Option<usize>,
    /// Input normalisation [default: imagenet with pretrained weights, else dataset].
    #[arg(long, value_enum)]
    pub input_norm: Option<InputNorm>,
    /// Start each residual block's last BN weight at 0 (torchvision's option).
    #[arg(long)]
    pub zero_init_residual: bool,
    /// Multiply every conv's channel count (ResNet and VGG; random weights only): wider
    /// random networks give more, less correlated features.
    #[arg(long, default_value_t = 1.0, value_parser = positive_f64)]
    pub width_mult: f64,
    /// BatchNorm statistics: eval (as initialised) or calibrate:N (recomputed from N train images).
    #[arg(long, default_value = "eval", value_parser = parse_bn)]
    pub bn: BnSetting,
    /// Fold BatchNorm into the preceding conv for extraction (same features, faster).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub fold_bn: bool,
    /// Continue when features are NaN/Inf, all zero or identical for every image
    /// (by default that is an error naming the stage where it first appears).
    #[arg(long)]
    pub allow_degenerate: bool,
    /// Also extract horizontally flipped train images: the probe trains on both views
    /// (flipped validation images join only the refit; test images are flipped only with
    /// --hflip-test).
    #[arg(long)]
    pub hflip: bool,
    /// With --hflip: score each validation and test image by the mean of the head's logits
    /// on it and on its mirror image (test-time flip; for a linear head that is the logit
    /// of the two views' mean features). Extracts the flipped test images too.
    #[arg(long, requires = "hflip")]
    pub hflip_test: bool,
    /// Stages to tap, comma-separated (e.g. layer2,layer3,layer4; VGG: block1…block5 or fc2)
    /// [default: the last stage]. `name:K` pools that stage K×K instead of --pool-size
    /// (e.g. block1:4,block2:2).
    #[arg(long, visible_alias = "taps", value_delimiter = ',', action = ArgAction::Set)]
    pub features: Vec<String>,
    /// Pooling of each tapped stage.
    #[arg(long, value_enum, default_value_t = Pool::Avg)]
    pub pool: Pool,
    /// Adaptive K×K pooling: C·K² features per tapped stage.
    #[arg(long, default_value_t = 1, value_parser = positive_usize)]
    pub pool_size: usize,
    /// Seed of the weight draws, the validation split and the probe.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Images per extraction batch, or auto (CUDA: start at 2048, halve on out-of-memory).
    #[arg(long, default_value = "256", value_parser = parse_batch)]
    pub batch_size: BatchSize,
    /// Compute precision of the frozen network (features are stored as float32).
    /// fp16 needs CUDA; bf16 also runs on the CPU.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
}

#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse_spec)]
    pub device: String,
    /// CPU threads for libtorch [default: all cores].
    #[arg(long, value_parser = positive_usize)]
    pub threads: Option<usize>,
}

impl ComputeArgs {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Fraction of each train class held out for validation.
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    pub val_fraction: f64,
    /// lbfgs: full-batch L-BFGS on the exact objective; adamw/adam/sgd: tch's optimisers.
    #[arg(long, value_enum, default_value_t = Solver::Adamw)]
    pub solver: Solver,
    /// Feature scaling, fitted on training rows only.
    #[arg(long, value_enum, default_value_t = Normalize::Standardize)]
    pub normalize: Normalize,
    /// Choose the L2 strength on the validation split (log grid, coarse then fine), then
    /// refit on train+val. Without it --weight-decay is used as given.
    #[arg(long)]
    pub wd_search: bool,
    /// L2 strength: AdamW's decoupled decay, Adam/SGD's L2, or λ of L-BFGS's mean-loss + λ/2‖W‖².
    #[arg(long, default_value_t = 1e-4, value_parser = non_negative_f64)]
    pub weight_decay: f64,
    /// Epochs of the gradient solvers (the weights of the best validation epoch are kept).
    #[arg(long, default_value_t = 30, value_parser = positive_usize)]
    pub epochs: usize,
    /// Peak learning rate of the gradient solvers.
    #[arg(long, default_value_t = 1e-3, value_parser = positive_f64)]
    pub lr: f64,
    /// Mini-batch size of the gradient solvers.
    #[arg(long, default_value_t = 256, value_parser = positive_usize)]
    pub probe_batch_size: usize,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Stop when validation loss has not improved for N epochs (0: run all epochs).
    #[arg(long, default_value_t = 0)]
    pub patience: usize,
    /// L-BFGS iteration cap per fit.
    #[arg(long, default_value_t = 1000, value_parser = positive_usize)]
    pub max_iter: usize,
    /// Screening runs of a study: choose on validation and stop there. No refit on
    /// train+val, and the test split is never scored (its columns stay empty).
    #[arg(long)]
    pub val_only: bool,
    /// Write the head (weights + feature scaling statistics) as safetensors.
    #[arg(long)]
    pub save_head: Option<PathBuf>,
}

impl ProbeArgs {
    /// The flags' defaults (for commands that record probe settings without fitting).
    pub fn defaults() -> ProbeArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            probe: ProbeArgs,
        }
        Only::parse_from(["cnnprobe"]).probe
    }

    pub fn settings(&self, seed: u64) -> ProbeSettings {
        ProbeSettings {
            solver: self.solver,
            normalize: self.normalize,
            weight_decay: self.weight_decay,
            wd_search: self.wd_search,
            epochs: self.epochs,
            lr: self.lr,
            batch_size: self.probe_batch_size,
            schedule: self.schedule,
            patience: self.patience,
            max_iter: self.max_iter,
            seed,
            val_only: self.val_only,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Feature cache: reuse features extracted before with the same settings
    /// [default: $CNNPROBE_CACHE_DIR or ~/.cache/cnnprobe/features].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Extract afresh and store nothing in the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Run directory [default: results/runs/<timestamp>-<dataset>-<arch>-<stem>-s<seed>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// CSV that gets one row per finished run.
    #[arg(long, default_value = "results/summary.csv")]
    pub summary: PathBuf,
    /// Free-text label written to the summary row's `tag` column (e.g. a study's lever).
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RunCmd {
    /// A named bundle of flags; flags given here override it. random-best: the best
    /// untrained-feature recipe found by the study in results/random_study.csv, 72.1 ± 0.4%
    /// CIFAR-10 test top-1 over 3 seeds (`cnnprobe models` lists the flags). With --weights imagenet, the same recipe on
    /// torchvision's pretrained VGG-11 (its own widths and stem): the comparison.
    #[arg(long, value_parser = crate::presets::parse)]
    pub preset: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

impl RunCmd {
    pub fn into_config(self) -> Result<RunConfig> {
        let mut cfg = self.run.into_config()?;
        cfg.preset = self.preset;
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Seeds of the random networks: 0,1,2 or 0..3 (end excluded) or 0..=2.
    #[arg(long, default_value = "0..3", value_parser = crate::compare::parse_seeds)]
    pub seeds: std::vec::Vec<u64>,
    /// Where the comparison table goes [default: results/compare/<dataset>-<arch>.csv].
    #[arg(long)]
    pub table: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// A summary or sweep CSV (needs weights and the --by and --metric columns).
    pub csv: PathBuf,
    /// Output chart: .svg or .png.
    #[arg(long, short)]
    pub output: PathBuf,
    #[arg(long)]
    pub title: Option<String>,
    /// Column that groups the bars (e.g. tag for a study's levers).
    #[arg(long, default_value = "arch")]
    pub by: String,
    /// Column with the bar heights, a fraction in [0, 1] (e.g. val_acc).
    #[arg(long, default_value = "test_top1")]
    pub metric: String,
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Architectures to sweep [default: --arch].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub archs: Vec<Arch>,
    /// Init schemes to sweep [default: --init].
    #[arg(long, value_delimiter = ',', value_parser = parse_init)]
    pub inits: Vec<InitScheme>,
    /// Seeds: 0,1,2 or 0..3 (end excluded) or 0..=2.
    #[arg(long, default_value = "0..3", value_parser = crate::compare::parse_seeds)]
    pub seeds: std::vec::Vec<u64>,
    /// Weight sources to sweep (random, imagenet, paths) [default: --weights].
    #[arg(long, value_delimiter = ',', value_parser = parse_weights)]
    pub weight_sources: Vec<WeightsSource>,
    /// Pool sizes to sweep [default: --pool-size].
    #[arg(long, value_delimiter = ',', value_parser = positive_usize)]
    pub pool_sizes: Vec<usize>,
    /// BN settings to sweep, e.g. eval,calibrate:1000 [default: --bn].
    #[arg(long, value_delimiter = ',', value_parser = parse_bn)]
    pub bns: Vec<BnSetting>,
    /// A JSON grid {"arch": [...], "init": [...], "seed": [...], "weights": [...],
    /// "pool_size": [...], "bn": [...]}; its keys replace the matching flags.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// One row per finished configuration; re-running skips the rows already there.
    #[arg(long, default_value = "results/sweep.csv")]
    pub sweep_csv: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value_t = FeatureFormat::Npy)]
    pub format: FeatureFormat,
    /// Output directory for the feature files and features.json (the extraction settings).
    #[arg(long, short)]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct FitArgs {
    /// A directory written by `cnnprobe extract` (any format).
    pub features: PathBuf,
    /// Seed of the validation split and the probe.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl ModelArgs {
    /// Validates the model flags together; errors here are usage errors.
    pub fn resolve(&self) -> Result<(ModelConfig, i64, InputNorm)> {
        let stem = match (self.stem, self.arch.is_cifar_resnet()) {
            (Some(Stem::Imagenet), true) => {
                bail!("--stem imagenet: {} is a CIFAR ResNet and only has the cifar stem", self.arch.name())
            }
            (Some(s), _) => s,
            (None, true) => Stem::Cifar,
            (None, false) => Stem::Imagenet,
        };
        if self.weights == WeightsSource::Imagenet {
            if !self.arch.in_torchvision() {
                bail!("--weights imagenet: torchvision publishes no ImageNet weights for {}", self.arch.name());
            }
            if stem == Stem::Cifar {
                bail!("--weights imagenet needs --stem imagenet: torchvision's checkpoints have the ImageNet stem");
            }
        }
        if self.width_mult != 1.0 && self.weights != WeightsSource::Random {
            bail!("--width-mult {} changes every layer's shape; it needs --weights random", self.width_mult);
        }
        let input_size =
            self.input_size.map(|n| n as i64).unwrap_or(if self.weights == WeightsSource::Imagenet { 224 } else { 32 });
        let input_norm = self.input_norm.unwrap_or(if self.weights == WeightsSource::Random {
            InputNorm::Dataset
        } else {
            InputNorm::Imagenet
        });
        let model = ModelConfig {
            arch: self.arch,
            stem,
            init: self.init,
            zero_init_residual: self.zero_init_residual,
            seed: self.seed,
            width_mult: self.width_mult,
        };
        Ok((model, input_size, input_norm))
    }
}

impl DataArgs {
    pub fn config(&self) -> DataConfig {
        DataConfig {
            dataset: self.dataset,
            labels: self.labels,
            data: self.data.clone(),
            data_dir: self.data_dir.clone().unwrap_or_else(default_data_dir),
            mirror: self.mirror.clone(),
            archive_md5: self.archive_md5.clone(),
            limit: self.limit,
            skip_bad_images: self.skip_bad_images,
            folder_size: None,
        }
    }
}

/// Everything `run` and `extract` share, validated.
pub fn run_config(data: &DataArgs, m: &ModelArgs, probe: &ProbeArgs, output: &OutputArgs) -> Result<RunConfig> {
    let (model, input_size, input_norm) = m.resolve()?;
    if data.dataset == DatasetName::Folder && data.data.is_none() {
        bail!("--dataset folder needs --data DIR (with train/<class>/ and test/<class>/ inside)");
    }
    let mut data_cfg = data.config();
    data_cfg.folder_size = m.input_size;
    Ok(RunConfig {
        data: data_cfg,
        model,
        weights: m.weights.clone(),
        weights_mirror: m.weights_mirror.clone(),
        input_size,
        input_norm,
        bn: m.bn,
        fold_bn: m.fold_bn,
        allow_degenerate: m.allow_degenerate,
        features: FeatureSpec { taps: m.features.clone(), pool: m.pool, pool_size: m.pool_size as i64 },
        device: m.compute.device.clone(),
        threads: m.compute.threads(),
        batch_size: m.batch_size,
        precision: m.precision,
        val_fraction: probe.val_fraction,
        probe: probe.settings(m.seed),
        save_head: probe.save_head.clone(),
        cache_dir: (!output.no_cache).then(|| output.cache_dir.clone().unwrap_or_else(crate::cache::default_dir)),
        out: output.out.clone(),
        summary: output.summary.clone(),
        tag: output.tag.clone(),
        preset: None,
        hflip: m.hflip,
        hflip_test: m.hflip_test,
    })
}

impl RunArgs {
    pub fn into_config(self) -> Result<RunConfig> {
        run_config(&self.data, &self.model, &self.probe, &self.output)
    }
}

fn default_data_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    cache.join("cnnprobe").join("data")
}

fn parse_batch(s: &str) -> Result<BatchSize, String> {
    s.parse()
}

fn parse_weights(s: &str) -> Result<WeightsSource, String> {
    s.parse()
}

fn parse_init(s: &str) -> Result<InitScheme, String> {
    s.parse()
}

fn parse_bn(s: &str) -> Result<BnSetting, String> {
    s.parse()
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a positive whole number")),
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive finite number")),
    }
}

fn non_negative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a finite number ≥ 0")),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("'{s}' is not a fraction strictly between 0 and 1")),
    }
}
