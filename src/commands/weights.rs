//! `cnnprobe weights`: torchvision's checkpoint for each architecture — file name, URL, and
//! whether torch.hub's cache holds it — so an offline user knows what to place where.
//! `--verify` hashes each cached file against the sha256 prefix in its name.
use crate::config::WeightsJob;
use crate::models::{pretrained, Arch};
use crate::util::digest::file_sha256;
use anyhow::{bail, Result};
use clap::ValueEnum;

pub fn list(job: &WeightsJob) -> Result<()> {
    let dir = pretrained::hub_checkpoints_dir();
    println!("torch.hub cache: {} ($TORCH_HOME/hub/checkpoints)", dir.display());
    println!("{:<10} {:<24} {:<9} url", "arch", "file", "cached");
    let mut bad = Vec::new();
    for &arch in Arch::value_variants() {
        let Some(file) = pretrained::checkpoint_file(arch) else { continue };
        if job.arch.is_some_and(|a| a != arch) {
            continue;
        }
        let path = dir.join(file);
        let state = match (path.is_file(), job.verify) {
            (false, _) => "missing".to_string(),
            (true, false) => "yes".into(),
            (true, true) => {
                let want = pretrained::sha256_prefix(file);
                if file_sha256(&path)?.starts_with(want) {
                    "verified".into()
                } else {
                    bad.push(path.display().to_string());
                    "CORRUPT".into()
                }
            }
        };
        println!("{:<10} {:<24} {:<9} {}", arch.name(), file, state, pretrained::url(file, job.mirror.as_deref()));
    }
    if !bad.is_empty() {
        bail!("sha256 does not match the file name: {} (delete and download again)", bad.join(", "));
    }
    Ok(())
}
