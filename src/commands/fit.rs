//! `cnnprobe fit`: the second half of `run`, on features exported by `extract`.
use super::run::probe_and_report;
use crate::config::FitConfig;
use crate::features::store;
use crate::report::{self, Outcome};
use crate::util::memory;
use anyhow::{bail, Result};
use std::path::Path;

pub fn fit(cfg: &FitConfig) -> Result<Outcome> {
    let device = cfg.compute.setup()?;
    check_memory(&cfg.features)?;
    let mut set = store::read(&cfg.features)?;
    let short = set
        .provenance
        .iter()
        .filter(|(k, _)| ["dataset", "arch", "stem"].contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join("-");
    let run_dir = report::create_run_dir(cfg.output.out.as_deref(), &format!("fit-{short}-s{}", cfg.probe.seed))?;
    report::write_config(&run_dir, "fit", cfg, &set.provenance)?;
    probe_and_report(&mut set, &cfg.probe, &cfg.output, device, &run_dir)
}

/// The probe holds the features and, at its peak, copies of them (the fit/validation rows,
/// their standardised copy, the solver's buffers): say so before reading a matrix that
/// cannot fit.
fn check_memory(dir: &Path) -> Result<()> {
    let m = store::manifest(dir)?;
    let (features, need) = (store::memory_bytes(&m), store::memory_bytes(&m) * FIT_MEMORY_FACTOR + FIT_MEMORY_BASE);
    match memory::available_bytes() {
        Some(avail) if need > avail => bail!(
            "{}: the features take {} in memory and the probe needs about {} at its peak, but {} is \
             available: fit fewer rows (extract again with --limit N), fewer or smaller taps \
             (--features, --pool-size), or on a machine with more memory",
            dir.display(),
            memory::gb(features),
            memory::gb(need),
            memory::gb(avail)
        ),
        _ => Ok(()),
    }
}

/// Peak memory of a fit: a base (libtorch, the process) plus a multiple of the features'
/// size. Measured on 10k×4096 CIFAR-10 features with the L-BFGS probe: 0.53 GB for a tiny
/// export, 1.09 GB for that 0.16 GB one (×3.4), rounded up.
const FIT_MEMORY_FACTOR: u64 = 4;
const FIT_MEMORY_BASE: u64 = 512 << 20;
