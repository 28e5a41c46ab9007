//! The flag groups shared by the subcommands (data, model, compute, probe, output) and
//! each subcommand's flags. Only parsing lives here; `validate` turns them into configs.
use super::parse;
use crate::data::whiten::Whiten;
use crate::data::{DatasetName, InputNorm, LabelSet};
use crate::features::patches::FirstLayer;
use crate::features::store::FeatureFormat;
use crate::features::{BatchSize, BnSetting, Encode, FusedConvs, Pool, Precision, Resize};
use crate::models::init::InitScheme;
use crate::models::{Arch, Stem, WeightsSource};
use crate::probe::kernel::KernelFn;
use crate::probe::{KernelViews, Normalize, Schedule, Solver};
use clap::{ArgAction, Args};
use std::path::PathBuf;

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
    /// Folder datasets: resize the shorter side to --input-size·256/224, then take the
    /// centre --input-size square (torchvision's Resize(256) + CenterCrop(224) for photos)
    /// instead of resizing the whole image to a square.
    #[arg(long)]
    pub center_crop: bool,
    /// Folder datasets: threads decoding images ahead of the network [default: the cores].
    #[arg(long, value_parser = parse::positive_usize)]
    pub workers: Option<usize>,
    /// Use only the first N train and first N test images (benchmarks, smoke runs).
    #[arg(long, value_parser = parse::positive_usize)]
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
    #[arg(long, default_value = "torchvision", value_parser = parse::init)]
    pub init: InitScheme,
    /// random, imagenet (torchvision's checkpoint, cached in $TORCH_HOME/hub/checkpoints),
    /// or a state-dict file (.pth/.pt from torch.save, zip or legacy format, or .safetensors).
    #[arg(long, default_value = "random", value_parser = parse::weights)]
    pub weights: WeightsSource,
    /// Base URL for torchvision checkpoints instead of download.pytorch.org.
    #[arg(long)]
    pub weights_mirror: Option<String>,
    /// Resize images to N×N on the device [default: 224 with --weights imagenet, else 32].
    #[arg(long, value_parser = parse::positive_usize)]
    pub input_size: Option<usize>,
    /// Interpolation used when images are resized to --input-size.
    #[arg(long, value_enum, default_value_t = Resize::Bilinear)]
    pub resize: Resize,
    /// Input normalisation [default: imagenet with pretrained weights, else dataset].
    #[arg(long, value_enum)]
    pub input_norm: Option<InputNorm>,
    /// Start each residual block's last BN weight at 0 (torchvision's option).
    #[arg(long)]
    pub zero_init_residual: bool,
    /// Multiply every conv's channel count (ResNet and VGG; random weights only): wider
    /// random networks give more, less correlated features.
    #[arg(long, default_value_t = 1.0, value_parser = parse::positive_f64)]
    pub width_mult: f64,
    /// Concatenate the features of N networks drawn independently (random weights only):
    /// --seed S draws members S, S+1000, S+2000, …, so member 0 is the single network of
    /// seed S and seeds below 1000 never share a member. N times the features and the time.
    #[arg(long, default_value_t = 1, value_parser = parse::positive_usize, value_name = "N")]
    pub ensemble: usize,
    /// BatchNorm statistics: eval (as initialised) or calibrate:N (recomputed from N train images).
    #[arg(long, default_value = "eval", value_parser = parse::bn)]
    pub bn: BnSetting,
    /// Fold BatchNorm into the preceding conv for extraction (same features, faster).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub fold_bn: bool,
    /// ZCA-whiten each input image (zca, or zca:EPS with EPS relative to the mean eigenvalue,
    /// default 0.1), statistics from the train images: a data-dependent step, so the
    /// features are no longer data-free. For small images (CIFAR) at their own size.
    /// With --arch patchnet, patch-zca[:EPS] whitens its 6×6 patches instead.
    #[arg(long, value_name = "[patch-]zca[:EPS]", value_parser = parse::whiten)]
    pub whiten: Option<Whiten>,
    /// The first convolution's filters: random (the init scheme's draw), patches (one
    /// training patch per filter, after normalisation and any --whiten, scaled to the random
    /// filters' mean norm), or signed-patches (half patches, half their negatives). Patches
    /// are data-dependent (no labels, no gradients), so the features are no longer data-free.
    #[arg(long, default_value = "random", value_name = "random|patches|signed-patches", value_parser = parse::first_layer)]
    pub first_layer: FirstLayer,
    /// CPU, fp32, folded BN: run the convolutions as oneDNN's fused conv+ReLU(+add) with
    /// pre-packed weights (auto; a batch that raised an overflow or invalid-operation flag is
    /// rerun on aten's, so a NaN is never hidden), or as plain aten convolutions (off).
    #[arg(long, value_enum, default_value_t = FusedConvs::Auto)]
    pub fused: FusedConvs,
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
    /// [default: the last stage]. `name:K` pools that stage into K×K cells instead of
    /// --pool-size (e.g. block1:4,block2:2); `name:W/S` pools it over W×W windows at stride
    /// S, which overlap when S < W (e.g. encode:5/3, Thiry et al.'s local pooling).
    #[arg(long, visible_alias = "taps", value_delimiter = ',', action = ArgAction::Set)]
    pub features: Vec<String>,
    /// Pooling of each tapped stage.
    #[arg(long, value_enum, default_value_t = Pool::Avg)]
    pub pool: Pool,
    /// Adaptive K×K pooling: C·K² features per tapped stage.
    #[arg(long, default_value_t = 1, value_parser = parse::positive_usize)]
    pub pool_size: usize,
    /// What each tapped map goes through before pooling: none, or soft:A (Coates & Ng's
    /// soft threshold with both polarities, ReLU(z − A) and ReLU(−z − A): twice the
    /// features). For --arch patchnet, whose responses are cosines in [−1, 1].
    #[arg(long, default_value = "none", value_name = "none|soft:A", value_parser = parse::encode)]
    pub encode: Encode,
    /// Seed of the weight draws, the validation split and the probe.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Images per extraction batch, or auto (CUDA: start at 2048, halve on out-of-memory).
    #[arg(long, default_value = "256", value_parser = parse::batch)]
    pub batch_size: BatchSize,
    /// Compute precision of the frozen network (features are stored as float32).
    /// fp16 needs CUDA; bf16 also runs on the CPU.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
}

#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::util::device::parse_spec)]
    pub device: String,
    /// CPU threads for libtorch [default: all cores].
    #[arg(long, value_parser = parse::positive_usize)]
    pub threads: Option<usize>,
}

/// `--kernel-precision`: the kernel readout's rows. One flag, so that a preset's choice is
/// undone by giving another value (`--preset patches-best --solver lbfgs --kernel-precision fp32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelRows {
    /// float32.
    Fp32,
    /// Rounded to bfloat16 after scaling: half the features' memory beside the float32 Gram
    /// matrix, which on CPUs with AVX512-BF16 is computed about 3.5x faster (the exact
    /// kernel of the rounded rows; products summed in float32).
    Bf16,
    /// bf16 from extraction on: each image's row is the mean of its mirrored views, averaged
    /// as they are extracted and stored in bf16, so no float32 copy or flipped part is held
    /// (a quarter of the memory of two float32 views). Bypasses the feature cache; rounded
    /// before the scaling as well, so the last bits differ from bf16.
    Bf16Lean,
}

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Fraction of each train class held out for validation.
    #[arg(long, default_value_t = 0.1, value_parser = parse::fraction)]
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
    /// L2 strength: AdamW's decoupled decay, Adam/SGD's L2, λ of L-BFGS's mean-loss + λ/2‖W‖²,
    /// or the kernel readout's ridge λ (relative to k(x, x) ≈ 1).
    #[arg(long, default_value_t = 1e-4, value_parser = parse::non_negative_f64)]
    pub weight_decay: f64,
    /// Epochs of the gradient solvers (the weights of the best validation epoch are kept).
    #[arg(long, default_value_t = 30, value_parser = parse::positive_usize)]
    pub epochs: usize,
    /// Peak learning rate of the gradient solvers.
    #[arg(long, default_value_t = 1e-3, value_parser = parse::positive_f64)]
    pub lr: f64,
    /// Mini-batch size of the gradient solvers.
    #[arg(long, default_value_t = 256, value_parser = parse::positive_usize)]
    pub probe_batch_size: usize,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Stop when validation loss has not improved for N epochs (0: run all epochs).
    #[arg(long, default_value_t = 0)]
    pub patience: usize,
    /// How --solver kernel holds the scaled features.
    #[arg(long, value_enum, default_value_t = KernelRows::Fp32)]
    pub kernel_precision: KernelRows,
    /// The kernel of --solver kernel, ‖u‖‖v‖·κ(cos θ) of the scaled features: arccos (order
    /// 1, one infinitely wide ReLU layer), arccos2 (two such layers) or exp:B (κ = e^(B(cos θ − 1)),
    /// more local as B grows).
    #[arg(long, default_value = "arccos", value_name = "arccos|arccos2|exp:B", value_parser = parse::kernel)]
    pub kernel: KernelFn,
    /// How --solver kernel treats each image's mirrored views (--hflip): mean (one row per
    /// image, the mean of its views' features) or pairs (both views kept, the kernel averaged
    /// over the four pairs of two images' views: twice the rows' memory, four times the
    /// products).
    #[arg(long, value_enum, default_value_t = KernelViews::Mean)]
    pub kernel_views: KernelViews,
    /// L-BFGS iteration cap per fit (the kernel readout's conjugate-gradient steps too).
    #[arg(long, default_value_t = 1000, value_parser = parse::positive_usize)]
    pub max_iter: usize,
    /// Screening runs of a study: choose on validation and stop there. No refit on
    /// train+val, and the test split is never scored (its columns stay empty).
    #[arg(long)]
    pub val_only: bool,
    /// Write the head (weights + feature scaling statistics) as safetensors.
    #[arg(long)]
    pub save_head: Option<PathBuf>,
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
    /// Run directory [default: runs/<timestamp>-<dataset>-<arch>-<stem>-s<seed>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// CSV that gets one row per finished run.
    #[arg(long, default_value = "runs/summary.csv")]
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
    /// A named bundle of flags; flags given here override it (`cnnprobe models` lists them).
    /// random-best: the best untrained-feature recipe found by the study in
    /// results/random_study.csv, 72.1 ± 0.4% CIFAR-10 test top-1 over 3 seeds; with --weights
    /// imagenet, the same recipe on torchvision's pretrained VGG-11 (its own widths and stem).
    /// transfer: the standard linear transfer protocol on torchvision's ImageNet ResNet-50
    /// (224 px bicubic, penultimate features, L-BFGS, L2 chosen on a 20% validation split);
    /// published: 91.47% CIFAR-10 test top-1 (Ericsson et al., CVPR 2021).
    #[arg(long, value_parser = super::presets::parse)]
    pub preset: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Seeds of the random networks: 0,1,2 or 0..3 (end excluded) or 0..=2.
    #[arg(long, default_value = "0..3", value_parser = parse::seeds)]
    pub seeds: std::vec::Vec<u64>,
    /// Where the comparison table goes [default: runs/compare/<dataset>-<arch>.csv].
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
    #[arg(long, value_delimiter = ',', value_parser = parse::init)]
    pub inits: Vec<InitScheme>,
    /// Seeds: 0,1,2 or 0..3 (end excluded) or 0..=2.
    #[arg(long, default_value = "0..3", value_parser = parse::seeds)]
    pub seeds: std::vec::Vec<u64>,
    /// Weight sources to sweep (random, imagenet, paths) [default: --weights].
    #[arg(long, value_delimiter = ',', value_parser = parse::weights)]
    pub weight_sources: Vec<WeightsSource>,
    /// Pool sizes to sweep [default: --pool-size].
    #[arg(long, value_delimiter = ',', value_parser = parse::positive_usize)]
    pub pool_sizes: Vec<usize>,
    /// BN settings to sweep, e.g. eval,calibrate:1000 [default: --bn].
    #[arg(long, value_delimiter = ',', value_parser = parse::bn)]
    pub bns: Vec<BnSetting>,
    /// A JSON grid {"arch": [...], "init": [...], "seed": [...], "weights": [...],
    /// "pool_size": [...], "bn": [...]}; its keys replace the matching flags.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// One row per finished configuration; re-running skips the rows already there.
    #[arg(long, default_value = "runs/sweep.csv")]
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
    /// Extract only the K-th of N equal, contiguous parts of each split (K from 0), e.g. one
    /// per GPU or per job-array task; `cnnprobe merge` joins the N shard directories.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::data::source::Shard>,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shard directories written by `extract --shard K/N` (all N of them, any order).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Output directory: the features of one unsharded run, in the shards' format.
    #[arg(long, short)]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Resize every image to N×N as `extract --input-size N` would (folder datasets).
    #[arg(long, value_parser = parse::positive_usize)]
    pub input_size: Option<usize>,
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

#[derive(Args, Debug)]
pub struct WeightsArgs {
    /// Only this architecture.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Hash each cached checkpoint and compare with the sha256 prefix in its file name.
    #[arg(long)]
    pub verify: bool,
    /// Base URL to show instead of download.pytorch.org.
    #[arg(long)]
    pub weights_mirror: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// A run directory written by `run` or `fit` (holds config.json and result.csv).
    pub run_dir: PathBuf,
    /// Where the rerun's directory goes [default: RUN_DIR/reproduce-<UTC time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Take features from the cache when a verified entry exists, instead of extracting
    /// afresh (faster; checks less).
    #[arg(long)]
    pub use_cache: bool,
    /// Largest difference of a metric (accuracies as fractions) still counted as a match.
    #[arg(long, default_value_t = 0.0, value_parser = parse::non_negative_f64)]
    pub tolerance: f64,
}
