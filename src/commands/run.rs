//! `cnnprobe run`: features (from the cache when possible) → probe → run directory and
//! summary row. `compare` and `sweep` are made of such runs; `fit` shares the second half.
use crate::config::RunConfig;
use crate::features::{cache, extract_features, FeatureSet};
use crate::probe::{self, ProbeConfig};
use crate::report::{self, Outcome, OutputConfig};
use anyhow::Result;
use std::path::Path;
use tch::Device;

pub fn run(cfg: &RunConfig) -> Result<Outcome> {
    let device = cfg.extract.compute.setup()?;
    cfg.extract.check_precision(device)?;
    let mut set = match &cfg.output.cache_dir {
        // Lean rows (bf16, views merged) are made for one kernel fit, not kept.
        Some(_) if cfg.extract.lean => {
            eprintln!("features: --kernel-precision bf16-lean, extracted without the cache");
            extract_features(&cfg.extract, device)?
        }
        Some(dir) => cache::features(&cfg.extract, device, dir)?,
        None => extract_features(&cfg.extract, device)?,
    };
    set.label("preset", cfg.output.preset.as_deref());
    let run_dir = report::create_run_dir(cfg.output.out.as_deref(), &cfg.extract.short_name())?;
    report::write_config(&run_dir, "run", cfg, &set.provenance)?;
    probe_and_report(&mut set, &cfg.probe, &cfg.output, device, &run_dir)
}

/// The probe on `set`, then the run directory's files and the summary row.
pub fn probe_and_report(
    set: &mut FeatureSet,
    probe: &ProbeConfig,
    output: &OutputConfig,
    device: Device,
    run_dir: &Path,
) -> Result<Outcome> {
    set.label("tag", output.tag.as_deref());
    let eval = probe::evaluate(set, probe, device)?;
    report::write_run(run_dir, set, &eval, probe, output)
}
