//! `cnnprobe extract`: the first half of `run`, features written to files.
use crate::config::ExtractJob;
use crate::features::{extract_features, store};
use crate::util::names::value_name;
use anyhow::Result;

pub fn extract(job: &ExtractJob) -> Result<()> {
    let device = job.extract.compute.setup()?;
    job.extract.check_precision(device)?;
    let set = extract_features(&job.extract, device)?;
    store::write(&job.dir, &set, job.format)?;
    eprintln!("features → {} ({})", job.dir.display(), value_name(&job.format));
    Ok(())
}
