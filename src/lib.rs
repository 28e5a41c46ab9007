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
pub mod models;
pub mod pipeline;
pub mod probe;
pub mod progress;
pub mod report;
pub mod sweep;

/// The cnnprobe version recorded beside every result.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
