//! `sweep` flags → a grid of validated runs. Axes come from a `--grid` JSON file, else from
//! the plural flags, else from the run flags; each point is validated before any work, and
//! keyed by the settings that change its numbers (so `--threads` or a new flag with its
//! default value never invalidates a resumed sweep).
use super::args::{RunArgs, SweepArgs};
use crate::config::{SweepConfig, SweepPoint};
use crate::features::BnSetting;
use crate::models::init::InitScheme;
use crate::models::{Arch, Stem, WeightsSource};
use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The axes of a sweep (a `--grid` JSON file has the same keys, each a list).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grid {
    arch: Option<Vec<String>>,
    init: Option<Vec<String>>,
    seed: Option<Vec<u64>>,
    weights: Option<Vec<String>>,
    pool_size: Option<Vec<usize>>,
    bn: Option<Vec<String>>,
}

/// The file's values if it names the axis, else the flag's list if given, else the run's value.
fn axis<T: Clone>(file: Option<Vec<T>>, flags: &[T], base: T) -> Vec<T> {
    file.unwrap_or_else(|| if flags.is_empty() { vec![base] } else { flags.to_vec() })
}

/// Parses a file axis of strings.
fn parsed<T>(v: Option<Vec<String>>, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<Vec<T>>> {
    v.map(|v| v.iter().map(|s| parse(s).map_err(|e| anyhow!("--grid: {e}"))).collect()).transpose()
}

impl SweepArgs {
    pub fn config(&self) -> Result<SweepConfig> {
        let file: Grid = match &self.grid {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("--grid {}: cannot read", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("--grid {}: not a valid grid", p.display()))?
            }
            None => Grid::default(),
        };
        let m = &self.run.model;
        let arch_of = |a: &str| Arch::from_str(a, false).map_err(|_| format!("unknown arch '{a}'"));
        let archs = axis(parsed(file.arch, arch_of)?, &self.archs, m.arch);
        let inits: Vec<InitScheme> = axis(parsed(file.init, str::parse)?, &self.inits, m.init);
        let weights: Vec<WeightsSource> =
            axis(parsed(file.weights, str::parse)?, &self.weight_sources, m.weights.clone());
        let pools = axis(file.pool_size, &self.pool_sizes, m.pool_size);
        let bns: Vec<BnSetting> = axis(parsed(file.bn, str::parse)?, &self.bns, m.bn);
        let seeds = file.seed.unwrap_or_else(|| self.seeds.clone());
        let mut points = Vec::new();
        for &arch in &archs {
            for &init in &inits {
                for w in &weights {
                    for &pool_size in &pools {
                        for &bn in &bns {
                            for &seed in &seeds {
                                let args = apply(&self.run, arch, init, w, pool_size, bn, seed);
                                points.push(point(&args));
                            }
                        }
                    }
                }
            }
        }
        if points.is_empty() {
            bail!("the sweep grid is empty");
        }
        Ok(SweepConfig { points, sweep_csv: self.sweep_csv.clone() })
    }
}

fn apply(
    base: &RunArgs,
    arch: Arch,
    init: InitScheme,
    w: &WeightsSource,
    pool: usize,
    bn: BnSetting,
    seed: u64,
) -> RunArgs {
    let mut a = base.clone();
    let m = &mut a.model;
    (m.arch, m.init, m.weights, m.pool_size, m.bn, m.seed) = (arch, init, w.clone(), pool, bn, seed);
    // CIFAR ResNets have only the CIFAR stem: the base stem applies to the others.
    if arch.is_cifar_resnet() {
        m.stem = None;
    } else if *w == WeightsSource::Imagenet {
        // Pretrained means torchvision's network as published: its ImageNet stem.
        m.stem = Some(Stem::Imagenet);
    }
    a
}

fn point(args: &RunArgs) -> SweepPoint {
    let m = &args.model;
    let describe: Vec<(String, String)> = [
        ("arch", m.arch.name().to_string()),
        ("init", m.init.to_string()),
        ("seed", m.seed.to_string()),
        ("weights", m.weights.to_string()),
        ("pool_size", m.pool_size.to_string()),
        ("bn", m.bn.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let run = args.config(None).map_err(|e| format!("{e:#}"));
    let material = match &run {
        Ok(cfg) => cfg.identity().to_string(),
        Err(_) => describe.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
    };
    let key = Sha256::digest(material.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    SweepPoint { key, describe, run }
}
