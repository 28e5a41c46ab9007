//! One validated description per command. The flags are turned into these before any work
//! starts (`cli`), the commands consume them (`commands`), and each run writes its own as
//! config.json beside its results. Each stage owns the settings it reads: `ExtractConfig`
//! (features), `ProbeConfig` (probe), `OutputConfig` (report); this module composes them.
use crate::features::store::FeatureFormat;
use crate::features::ExtractConfig;
use crate::probe::ProbeConfig;
use crate::report::OutputConfig;
use crate::util::device::Compute;
use serde::Serialize;
use std::path::PathBuf;

/// `run`: extract (or reuse cached) features, fit the probe, log the results.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RunConfig {
    pub extract: ExtractConfig,
    pub probe: ProbeConfig,
    pub output: OutputConfig,
}

impl RunConfig {
    /// Every setting that changes the run's numbers (see `ExtractConfig::identity`).
    pub fn identity(&self) -> serde_json::Value {
        serde_json::json!({ "extract": self.extract.identity(), "probe": self.probe })
    }

    /// The same run at another seed: weights, validation split and probe all follow it.
    pub fn with_seed(&self, seed: u64) -> RunConfig {
        let mut c = self.clone();
        c.extract.model.seed = seed;
        c.probe.seed = seed;
        c
    }
}

/// `extract`: features to files.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ExtractJob {
    pub extract: ExtractConfig,
    pub dir: PathBuf,
    pub format: FeatureFormat,
}

/// `merge`: shard directories into one export.
#[derive(Clone, Debug)]
pub struct MergeJob {
    pub shards: Vec<PathBuf>,
    pub dir: PathBuf,
}

/// `fit`: the probe on exported features.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FitConfig {
    pub features: PathBuf,
    pub compute: Compute,
    pub probe: ProbeConfig,
    pub output: OutputConfig,
}

/// `compare`: random weights over seeds beside torchvision's pretrained weights.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// The random-weights run (its seed is replaced by each of `seeds`).
    pub random: RunConfig,
    pub seeds: Vec<u64>,
    /// The same run with torchvision's ImageNet weights and their defaults, or why there is none.
    pub pretrained: Result<RunConfig, String>,
    pub table: PathBuf,
}

/// `sweep`: a grid of runs, each point validated up front.
#[derive(Debug)]
pub struct SweepConfig {
    pub points: Vec<SweepPoint>,
    pub sweep_csv: PathBuf,
}

#[derive(Debug)]
pub struct SweepPoint {
    /// Identifies the point across invocations (see `cli::sweep`).
    pub key: String,
    /// The point's axis values, for the log and for rows of points that cannot run.
    pub describe: Vec<(String, String)>,
    /// The run, or why these flags make no valid run (recorded as a skipped row).
    pub run: Result<RunConfig, String>,
}

/// `plot`.
#[derive(Clone, Debug)]
pub struct PlotConfig {
    pub csv: PathBuf,
    pub output: PathBuf,
    pub title: Option<String>,
    pub by: String,
    pub metric: String,
}

/// `weights`: torchvision's checkpoints and the local cache.
#[derive(Clone, Debug)]
pub struct WeightsJob {
    pub arch: Option<crate::models::Arch>,
    pub verify: bool,
    pub mirror: Option<String>,
}

/// `reproduce`: rerun a logged run and compare.
#[derive(Clone, Debug)]
pub struct ReproduceJob {
    pub run_dir: PathBuf,
    /// Where the rerun goes [default: RUN_DIR/reproduce-<time>].
    pub out: Option<PathBuf>,
    /// Allow features from the cache (verified by checksum) instead of extracting afresh.
    pub use_cache: bool,
    /// Largest difference of a metric still counted as equal.
    pub tolerance: f64,
}

/// A parsed and validated command line.
pub enum Job {
    Run(Box<RunConfig>),
    Extract(Box<ExtractJob>),
    Merge(MergeJob),
    Scan(Box<crate::data::DataConfig>),
    Fit(Box<FitConfig>),
    Compare(Box<CompareConfig>),
    Sweep(SweepConfig),
    Plot(PlotConfig),
    Weights(WeightsJob),
    Reproduce(ReproduceJob),
    Models,
    Info,
}
