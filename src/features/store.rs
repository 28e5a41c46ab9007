//! Feature files: what `extract` writes and `fit` reads back. A directory holds the
//! features in one format plus `features.json` (how they were made, class names). Every
//! file is written under a temp name and renamed when complete; features.json is written
//! last, so a directory without it is an unfinished export and is never read.
use super::extract::{first_non_finite, Features};
use super::npy::{read_npy, write_npy};
use super::set::{FeatureSet, PARTS};
use crate::util::digest::file_sha256;
use crate::util::files::{write_atomic, write_json};
use crate::util::{interrupt, progress};
use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// On-disk formats of exported features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureFormat {
    /// `split,index,label,f0,…` rows, streamed.
    Csv,
    /// numpy: <split>_features.npy (float32) and <split>_labels.npy (int64).
    Npy,
    /// One file with train_features, train_labels, test_features, test_labels
    /// (and train_flip_* / test_flip_* with --hflip / --hflip-test).
    Safetensors,
}

/// features.json.
#[derive(Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: FeatureFormat,
    pub n_train: i64,
    pub n_test: i64,
    /// Whether horizontally flipped train images were extracted too (`train_flip`, rows
    /// aligned with `train`).
    #[serde(default)]
    pub hflip: bool,
    /// Whether the flipped test images were extracted too (`test_flip`).
    #[serde(default)]
    pub hflip_test: bool,
    pub feature_dim: i64,
    pub class_names: Vec<String>,
    /// Summary columns describing the extraction (dataset, arch, seed, …).
    pub provenance: Vec<(String, String)>,
    pub cnnprobe_version: String,
    /// sha256 of each data file, verified before the file is parsed. Absent in exports
    /// written before 0.2 (read with a warning).
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    /// Set by `extract --shard K/N`: which part this is, and what its shards must share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
}

/// A shard's place among its siblings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub count: usize,
    /// sha256 of the data, the weights and every setting that changes features, the shard
    /// itself excepted: shards merge only when theirs are equal.
    pub settings: String,
}

/// The data files of a feature directory in `format` holding `parts`.
pub fn file_names(format: FeatureFormat, parts: &[&str]) -> Vec<String> {
    match format {
        FeatureFormat::Npy => {
            parts.iter().flat_map(|p| [format!("{p}_features.npy"), format!("{p}_labels.npy")]).collect()
        }
        FeatureFormat::Safetensors => vec!["features.safetensors".into()],
        FeatureFormat::Csv => vec!["features.csv".into()],
    }
}

/// Checks every data file against features.json's sha256 before anything parses it, so
/// a damaged file of the right size is an error naming it, never a silent set of numbers.
fn verify(dir: &Path, m: &Manifest, names: &[String]) -> Result<()> {
    verify_quietly(dir, m, names, true)
}

fn verify_quietly(dir: &Path, m: &Manifest, names: &[String], say: bool) -> Result<()> {
    if m.sha256.is_empty() {
        eprintln!(
            "warning: {}: features.json has no checksums (written before cnnprobe 0.2); not verified",
            dir.display()
        );
        return Ok(());
    }
    let start = std::time::Instant::now();
    let mut bytes = 0;
    for name in names {
        let path = dir.join(name);
        bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let want =
            m.sha256.get(name).with_context(|| format!("{}: features.json has no checksum for it", path.display()))?;
        let got = file_sha256(&path)?;
        ensure!(
            &got == want,
            "{}: checksum mismatch (sha256 {}…, features.json says {}…): the file is damaged or was changed",
            path.display(),
            &got[..12],
            &want[..12.min(want.len())]
        );
    }
    if !say {
        return Ok(());
    }
    eprintln!(
        "features: {} verified ({:.0} MB, {:.2} s)",
        names.join(", "),
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn write(dir: &Path, set: &FeatureSet, format: FeatureFormat) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--output {}: cannot create the directory", dir.display()))?;
    // A stale manifest must not vouch for the files we are about to replace.
    let _ = std::fs::remove_file(dir.join("features.json"));
    match format {
        FeatureFormat::Npy => {
            for (name, f) in set.parts() {
                write_npy(&dir.join(format!("{name}_features.npy")), &f.x)?;
                write_npy(&dir.join(format!("{name}_labels.npy")), &f.y)?;
            }
        }
        FeatureFormat::Safetensors => {
            let named: Vec<(String, Tensor)> = set
                .parts()
                .into_iter()
                .flat_map(|(n, f)| {
                    [(format!("{n}_features"), f.x.shallow_clone()), (format!("{n}_labels"), f.y.shallow_clone())]
                })
                .collect();
            write_tensor_file(&dir.join("features.safetensors"), |p| Tensor::write_safetensors(&named, p))?;
        }
        FeatureFormat::Csv => write_csv(&dir.join("features.csv"), set)?,
    }
    let names: Vec<&str> = set.parts().iter().map(|(n, _)| *n).collect();
    let start = std::time::Instant::now();
    let sha256 = file_names(format, &names)
        .into_iter()
        .map(|f| Ok((f.clone(), file_sha256(&dir.join(&f))?)))
        .collect::<Result<_>>()?;
    eprintln!("features: checksummed in {:.2} s", start.elapsed().as_secs_f64());
    let manifest = Manifest {
        format,
        n_train: set.train.y.size()[0],
        n_test: set.test.y.size()[0],
        hflip: set.train_flip.is_some(),
        hflip_test: set.test_flip.is_some(),
        feature_dim: set.train.x.size()[1],
        class_names: set.class_names.clone(),
        provenance: set.provenance.clone(),
        cnnprobe_version: crate::VERSION.into(),
        sha256,
        shard: None,
    };
    write_json(&dir.join("features.json"), &manifest)
}

/// Writes through a temp name in the same directory, renamed when complete.
fn write_tensor_file(path: &Path, write: impl FnOnce(&Path) -> Result<(), tch::TchError>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", path.file_name().unwrap_or_default().to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?
        .into_temp_path();
    write(&tmp).with_context(|| format!("cannot write {}", path.display()))?;
    crate::util::files::make_public(&tmp)?;
    tmp.persist(path).with_context(|| format!("cannot move the finished file to {}", path.display()))?;
    Ok(())
}

/// `split,index,label,f0,…,fD-1`, streamed a block of rows at a time (a 50k×2048 export
/// never becomes one string in memory).
fn write_csv(path: &Path, set: &FeatureSet) -> Result<()> {
    let dim = set.train.x.size()[1];
    let total = set.parts().iter().map(|(_, f)| f.y.size()[0] as u64).sum();
    let bar = progress::rows(total, "csv");
    write_atomic(path, |w| {
        let mut c = csv::Writer::from_writer(w);
        let mut header = vec!["split".to_string(), "index".into(), "label".into()];
        header.extend((0..dim).map(|i| format!("f{i}")));
        c.write_record(&header)?;
        let mut buf = String::with_capacity(32);
        for (name, f) in set.parts() {
            let n = f.y.size()[0];
            let labels = Vec::<i64>::try_from(&f.y)?;
            let mut start = 0;
            while start < n {
                interrupt::check()?;
                let len = 1024.min(n - start);
                let block = Vec::<f32>::try_from(f.x.narrow(0, start, len).contiguous().view([-1]))?;
                for (r, row) in block.chunks(dim as usize).enumerate() {
                    let i = start as usize + r;
                    c.write_field(name)?;
                    c.write_field(i.to_string())?;
                    c.write_field(labels[i].to_string())?;
                    for v in row {
                        buf.clear();
                        std::fmt::Write::write_fmt(&mut buf, format_args!("{v}"))?;
                        c.write_field(&buf)?;
                    }
                    c.write_record(None::<&[u8]>)?;
                }
                bar.inc(len as u64);
                start += len;
            }
        }
        c.flush()?;
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// The parts features.json promises, by file-name prefix, with their row counts.
pub fn expected_parts(m: &Manifest) -> Vec<(&'static str, i64)> {
    let mut parts = vec![("train", m.n_train), ("test", m.n_test)];
    if m.hflip {
        parts.push(("train_flip", m.n_train));
    }
    if m.hflip_test {
        parts.push(("test_flip", m.n_test));
    }
    parts
}

/// A feature directory's features.json.
pub fn manifest(dir: &Path) -> Result<Manifest> {
    let manifest_path = dir.join("features.json");
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!("{}: no features.json (not a `cnnprobe extract` directory, or an unfinished export)", dir.display())
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid features.json", manifest_path.display()))
}

/// Bytes the features (float32) and labels of every part take in memory.
pub fn memory_bytes(m: &Manifest) -> u64 {
    expected_parts(m).iter().map(|(_, n)| *n as u64 * (m.feature_dim as u64 * 4 + 8)).sum()
}

/// One part of a directory written by `write` or `Export`, verified without a word (an npy
/// part reads only its own two files).
pub fn read_part(dir: &Path, m: &Manifest, part: &str) -> Result<Features> {
    if m.format != FeatureFormat::Npy {
        let mut set = read(dir)?;
        let mut parts: Vec<(&str, Features)> = vec![("train", set.train), ("test", set.test)];
        parts.extend(set.train_flip.take().map(|f| ("train_flip", f)));
        parts.extend(set.test_flip.take().map(|f| ("test_flip", f)));
        return parts.into_iter().find(|(k, _)| *k == part).map(|(_, f)| f).context("no such part");
    }
    verify_quietly(dir, m, &file_names(m.format, &[part]), false)?;
    let x = read_npy(&dir.join(format!("{part}_features.npy")), Kind::Float)?;
    let y = read_npy(&dir.join(format!("{part}_labels.npy")), Kind::Int64)?;
    let n = expected_parts(m).into_iter().find(|(k, _)| *k == part).map_or(-1, |(_, n)| n);
    ensure!(
        x.size() == [n, m.feature_dim] && y.size() == [n],
        "{}: {part} has shape {:?}, features.json says [{n}, {}]",
        dir.display(),
        x.size(),
        m.feature_dim
    );
    Ok(Features { x, y })
}

/// Reads a directory written by `write`.
pub fn read(dir: &Path) -> Result<FeatureSet> {
    let m = manifest(dir)?;
    let expected = expected_parts(&m);
    let names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    verify(dir, &m, &file_names(m.format, &names))?;
    let mut found: Vec<(&'static str, Features)> = match m.format {
        FeatureFormat::Npy => expected
            .iter()
            .map(|&(s, _)| {
                let x = read_npy(&dir.join(format!("{s}_features.npy")), Kind::Float)?;
                Ok((s, Features { x, y: read_npy(&dir.join(format!("{s}_labels.npy")), Kind::Int64)? }))
            })
            .collect::<Result<_>>()?,
        FeatureFormat::Safetensors => {
            let path = dir.join("features.safetensors");
            let named = Tensor::read_safetensors(&path)
                .with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
            let get = |k: &str| -> Result<Tensor> {
                named
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, t)| t.shallow_clone())
                    .with_context(|| format!("{}: no tensor named {k}", path.display()))
            };
            expected
                .iter()
                .map(|&(s, _)| Ok((s, Features { x: get(&format!("{s}_features"))?, y: get(&format!("{s}_labels"))? })))
                .collect::<Result<_>>()?
        }
        FeatureFormat::Csv => read_csv(&dir.join("features.csv"), m.feature_dim)?,
    };
    let disagree = || anyhow::anyhow!("{}: features.json's hflip/hflip_test disagree with the files", dir.display());
    let mut checked: Vec<(&'static str, Features)> = Vec::new();
    for (name, n) in expected {
        let i = found.iter().position(|(k, _)| *k == name).ok_or_else(disagree)?;
        let (_, f) = found.swap_remove(i);
        let what = format!("{}: {name}", dir.display());
        ensure!(
            f.x.dim() == 2 && f.x.size() == [n, m.feature_dim],
            "{what} features have shape {:?}, features.json says [{n}, {}]",
            f.x.size(),
            m.feature_dim
        );
        ensure!(f.y.size() == [n], "{what} labels have shape {:?}, expected [{n}]", f.y.size());
        ensure!(
            f.x.kind() == Kind::Float && f.y.kind() == Kind::Int64,
            "{what}: expected float32 features and int64 labels"
        );
        let classes = m.class_names.len() as i64;
        let (lo, hi) = (f.y.min().int64_value(&[]), f.y.max().int64_value(&[]));
        ensure!(lo >= 0 && hi < classes, "{what} labels span {lo}..{hi}, outside the {classes} classes");
        // The same health check as extraction: a NaN would make every number after it meaningless.
        if let Some((row, col)) = first_non_finite(&f.x) {
            let file = match m.format {
                FeatureFormat::Npy => format!("{name}_features.npy"),
                FeatureFormat::Safetensors => format!("features.safetensors ({name}_features)"),
                FeatureFormat::Csv => format!("features.csv ({name} rows)"),
            };
            bail!(
                "{}: row {row}, column f{col} is NaN or infinite; feature files must be finite",
                dir.join(file).display()
            );
        }
        checked.push((name, f));
    }
    if !found.is_empty() {
        return Err(disagree());
    }
    let mut take = |name: &str| checked.iter().position(|(k, _)| *k == name).map(|i| checked.swap_remove(i).1);
    let (train, test) = (take("train").expect("always expected"), take("test").expect("always expected"));
    let (train_flip, test_flip) = (take("train_flip"), take("test_flip"));
    Ok(FeatureSet { train, test, train_flip, test_flip, class_names: m.class_names, provenance: m.provenance })
}

/// The parts of a CSV export by its split column: train and test, and the flipped views
/// (`train_flip`, `test_flip` rows) when present.
pub fn read_csv(path: &Path, dim: i64) -> Result<Vec<(&'static str, Features)>> {
    // Flexible: a ragged row is reported by our own check below, with its line.
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let header = rdr.headers().with_context(|| format!("{}: unreadable header", path.display()))?.clone();
    ensure!(
        header.len() as i64 == 3 + dim && &header[0] == "split" && &header[1] == "index" && &header[2] == "label",
        "{}: header must be split,index,label,f0..f{} ({} columns), found {} columns",
        path.display(),
        dim - 1,
        3 + dim,
        header.len()
    );
    let mut xs: [Vec<f32>; PARTS.len()] = Default::default();
    let mut ys: [Vec<i64>; PARTS.len()] = Default::default();
    let mut rec = csv::StringRecord::new();
    let mut line = 1;
    loop {
        line += 1;
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => bail!("{}: line {line}: {e}", path.display()),
        }
        ensure!(
            rec.len() == header.len(),
            "{}: line {line} has {} cells, the header has {}",
            path.display(),
            rec.len(),
            header.len()
        );
        let Some(s) = PARTS.iter().position(|p| *p == &rec[0]) else {
            bail!("{}: line {line}: split '{}' is not train, test, train_flip or test_flip", path.display(), &rec[0])
        };
        let label = rec[2]
            .parse::<i64>()
            .map_err(|_| anyhow::anyhow!("{}: line {line}: label '{}' is not an integer", path.display(), &rec[2]))?;
        ys[s].push(label);
        for (j, cell) in rec.iter().skip(3).enumerate() {
            let v = cell.parse::<f32>().map_err(|_| {
                anyhow::anyhow!("{}: line {line}, column f{j}: '{cell}' is not a number", path.display())
            })?;
            xs[s].push(v);
        }
    }
    let make = |i: usize| {
        let n = ys[i].len() as i64;
        Features { x: Tensor::from_slice(&xs[i]).view([n, dim]), y: Tensor::from_slice(&ys[i]) }
    };
    // Train and test always (possibly empty, which the caller reports); flips when present.
    Ok((0..PARTS.len()).filter(|&i| i < 2 || !ys[i].is_empty()).map(|i| (PARTS[i], make(i))).collect())
}
