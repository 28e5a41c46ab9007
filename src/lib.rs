//! cnnprobe: how good are the features of a CNN that was never trained?
//!
//! The pipeline, one module per stage:
//! `data` (CIFAR readers, download, normalisation, splits) → `models` (torchvision-exact
//! networks and their initialisation) → `features` (frozen extraction) → `probe`
//! (logistic-regression head) → `report` (run directory, CSV logs, summary).
//! `config` holds the validated description of a run; `pipeline` runs the stages in order.

pub mod cache;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod config;
pub mod data;
pub mod device;
pub mod export;
pub mod features;
pub mod fetch;
pub mod files;
pub mod interrupt;
pub mod libtorch;
pub mod models;
pub mod pipeline;
pub mod plot;
pub mod presets;
pub mod probe;
pub mod progress;
pub mod report;
pub mod sweep;

/// An error in the flags that can only be seen once the network or data exist (e.g.
/// `--pool-size` larger than the feature map): reported like a usage error, exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The cnnprobe version recorded beside every result.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
