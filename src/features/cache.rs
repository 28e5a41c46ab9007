//! Feature cache: `run`, `compare` and `sweep` reuse features extracted before with an
//! identical configuration. The key hashes the data's content digest, the weights' digest
//! and every setting that changes features; an entry is an `extract` directory
//! (safetensors with its checksum), renamed into place only when complete. An entry that
//! fails to read or to verify is removed and extracted again, with a warning.
use super::set::{extract_with, inputs, ExtractConfig, FeatureSet, Inputs};
use super::store::{self, FeatureFormat};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::Device;

/// Default cache location: $CNNPROBE_CACHE_DIR, else ~/.cache/cnnprobe/features.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("CNNPROBE_CACHE_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => crate::util::files::cache_home().join("cnnprobe").join("features"),
    }
}

/// The cache key of `cfg`'s features from `inputs` on `device`'s kind of hardware.
pub fn key(cfg: &ExtractConfig, inputs: &Inputs, device: Device) -> String {
    // Everything that changes the numbers, nothing that only changes speed or logs.
    let material = serde_json::json!({
        "data": inputs.data_digest,
        "weights": inputs.weights,
        "settings": cfg.identity(),
        "device": if device.is_cuda() { "cuda" } else { "cpu" },
        "cnnprobe": crate::VERSION,
    });
    let digest = Sha256::digest(material.to_string().as_bytes());
    digest.iter().take(10).map(|b| format!("{b:02x}")).collect()
}

/// Features of `cfg`: from the cache when a verified entry exists, else extracted and stored.
pub fn features(cfg: &ExtractConfig, device: Device, dir: &Path) -> Result<FeatureSet> {
    let inputs = inputs(cfg)?;
    let key = key(cfg, &inputs, device);
    let entry = dir.join(&key);
    if entry.join("features.json").is_file() {
        match store::read(&entry) {
            Ok(mut set) => {
                eprintln!("features: cache hit {}", entry.display());
                mark(&mut set, "hit", &key);
                return Ok(set);
            }
            Err(e) => {
                eprintln!("warning: cache entry {} is unreadable ({e:#}); extracting again", entry.display());
                let _ = std::fs::remove_dir_all(&entry);
            }
        }
    }
    let mut set = extract_with(cfg, device, &inputs)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create cache dir {}", dir.display()))?;
    let tmp = tempfile::Builder::new().prefix(&format!(".{key}.")).tempdir_in(dir)?;
    store::write(tmp.path(), &set, FeatureFormat::Safetensors)?;
    // A concurrent run may have stored the same entry first; either copy is complete.
    let staged = tmp.keep();
    crate::util::files::make_public(&staged)?;
    if std::fs::rename(&staged, &entry).is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    mark(&mut set, "miss", &key);
    Ok(set)
}

fn mark(set: &mut FeatureSet, how: &str, key: &str) {
    set.provenance.retain(|(k, _)| k != "cache" && k != "cache_key");
    set.provenance.push(("cache".into(), how.into()));
    set.provenance.push(("cache_key".into(), key.into()));
}
