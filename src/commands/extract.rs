//! `cnnprobe extract`: the first half of `run`, features written to files as they are made.
use crate::config::ExtractJob;
use crate::features::export::Export;
use crate::features::set::{extract_into, inputs};
use crate::features::{cache, store::ShardInfo};
use crate::util::names::value_name;
use anyhow::Result;

pub fn extract(job: &ExtractJob) -> Result<()> {
    let cfg = &job.extract;
    let device = cfg.compute.setup()?;
    cfg.check_precision(device)?;
    let inputs = inputs(cfg)?;
    let mut export = Export::create(&job.dir, job.format)?;
    if let Some(s) = cfg.data.shard {
        // What every shard of one extraction shares: the cache key of the unsharded run.
        let whole = crate::features::ExtractConfig {
            data: crate::data::DataConfig { shard: None, ..cfg.data.clone() },
            ..cfg.clone()
        };
        export.shard =
            Some(ShardInfo { index: s.index, count: s.count, settings: cache::key(&whole, &inputs, device) });
    }
    let made = extract_into(cfg, device, &inputs, &mut export)?;
    export.finish(made.class_names, made.provenance)?;
    eprintln!("features → {} ({})", job.dir.display(), value_name(&job.format));
    Ok(())
}
