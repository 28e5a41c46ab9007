//! Readers for the official CIFAR-10 and CIFAR-100 binary files.
//!
//! A CIFAR-10 record is 1 label byte + 3072 pixel bytes (R, G, B planes of 32×32);
//! CIFAR-100 has 2 label bytes (coarse, fine) first. The record count comes from the file
//! size, so small fixture files work.
use super::{Dataset, Source, Split};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::Tensor;

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR, and for CIFAR-100 which label set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar {
    Ten,
    HundredFine,
    HundredCoarse,
}

impl Cifar {
    /// Name of the folder inside the official archive.
    pub fn folder_name(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar-10-batches-bin",
            _ => "cifar-100-binary",
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Cifar::Ten => "CIFAR-10",
            _ => "CIFAR-100",
        }
    }

    pub fn train_files(self) -> &'static [&'static str] {
        match self {
            Cifar::Ten => {
                &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"]
            }
            _ => &["train.bin"],
        }
    }

    pub fn test_files(self) -> &'static [&'static str] {
        match self {
            Cifar::Ten => &["test_batch.bin"],
            _ => &["test.bin"],
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            _ => 2,
        }
    }

    /// Offset of the label byte we use inside a record.
    fn label_offset(self) -> usize {
        match self {
            Cifar::HundredFine => 1,
            _ => 0,
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::HundredFine => 100,
            Cifar::HundredCoarse => 20,
        }
    }

    fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }
}

/// Finds the folder holding the binary files: `data` itself or `data/<archive folder>`.
pub fn locate(data: &Path, which: Cifar) -> Result<PathBuf> {
    ensure!(data.exists(), "data dir {} does not exist", data.display());
    ensure!(data.is_dir(), "data dir {} is not a directory", data.display());
    let first = which.train_files()[0];
    for dir in [data.to_path_buf(), data.join(which.folder_name())] {
        if dir.join(first).is_file() {
            return Ok(dir);
        }
    }
    let empty = std::fs::read_dir(data).map(|mut d| d.next().is_none()).unwrap_or(false);
    if empty {
        bail!("data dir {} is empty: expected {} binary files ({first} …)", data.display(), which.display_name());
    }
    bail!(
        "no {} binary files in {}: expected {first} there or in {}",
        which.display_name(),
        data.display(),
        data.join(which.folder_name()).display()
    )
}

/// Reads the train and test files of `which` from `dir` (see `locate`).
pub fn load(dir: &Path, which: Cifar) -> Result<Dataset> {
    let train = read_files(dir, which.train_files(), which)?;
    let test = read_files(dir, which.test_files(), which)?;
    Ok(Dataset {
        name: match which {
            Cifar::Ten => "cifar10".into(),
            _ => "cifar100".into(),
        },
        class_names: class_names(dir, which),
        train: Source::Memory(Rc::new(train)),
        test: Source::Memory(Rc::new(test)),
    })
}

fn read_files(dir: &Path, names: &[&str], which: Cifar) -> Result<Split> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in names {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        parse_records(&path, &bytes, which, &mut pixels, &mut labels)?;
    }
    let n = labels.len() as i64;
    Ok(Split { images: Tensor::from_slice(&pixels).view([n, 3, 32, 32]), labels: Tensor::from_slice(&labels) })
}

/// Appends the records of one file. Errors name the file and the record.
pub fn parse_records(
    path: &Path,
    bytes: &[u8],
    which: Cifar,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    let rec = which.record_len();
    ensure!(!bytes.is_empty(), "{}: file is empty (expected {rec}-byte records)", path.display());
    if !bytes.len().is_multiple_of(rec) {
        bail!(
            "{}: size {} is not a whole number of {rec}-byte records (truncated or padded? record {} is incomplete)",
            path.display(),
            bytes.len(),
            bytes.len() / rec
        );
    }
    let classes = which.num_classes();
    pixels.reserve(bytes.len() / rec * PIXELS);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let y = r[which.label_offset()] as usize;
        if y >= classes {
            bail!("{}: record {i} has label {y}, outside the {classes} classes 0..{}", path.display(), classes - 1);
        }
        labels.push(y as i64);
        pixels.extend_from_slice(&r[which.label_bytes()..]);
    }
    Ok(())
}

/// Class names from the archive's meta file when present, else CIFAR-10's known names or
/// `class_N`.
fn class_names(dir: &Path, which: Cifar) -> Vec<String> {
    let meta = match which {
        Cifar::Ten => "batches.meta.txt",
        Cifar::HundredFine => "fine_label_names.txt",
        Cifar::HundredCoarse => "coarse_label_names.txt",
    };
    if let Ok(text) = std::fs::read_to_string(dir.join(meta)) {
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if names.len() == which.num_classes() {
            return names;
        }
    }
    if which == Cifar::Ten {
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
            .map(String::from)
            .to_vec();
    }
    (0..which.num_classes()).map(|i| format!("class_{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(labels: &[u8], which: Cifar) -> Vec<u8> {
        let mut out = Vec::new();
        for &y in labels {
            match which {
                Cifar::Ten => out.push(y),
                _ => out.extend_from_slice(&[y % 20, y]),
            }
            out.extend(std::iter::repeat_n(y, PIXELS));
        }
        out
    }

    #[test]
    fn parses_cifar10_and_both_cifar100_label_sets() {
        let (mut px, mut ys) = (vec![], vec![]);
        parse_records(Path::new("f"), &records(&[3, 7], Cifar::Ten), Cifar::Ten, &mut px, &mut ys).unwrap();
        assert_eq!(ys, vec![3, 7]);
        assert_eq!(px.len(), 2 * PIXELS);
        assert_eq!(px[PIXELS], 7);

        let bytes = records(&[42, 99], Cifar::HundredFine);
        let (mut px, mut ys) = (vec![], vec![]);
        parse_records(Path::new("f"), &bytes, Cifar::HundredFine, &mut px, &mut ys).unwrap();
        assert_eq!(ys, vec![42, 99]);
        let (mut px, mut ys) = (vec![], vec![]);
        parse_records(Path::new("f"), &bytes, Cifar::HundredCoarse, &mut px, &mut ys).unwrap();
        assert_eq!(ys, vec![2, 19]);
    }

    #[test]
    fn truncated_and_bad_label_name_file_and_record() {
        let mut bytes = records(&[1, 2, 3], Cifar::Ten);
        bytes.truncate(bytes.len() - 5);
        let err = parse_records(Path::new("x.bin"), &bytes, Cifar::Ten, &mut vec![], &mut vec![]).unwrap_err();
        assert!(err.to_string().contains("x.bin") && err.to_string().contains("record 2 is incomplete"), "{err}");

        let bytes = records(&[1, 12, 3], Cifar::Ten);
        let err = parse_records(Path::new("y.bin"), &bytes, Cifar::Ten, &mut vec![], &mut vec![]).unwrap_err();
        assert_eq!(err.to_string(), "y.bin: record 1 has label 12, outside the 10 classes 0..9");
    }
}
