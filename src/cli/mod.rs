//! The command line: clap's flag structs (`args`), value parsers (`parse`), presets, and
//! their validation into one config per command (`validate`, `sweep`). Bad values fail here
//! with one sentence and exit code 2 (clap's usage-error code), before any work starts.
pub mod args;
pub mod parse;
pub mod presets;
mod sweep;
mod validate;

use crate::config::{Job, MergeJob, ReproduceJob, WeightsJob};
use anyhow::Result;
use args::*;
use clap::{Parser, Subcommand};

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
    /// Join the shard directories of `extract --shard K/N` into the export of one unsharded run.
    Merge(MergeArgs),
    /// Decode every image of a folder dataset as `extract` would: unreadable files, images/s.
    Scan(Box<ScanArgs>),
    /// Fit the probe on features exported by `extract`, with the same options and logs as `run`.
    Fit(Box<FitArgs>),
    /// Random weights over several seeds vs torchvision's ImageNet weights, side by side.
    Compare(Box<CompareArgs>),
    /// Run a grid of configurations, resumable, with a per-configuration aggregate.
    Sweep(Box<SweepArgs>),
    /// Chart of test top-1 per architecture, random (mean ± sd) beside pretrained.
    Plot(PlotArgs),
    /// torchvision's checkpoint file and URL per architecture, and whether the torch.hub
    /// cache holds it (--verify: check its sha256).
    Weights(WeightsArgs),
    /// Rerun a logged run from its config.json and report whether data, weights, features
    /// and every metric match.
    Reproduce(ReproduceArgs),
    /// List the architectures, their stages and default features.
    Models,
    /// What this binary sees: versions, threads, CUDA devices.
    Info,
}

impl Cli {
    /// The process's arguments, presets expanded, parsed (clap exits on its own errors).
    pub fn from_env() -> Cli {
        Cli::parse_from(presets::expand(std::env::args_os().collect()))
    }

    /// The validated config of the command.
    pub fn into_job(self) -> Result<Job> {
        Ok(match self.command {
            Command::Run(c) => Job::Run(Box::new(c.run.config(c.preset.clone())?)),
            Command::Extract(a) => Job::Extract(Box::new(a.config()?)),
            Command::Merge(a) => Job::Merge(MergeJob { shards: a.shards, dir: a.output }),
            Command::Scan(a) => Job::Scan(Box::new(a.config()?)),
            Command::Fit(a) => Job::Fit(Box::new(a.config()?)),
            Command::Compare(a) => Job::Compare(Box::new(a.config()?)),
            Command::Sweep(a) => Job::Sweep(a.config()?),
            Command::Plot(a) => Job::Plot(a.config()),
            Command::Weights(a) => {
                Job::Weights(WeightsJob { arch: a.arch, verify: a.verify, mirror: a.weights_mirror })
            }
            Command::Reproduce(a) => Job::Reproduce(ReproduceJob {
                run_dir: a.run_dir,
                out: a.out,
                use_cache: a.use_cache,
                tolerance: a.tolerance,
            }),
            Command::Models => Job::Models,
            Command::Info => Job::Info,
        })
    }
}
