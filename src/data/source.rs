//! Which dataset a run reads, where its files are, and how they are loaded: the one place
//! that turns a `DataConfig` into images and labels.
use super::cifar::{self, Cifar};
use super::normalize::{self, ChannelStats, InputNorm};
use super::{download, folder, Dataset, Source};
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
    /// Folder datasets: resize the shorter side, then centre-crop to `folder_size`.
    /// (Left out of the JSON when off, so settings from before it keep their cache keys.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub center_crop: bool,
    /// Only this part of each split (after `limit`): `extract --shard K/N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Threads decoding folder images ahead of the extractor.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `--shard K/N`: the K-th of N contiguous, equal (±1) parts of each split, so shards
/// concatenated in order are exactly the unsharded rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The rows of an `n`-item split this shard holds.
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        (n * self.index / self.count)..(n * (self.index + 1) / self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = s.split_once('/').and_then(|(k, n)| Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Shard { index, count }),
            _ => Err(format!("'{s}': use K/N with 0 <= K < N (e.g. 0/4)")),
        }
    }
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

    /// Both splits, cut to `--limit` images each; the whole of each (for statistics and
    /// BatchNorm calibration) and the part this run extracts (`--shard`).
    pub fn load(&self) -> Result<(Dataset, Source, Source)> {
        let dir = self.dir()?;
        let mut dataset = if self.dataset == DatasetName::Folder {
            let opts = folder::FolderOptions {
                size: self.folder_size.map(|s| s as u32),
                center_crop: self.center_crop,
                skip_bad: self.skip_bad_images,
            };
            let (class_names, train, test) = folder::open(&dir, opts)?;
            Dataset { name: "folder".into(), class_names, train: Source::Files(train), test: Source::Files(test) }
        } else {
            cifar::load(&dir, self.cifar())?
        };
        if let Some(n) = self.limit {
            dataset.train = dataset.train.slice(0..n);
            dataset.test = dataset.test.slice(0..n);
        }
        let part = |s: &Source| match self.shard {
            Some(shard) => s.slice(shard.range(s.len())),
            None => s.clone(),
        };
        let (train, test) = (part(&dataset.train), part(&dataset.test));
        Ok((dataset, train, test))
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

    /// The input normalisation statistics: ImageNet's, or the dataset's own (for a folder:
    /// of a seeded sample of up to 10,000 of its train images, whatever the shard, so a
    /// million-image folder is not decoded twice and every shard computes the same).
    pub fn stats(&self, norm: InputNorm, dataset: &Dataset) -> Result<ChannelStats> {
        Ok(match (norm, self.dataset) {
            (InputNorm::Imagenet, _) => normalize::IMAGENET,
            (InputNorm::Dataset, DatasetName::Cifar10) => normalize::CIFAR10,
            (InputNorm::Dataset, DatasetName::Cifar100) => normalize::CIFAR100,
            (InputNorm::Dataset, DatasetName::Folder) => {
                let n = dataset.train.len();
                let mut idx = super::split::permutation(n, 0x57A7_5EED);
                idx.truncate(STATS_SAMPLE);
                idx.sort_unstable();
                let bar = crate::util::progress::images(idx.len() as u64, "statistics");
                let batches = dataset.train.batches_of(idx, 256, self.workers).inspect(|b| {
                    if let Ok(b) = b {
                        bar.inc(b.len() as u64)
                    }
                });
                let stats = folder::channel_stats(batches)?;
                bar.finish_and_clear();
                stats
            }
        })
    }
}

/// Train images a folder's own normalisation statistics are estimated from (the mean and
/// std of 10,000 of CIFAR-10's 50,000 train images are within 0.6% of the whole split's).
pub const STATS_SAMPLE: usize = 10_000;

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
