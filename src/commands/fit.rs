//! `cnnprobe fit`: the second half of `run`, on features exported by `extract`.
use super::run::probe_and_report;
use crate::config::FitConfig;
use crate::features::store;
use crate::report::{self, Outcome};
use anyhow::Result;

pub fn fit(cfg: &FitConfig) -> Result<Outcome> {
    let device = cfg.compute.setup()?;
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
