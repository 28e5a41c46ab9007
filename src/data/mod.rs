//! Datasets: images as uint8 NCHW tensors on the CPU plus int64 labels, held in memory
//! (CIFAR) or decoded from files batch by batch (image folders). Conversion to float and
//! normalisation happen batch by batch on the extraction device.
pub mod cifar;
pub mod download;
pub mod folder;
pub mod normalize;
pub mod source;
pub mod split;
pub mod stream;
pub mod whiten;

pub use normalize::InputNorm;
pub use source::{DataConfig, DatasetName, LabelSet};

use anyhow::Result;
use std::ops::Range;
use tch::Tensor;

/// One split of a dataset.
pub struct Split {
    /// uint8, shape (N, 3, H, W).
    pub images: Tensor,
    /// int64, shape (N,).
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A split's images: in memory, or files decoded when a batch is asked for.
#[derive(Clone)]
pub enum Source {
    Memory(std::rc::Rc<Split>),
    Files(folder::FileSplit),
}

impl Source {
    pub fn len(&self) -> usize {
        match self {
            Source::Memory(s) => s.len(),
            Source::Files(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (height, width) of the images.
    pub fn image_size(&self) -> (i64, i64) {
        match self {
            Source::Memory(s) => (s.images.size()[2], s.images.size()[3]),
            Source::Files(f) => (f.size.1 as i64, f.size.0 as i64),
        }
    }

    /// Items `range` of the source (`--limit`, `--shard`).
    pub fn slice(&self, range: Range<usize>) -> Source {
        match self {
            Source::Memory(s) => {
                let start = range.start.min(s.len()) as i64;
                let len = (range.end.min(s.len()) as i64 - start).max(0);
                Source::Memory(std::rc::Rc::new(Split {
                    images: s.images.narrow(0, start, len),
                    labels: s.labels.narrow(0, start, len),
                }))
            }
            Source::Files(f) => Source::Files(f.slice(range)),
        }
    }

    /// The items `idx`, as one batch (unreadable files skipped under `--skip-bad-images`).
    pub fn get(&self, idx: &[usize]) -> Result<Split> {
        match self {
            Source::Memory(s) => {
                let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
                Ok(Split { images: s.images.index_select(0, &i), labels: s.labels.index_select(0, &i) })
            }
            Source::Files(f) => f.get(idx),
        }
    }

    /// Consecutive batches of `size` items in order; files are decoded by `workers` threads
    /// ahead of use, a bounded number of batches at a time.
    pub fn batches(&self, size: usize, workers: usize) -> Box<dyn Iterator<Item = Result<Split>>> {
        let (n, size) = (self.len(), size.max(1));
        let range = move |k: usize| (k * size)..((k + 1) * size).min(n);
        match self {
            Source::Memory(s) => {
                let s = s.clone();
                Box::new((0..n.div_ceil(size)).map(move |k| {
                    let r = range(k);
                    let (start, len) = (r.start as i64, r.len() as i64);
                    Ok(Split { images: s.images.narrow(0, start, len), labels: s.labels.narrow(0, start, len) })
                }))
            }
            Source::Files(_) => self.batches_of((0..n).collect(), size, workers),
        }
    }

    /// Batches of the items `idx`, in that order, decoded ahead by `workers` threads.
    pub fn batches_of(&self, idx: Vec<usize>, size: usize, workers: usize) -> Box<dyn Iterator<Item = Result<Split>>> {
        let (idx, size) = (std::sync::Arc::new(idx), size.max(1));
        let count = idx.len().div_ceil(size);
        match self {
            Source::Memory(_) => {
                let s = self.clone();
                Box::new((0..count).map(move |k| s.get(&idx[k * size..((k + 1) * size).min(idx.len())])))
            }
            Source::Files(f) => {
                let f = f.clone();
                let job = move |k: usize| f.get(&idx[k * size..((k + 1) * size).min(idx.len())]);
                Box::new(stream::Ordered::new(count, workers, 2 * workers.max(1), job))
            }
        }
    }

    /// Images skipped as unreadable so far.
    pub fn skipped(&self) -> usize {
        match self {
            Source::Memory(_) => 0,
            Source::Files(f) => f.skipped(),
        }
    }
}

/// A dataset with its standard train/test split.
pub struct Dataset {
    pub name: String,
    pub class_names: Vec<String>,
    pub train: Source,
    pub test: Source,
}

impl Dataset {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}
