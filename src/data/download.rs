//! Download, verification and extraction of the official CIFAR archives.
//!
//! The archive is streamed to a temp name beside its final place, its md5 computed on the
//! way, and renamed only when complete and verified. It is then unpacked into a temp dir and
//! the dataset folder renamed into place, so an interrupted run never leaves a folder that
//! a later run would trust.
use super::cifar::Cifar;
use crate::util::fetch::{self, Checksum};
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Where the dataset authors publish the binary archives.
pub const OFFICIAL_MIRROR: &str = "https://www.cs.toronto.edu/~kriz/";

/// Archive file name and its md5 as published on the CIFAR page.
pub fn archive(which: Cifar) -> (&'static str, &'static str) {
    match which {
        Cifar::Ten => ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
        _ => ("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"),
    }
}

/// Returns the extracted dataset folder under `data_dir`, downloading and extracting the
/// archive first when needed. `mirror` replaces the official base URL (http(s):// or
/// file://); `md5` replaces the official checksum (for a private, repacked mirror).
pub fn ensure_cifar(data_dir: &Path, which: Cifar, mirror: Option<&str>, md5: Option<&str>) -> Result<PathBuf> {
    let folder = data_dir.join(which.folder_name());
    if folder.join(which.train_files()[0]).is_file() {
        return Ok(folder);
    }
    fs::create_dir_all(data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let (name, official_md5) = archive(which);
    let expected = md5.unwrap_or(official_md5).to_ascii_lowercase();
    let archive_path = data_dir.join(name);
    let url = format!("{}/{name}", mirror.unwrap_or(OFFICIAL_MIRROR).trim_end_matches('/'));
    if !archive_path.is_file() {
        fetch::download(&url, &archive_path, &Checksum::Md5(expected.clone())).map_err(|e| {
            e.context(format!(
                "{} is not available offline: place {name} (md5 {expected}) at {}, or pass --data DIR with an extracted {} folder",
                which.display_name(),
                archive_path.display(),
                which.folder_name()
            ))
        })?;
    } else {
        let got = fetch::md5_file(&archive_path)?;
        if got != expected {
            bail!(
                "{} has md5 {got}, expected {expected}: the file is corrupt or incomplete; delete it and run again",
                archive_path.display()
            );
        }
    }
    extract(&archive_path, data_dir, which.folder_name())?;
    Ok(folder)
}

/// Unpacks `archive` in a temp dir under `data_dir` and renames its `folder` into place.
fn extract(archive: &Path, data_dir: &Path, folder: &str) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".extract.")
        .tempdir_in(data_dir)
        .with_context(|| format!("cannot create a temp dir in {}", data_dir.display()))?;
    let f = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(f))
        .unpack(tmp.path())
        .with_context(|| format!("cannot extract {}", archive.display()))?;
    let inner = tmp.path().join(folder);
    if !inner.is_dir() {
        bail!("{} does not contain the folder {folder}", archive.display());
    }
    fs::rename(&inner, data_dir.join(folder))
        .with_context(|| format!("cannot move {folder} into {}", data_dir.display()))?;
    Ok(())
}
