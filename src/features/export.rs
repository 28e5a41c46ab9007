//! Feature files written as the rows arrive (`extract`, `merge`): memory stays one batch
//! whatever the export's size. Files grow under temp names and are renamed when complete;
//! features.json, with every file's sha256 and the content digest, is written last.
use super::extract::Sink;
use super::npy;
use super::set::PARTS;
use super::store::{file_names, FeatureFormat, Manifest, ShardInfo};
use crate::util::digest::{self, hex};
use crate::util::files::write_json;
use crate::util::progress;
use anyhow::{bail, ensure, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Room kept for the safetensors header, rewritten with the final shapes at the end
/// (JSON may be padded with spaces). Eight parts' entries need under 1 KB.
const SAFETENSORS_HEADER: usize = 4096;
/// A 2-D float32 npy preamble is 128 bytes for any shape below 10^19 rows.
const NPY_PREAMBLE: usize = 128;

/// One finished part.
struct Part {
    name: &'static str,
    rows: i64,
    /// Byte offsets of its features and labels in the safetensors file.
    offsets: [(u64, u64); 2],
}

/// A part being written.
struct Open {
    name: &'static str,
    rows: i64,
    labels: Vec<i64>,
    /// Where its features began (safetensors).
    start: u64,
}

pub struct Export {
    dir: PathBuf,
    format: FeatureFormat,
    dim: i64,
    parts: Vec<Part>,
    open: Option<Open>,
    /// The file rows go to now: a part's npy, or the whole CSV or safetensors file.
    file: Option<(tempfile::NamedTempFile, BufWriter<File>)>,
    written: u64,
    /// Recorded in features.json for `extract --shard`.
    pub shard: Option<ShardInfo>,
}

fn le_f32(x: &Tensor) -> Result<Vec<u8>> {
    Ok(Vec::<f32>::try_from(x.contiguous().view([-1]))?.iter().flat_map(|v| v.to_le_bytes()).collect())
}

impl Export {
    /// Starts an export into `dir` (created; any features.json there is removed first, so
    /// it never vouches for files being replaced).
    pub fn create(dir: &Path, format: FeatureFormat) -> Result<Export> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--output {}: cannot create the directory", dir.display()))?;
        let _ = std::fs::remove_file(dir.join("features.json"));
        Ok(Export { dir: dir.into(), format, dim: 0, parts: vec![], open: None, file: None, written: 0, shard: None })
    }

    fn new_file(&mut self, name: &str, reserve: usize) -> Result<()> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .with_context(|| format!("cannot create a temp file in {}", self.dir.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, tmp.reopen()?);
        w.write_all(&vec![b' '; reserve])?;
        self.file = Some((tmp, w));
        self.written = reserve as u64;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let (_, w) = self.file.as_mut().expect("a file is open");
        w.write_all(bytes).context("writing features")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Rewrites the first bytes of the open file, flushes it and moves it into place.
    fn close_file(&mut self, name: &str, head: &[u8]) -> Result<()> {
        let (tmp, mut w) = self.file.take().expect("a file is open");
        w.flush()?;
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(head)?;
        f.sync_all()?;
        crate::util::files::make_public(tmp.path())?;
        let path = self.dir.join(name);
        tmp.persist(&path).with_context(|| format!("cannot move the finished file to {}", path.display()))?;
        Ok(())
    }

    /// Writes features.json: the files' sha256 and, read back, the content digest.
    pub fn finish(mut self, class_names: Vec<String>, mut provenance: Vec<(String, String)>) -> Result<()> {
        ensure!(self.open.is_none(), "an export part was left open");
        match self.format {
            FeatureFormat::Csv => self.close_file("features.csv", &[])?,
            FeatureFormat::Safetensors => {
                let head = self.safetensors_header()?;
                self.close_file("features.safetensors", &head)?
            }
            FeatureFormat::Npy => {}
        }
        let names: Vec<&str> = self.parts.iter().map(|p| p.name).collect();
        let files = file_names(self.format, &names);
        // Files and content are hashed from disk: two reads of the export, shown as one bar.
        let total: u64 = files.iter().map(|f| std::fs::metadata(self.dir.join(f)).map_or(0, |m| m.len())).sum();
        let bar = progress::bytes(Some(2 * total), "checksums");
        let sha256 = files
            .into_iter()
            .map(|f| Ok((f.clone(), file_sha256(&self.dir.join(&f), &bar)?)))
            .collect::<Result<_>>()?;
        provenance.retain(|(k, _)| k != "features_sha256");
        provenance.push(("features_sha256".into(), self.content_sha256(&class_names, &bar)?));
        bar.finish_and_clear();
        let rows = |name: &str| self.parts.iter().find(|p| p.name == name).map(|p| p.rows);
        let manifest = Manifest {
            format: self.format,
            n_train: rows("train").context("no train part")?,
            n_test: rows("test").context("no test part")?,
            hflip: rows("train_flip").is_some(),
            hflip_test: rows("test_flip").is_some(),
            feature_dim: self.dim,
            class_names,
            provenance,
            cnnprobe_version: crate::VERSION.into(),
            sha256,
            shard: self.shard.take(),
        };
        write_json(&self.dir.join("features.json"), &manifest)
    }

    fn safetensors_header(&self) -> Result<Vec<u8>> {
        let mut entries = serde_json::Map::new();
        for p in &self.parts {
            let base = SAFETENSORS_HEADER as u64 + 8;
            let entry = |dtype: &str, shape: Vec<i64>, (a, b): (u64, u64)| serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [a - base, b - base]});
            entries.insert(format!("{}_features", p.name), entry("F32", vec![p.rows, self.dim], p.offsets[0]));
            entries.insert(format!("{}_labels", p.name), entry("I64", vec![p.rows], p.offsets[1]));
        }
        let mut json = serde_json::Value::Object(entries).to_string().into_bytes();
        ensure!(json.len() <= SAFETENSORS_HEADER, "safetensors header too large");
        json.resize(SAFETENSORS_HEADER, b' ');
        let mut head = (SAFETENSORS_HEADER as u64).to_le_bytes().to_vec();
        head.extend(json);
        Ok(head)
    }

    /// The digest `FeatureSet::content_sha256` gives for these numbers, from the files.
    fn content_sha256(&self, class_names: &[String], bar: &ProgressBar) -> Result<String> {
        let mut h = Sha256::new();
        let dim = self.dim;
        match self.format {
            FeatureFormat::Csv => csv_content(&self.dir.join("features.csv"), &self.parts, dim, &mut h, bar)?,
            _ => {
                for p in &self.parts {
                    h.update(p.name.as_bytes());
                    let (file, offsets) = match self.format {
                        FeatureFormat::Npy => {
                            let (f, l) = (format!("{}_features.npy", p.name), format!("{}_labels.npy", p.name));
                            let lab = npy::preamble("<i8", &[p.rows]).len() as u64;
                            (vec![f, l], [(NPY_PREAMBLE as u64, u64::MAX), (lab, u64::MAX)])
                        }
                        _ => (vec!["features.safetensors".into(); 2], p.offsets),
                    };
                    h.update(format!("{:?}{:?};", Kind::Float, [p.rows, dim]).as_bytes());
                    hash_range(&self.dir.join(&file[0]), offsets[0], &mut h, bar)?;
                    h.update(format!("{:?}{:?};", Kind::Int64, [p.rows]).as_bytes());
                    hash_range(&self.dir.join(&file[1]), offsets[1], &mut h, bar)?;
                }
            }
        }
        h.update(class_names.join("\n").as_bytes());
        Ok(hex(&h.finalize()))
    }
}

/// Feeds bytes `a..b` of `path` (to its end when `b` is u64::MAX) to `h`.
fn hash_range(path: &Path, (a, b): (u64, u64), h: &mut Sha256, bar: &ProgressBar) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    f.seek(SeekFrom::Start(a))?;
    std::io::copy(&mut bar.wrap_read(f.take(b.saturating_sub(a))), h)?;
    Ok(())
}

fn file_sha256(path: &Path, bar: &ProgressBar) -> Result<String> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    digest::read_sha256(bar.wrap_read(f)).with_context(|| format!("cannot read {}", path.display()))
}

/// The content digest of a CSV export: its numbers parsed back, part by part.
fn csv_content(path: &Path, parts: &[Part], dim: i64, h: &mut Sha256, bar: &ProgressBar) -> Result<()> {
    let mut rdr = csv::Reader::from_reader(BufReader::new(bar.wrap_read(File::open(path)?)));
    let mut records = rdr.records();
    for p in parts {
        h.update(p.name.as_bytes());
        h.update(format!("{:?}{:?};", Kind::Float, [p.rows, dim]).as_bytes());
        let mut labels = Vec::with_capacity(p.rows as usize);
        for _ in 0..p.rows {
            let rec = records.next().context("the CSV ended early")??;
            labels.push(rec[2].parse::<i64>()?);
            for cell in rec.iter().skip(3) {
                h.update(cell.parse::<f32>()?.to_le_bytes());
            }
        }
        h.update(format!("{:?}{:?};", Kind::Int64, [p.rows]).as_bytes());
        labels.iter().for_each(|y| h.update(y.to_le_bytes()));
    }
    Ok(())
}

impl Sink for Export {
    fn begin(&mut self, part: &'static str, _rows: usize, dim: i64) -> Result<()> {
        ensure!(PARTS.contains(&part), "unknown part {part}");
        if self.dim != 0 && self.dim != dim {
            bail!("{part} has {dim} features, the parts before it {}", self.dim);
        }
        self.dim = dim;
        match self.format {
            FeatureFormat::Npy => self.new_file(&format!("{part}_features.npy"), NPY_PREAMBLE)?,
            FeatureFormat::Csv if self.file.is_none() => {
                self.new_file("features.csv", 0)?;
                let mut header = vec!["split".to_string(), "index".into(), "label".into()];
                header.extend((0..dim).map(|i| format!("f{i}")));
                self.write(format!("{}\n", header.join(",")).as_bytes())?;
            }
            FeatureFormat::Safetensors if self.file.is_none() => {
                self.new_file("features.safetensors", 8 + SAFETENSORS_HEADER)?
            }
            _ => {}
        }
        self.open = Some(Open { name: part, rows: 0, labels: vec![], start: self.written });
        Ok(())
    }

    fn rows(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        crate::util::interrupt::check()?;
        let labels = Vec::<i64>::try_from(y)?;
        match self.format {
            FeatureFormat::Csv => {
                let (name, first) = {
                    let o = self.open.as_ref().expect("begin before rows");
                    (o.name, o.rows)
                };
                let values = Vec::<f32>::try_from(x.contiguous().view([-1]))?;
                let mut text = String::with_capacity(values.len() * 12);
                for (r, row) in values.chunks(self.dim as usize).enumerate() {
                    use std::fmt::Write as _;
                    write!(text, "{name},{},{}", first + r as i64, labels[r])?;
                    row.iter().try_for_each(|v| write!(text, ",{v}"))?;
                    text.push('\n');
                }
                self.write(text.as_bytes())?;
            }
            _ => self.write(&le_f32(x)?)?,
        }
        let o = self.open.as_mut().expect("begin before rows");
        o.rows += labels.len() as i64;
        o.labels.extend(labels);
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        let o = self.open.take().expect("begin before end");
        let features_end = self.written;
        let mut offsets = [(o.start, features_end), (0, 0)];
        match self.format {
            FeatureFormat::Npy => {
                let head = npy::preamble("<f4", &[o.rows, self.dim]);
                ensure!(head.len() == NPY_PREAMBLE, "npy header of {} rows does not fit", o.rows);
                self.close_file(&format!("{}_features.npy", o.name), &head)?;
                npy::write_npy(&self.dir.join(format!("{}_labels.npy", o.name)), &Tensor::from_slice(&o.labels))?;
            }
            FeatureFormat::Safetensors => {
                let bytes: Vec<u8> = o.labels.iter().flat_map(|y| y.to_le_bytes()).collect();
                self.write(&bytes)?;
                offsets[1] = (features_end, self.written);
            }
            FeatureFormat::Csv => {}
        }
        self.parts.push(Part { name: o.name, rows: o.rows, offsets });
        Ok(())
    }
}
