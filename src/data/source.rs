//! Which dataset a run reads, where its files are, and how they are loaded: the one place
//! that turns a `DataConfig` into images and labels.
use super::cifar::{self, Cifar};
use super::normalize::{self, ChannelStats, InputNorm};
use super::{download, folder, Dataset};
use crate::util::digest;
use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    Cifar10,
    Cifar100,
    /// torchvision ImageFolder layout: DIR/train/<class>/*, DIR/test/<class>/* (JPEG/PNG).
    Folder,
}

/// CIFAR-100 label set (ignored for CIFAR-10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSet {
    Fine,
    Coarse,
}

/// Where the data comes from.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DataConfig {
    pub dataset: DatasetName,
    pub labels: LabelSet,
    /// An extracted dataset folder (or its parent); `None` means download into `data_dir`.
    pub data: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub mirror: Option<String>,
    pub archive_md5: Option<String>,
    /// Keep only the first N images of each split.
    pub limit: Option<usize>,
    /// Folder datasets: skip unreadable images with a warning.
    pub skip_bad_images: bool,
    /// Folder datasets: resize to this size at load time (when --input-size was given).
    pub folder_size: Option<usize>,
}

impl DataConfig {
    pub fn dataset_name(&self) -> &'static str {
        match self.dataset {
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
            DatasetName::Folder => "folder",
        }
    }

    /// "fine"/"coarse" for CIFAR-100, empty for CIFAR-10.
    pub fn labels_name(&self) -> &'static str {
        match (self.dataset, self.labels) {
            (DatasetName::Cifar10 | DatasetName::Folder, _) => "",
            (_, LabelSet::Fine) => "fine",
            (_, LabelSet::Coarse) => "coarse",
        }
    }

    /// For directory names: `cifar100c` for the coarse labels.
    pub fn short_name(&self) -> &'static str {
        match (self.dataset, self.labels) {
            (DatasetName::Cifar100, LabelSet::Coarse) => "cifar100c",
            _ => self.dataset_name(),
        }
    }

    fn cifar(&self) -> Cifar {
        match (self.dataset, self.labels) {
            (DatasetName::Cifar10 | DatasetName::Folder, _) => Cifar::Ten,
            (DatasetName::Cifar100, LabelSet::Fine) => Cifar::HundredFine,
            (DatasetName::Cifar100, LabelSet::Coarse) => Cifar::HundredCoarse,
        }
    }

    /// The folder holding the dataset's files (downloaded first when needed).
    pub fn dir(&self) -> Result<PathBuf> {
        if self.dataset == DatasetName::Folder {
            let d = self.data.clone().context("--dataset folder needs --data DIR")?;
            anyhow::ensure!(d.is_dir(), "--data: data dir {} does not exist", d.display());
            return Ok(d);
        }
        match &self.data {
            Some(d) => cifar::locate(d, self.cifar()).context("--data"),
            None => download::ensure_cifar(
                &self.data_dir,
                self.cifar(),
                self.mirror.as_deref(),
                self.archive_md5.as_deref(),
            ),
        }
    }

    /// Both splits, cut to `--limit` images each.
    pub fn load(&self) -> Result<Dataset> {
        let dir = self.dir()?;
        let mut dataset = if self.dataset == DatasetName::Folder {
            let opts =
                folder::FolderOptions { size: self.folder_size.map(|s| s as u32), skip_bad: self.skip_bad_images };
            folder::load(&dir, &opts)?
        } else {
            cifar::load(&dir, self.cifar())?
        };
        if let Some(n) = self.limit {
            for split in [&mut dataset.train, &mut dataset.test] {
                let n = (n as i64).min(split.labels.size()[0]);
                split.images = split.images.narrow(0, 0, n);
                split.labels = split.labels.narrow(0, 0, n);
            }
        }
        Ok(dataset)
    }

    /// The data files a run reads: the split files of CIFAR, every file under a folder.
    pub fn files(&self) -> Result<(PathBuf, Vec<PathBuf>)> {
        let dir = self.dir()?;
        let files = if self.dataset == DatasetName::Folder {
            let mut all = Vec::new();
            walk(&dir, &mut all);
            all
        } else {
            let c = self.cifar();
            c.train_files().iter().chain(c.test_files()).map(|f| dir.join(f)).collect()
        };
        Ok((dir, files))
    }

    /// A digest of the data's content (not of names or modification times), memoised per
    /// file under the cache folder so unchanged files are hashed once.
    pub fn digest(&self) -> Result<String> {
        let (dir, files) = self.files()?;
        let key = digest::hex(&Sha256::digest(dir.canonicalize().unwrap_or(dir.clone()).to_string_lossy().as_bytes()));
        let memo =
            crate::util::files::cache_home().join("cnnprobe").join("digests").join(format!("{}.tsv", &key[..16]));
        digest::folder_digest(&dir, &files, Some(&memo))
    }

    /// The input normalisation statistics: ImageNet's, or the dataset's own.
    pub fn stats(&self, norm: InputNorm, dataset: &Dataset) -> ChannelStats {
        match (norm, self.dataset) {
            (InputNorm::Imagenet, _) => normalize::IMAGENET,
            (InputNorm::Dataset, DatasetName::Cifar10) => normalize::CIFAR10,
            (InputNorm::Dataset, DatasetName::Cifar100) => normalize::CIFAR100,
            // A folder's own train statistics.
            (InputNorm::Dataset, DatasetName::Folder) => folder::channel_stats(&dataset.train.images),
        }
    }
}

/// `~/.cache/cnnprobe/data` (under $XDG_CACHE_HOME when set): where datasets are downloaded.
pub fn default_data_dir() -> PathBuf {
    crate::util::files::cache_home().join("cnnprobe").join("data")
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
