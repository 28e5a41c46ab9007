//! Feature cache: `run`, `compare` and `sweep` reuse features extracted before with an
//! identical configuration. The key hashes the dataset files' identity (name, size,
//! modification time) and every setting that changes features; an entry is an `extract`
//! directory (safetensors), renamed into place only when complete. An entry that fails
//! to read is removed and extracted again.
use super::set::{extract_features, ExtractConfig, FeatureSet};
use super::store::{self, FeatureFormat};
use crate::data::DatasetName;
use crate::models::WeightsSource;
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

/// Size and modification time of a file, as part of a key.
fn identity(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            format!("{}:{}:{}", path.display(), m.len(), mtime.map(|d| d.as_nanos()).unwrap_or(0))
        }
        Err(_) => format!("{}:missing", path.display()),
    }
}

/// The cache key of `cfg`'s features on `device`'s kind of hardware.
pub fn key(cfg: &ExtractConfig, data_dir: &Path, device: Device) -> Result<String> {
    let files: Vec<String> = if cfg.data.dataset == DatasetName::Folder {
        // Every image's identity, hashed down to one line.
        let mut all = Vec::new();
        walk(data_dir, &mut all);
        all.sort();
        let mut h = Sha256::new();
        for p in &all {
            h.update(identity(p).as_bytes());
        }
        vec![format!("{} images {:x}", all.len(), h.finalize())]
    } else {
        std::fs::read_dir(data_dir)
            .with_context(|| format!("cannot list {}", data_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .map(|p| identity(&p))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let weights = match &cfg.weights {
        WeightsSource::File(p) => identity(p),
        w => w.to_string(),
    };
    // Everything that changes the numbers, nothing that only changes speed or logs.
    let material = serde_json::json!({
        "files": files,
        "settings": cfg.identity(),
        "weights": weights,
        "device": if device.is_cuda() { "cuda" } else { "cpu" },
        "cnnprobe": crate::VERSION,
    });
    let digest = Sha256::digest(material.to_string().as_bytes());
    Ok(digest.iter().take(10).map(|b| format!("{b:02x}")).collect())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// Features of `cfg`: from the cache when an entry exists, else extracted and stored.
pub fn features(cfg: &ExtractConfig, device: Device, dir: &Path) -> Result<FeatureSet> {
    let data_dir = cfg.data.dir()?;
    let key = key(cfg, &data_dir, device)?;
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
    let mut set = extract_features(cfg, device)?;
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
