//! The `extract` and `fit` commands: `run` split at the feature files.
use crate::cli::{run_config, ExtractArgs, FitArgs, OutputArgs, ProbeArgs};
use crate::config::RunConfig;
use crate::export::FeatureFormat;
use crate::probe::ProbeSettings;
use crate::{export, pipeline, report};
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The run config of an extraction (probe settings at their defaults, unused).
pub fn extract_config(args: &ExtractArgs) -> Result<RunConfig> {
    let probe = ProbeArgs::defaults();
    let output = OutputArgs {
        out: None,
        summary: PathBuf::from("results/summary.csv"),
        cache_dir: None,
        no_cache: true,
        tag: None,
    };
    run_config(&args.data, &args.model, &probe, &output)
}

pub fn extract(cfg: &RunConfig, dir: &Path, format: FeatureFormat) -> Result<()> {
    let device = pipeline::setup_compute(&cfg.device, cfg.threads)?;
    pipeline::check_precision(cfg, device)?;
    let set = pipeline::extract_features(cfg, device)?;
    export::write(dir, &set, format)?;
    eprintln!("features → {} ({format:?})", dir.display());
    Ok(())
}

/// What `fit` records in config.json.
#[derive(Serialize)]
struct FitConfig<'a> {
    features: &'a Path,
    device: &'a str,
    threads: usize,
    val_fraction: f64,
    probe: &'a ProbeSettings,
    save_head: Option<&'a Path>,
}

pub fn fit(args: &FitArgs) -> Result<()> {
    let threads = args.compute.threads();
    let device = pipeline::setup_compute(&args.compute.device, threads)?;
    let mut set = export::read(&args.features)?;
    report::label(&mut set.provenance, "tag", args.output.tag.as_deref());
    let probe = args.probe.settings(args.seed);
    let short = set
        .provenance
        .iter()
        .filter(|(k, _)| ["dataset", "arch", "stem"].contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join("-");
    let run_dir = report::create_run_dir(args.output.out.as_deref(), &format!("fit-{short}-s{}", args.seed))?;
    let cfg = FitConfig {
        features: &args.features,
        device: &args.compute.device,
        threads,
        val_fraction: args.probe.val_fraction,
        probe: &probe,
        save_head: args.probe.save_head.as_deref(),
    };
    report::write_json(&run_dir.join("config.json"), &cfg)?;
    pipeline::probe_and_report(
        &set,
        &probe,
        args.probe.val_fraction,
        args.probe.save_head.as_deref(),
        device,
        &run_dir,
        &args.output.summary,
    )?;
    Ok(())
}
