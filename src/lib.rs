//! cnnprobe: how good are the features of a CNN that was never trained?
//!
//! The pipeline, one module per stage, each importing only the ones before it:
//! `util` (files, downloads, signals, progress, device) → `data` (datasets, their
//! resolution and download, normalisation, splits) → `models` (torchvision-exact networks,
//! init, checkpoints) → `features` (taps, extraction, cache, feature files) → `probe`
//! (logistic-regression head, protocol) → `report` (run directory, summary rows,
//! aggregates, charts). Above them: `config` (one validated config per command), `cli`
//! (flags → config) and `commands` (one file per command).

pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod features;
pub mod models;
pub mod probe;
pub mod report;
pub mod util;

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

/// The libtorch version this binary was built against (read from the install by build.rs).
pub const LIBTORCH_VERSION: &str = env!("CNNPROBE_LIBTORCH_VERSION");
