//! Image-folder datasets in torchvision's ImageFolder layout: `DIR/train/<class>/*` and
//! `DIR/test/<class>/*` (JPEG or PNG). Classes are the train folder names, sorted. Only the
//! file list is read up front; images are decoded batch by batch when they are used.
use super::Split;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::Tensor;

/// How an image file becomes a 3×H×W uint8 array.
#[derive(Clone, Copy, Debug)]
pub struct FolderOptions {
    /// Resize every image to size×size; `None` requires all images to share one size.
    pub size: Option<u32>,
    /// With `size`: resize the shorter side to size·256/224, then take the centre size×size
    /// (torchvision's `Resize(256)` + `CenterCrop(224)` for large photos).
    pub center_crop: bool,
    /// Warn about and skip unreadable images instead of failing.
    pub skip_bad: bool,
}

/// One split's files, labels and decoding options; a range of it after `--limit`/`--shard`.
#[derive(Clone)]
pub struct FileSplit {
    files: Arc<Vec<(PathBuf, i64)>>,
    range: Range<usize>,
    /// (width, height) of every decoded image.
    pub size: (u32, u32),
    opts: FolderOptions,
    /// The unreadable files met so far (indices into `files`), each warned about once.
    skipped: Arc<Mutex<BTreeSet<usize>>>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// The class names and both splits' file lists of `root`.
pub fn open(root: &Path, opts: FolderOptions) -> Result<(Vec<String>, FileSplit, FileSplit)> {
    ensure!(root.is_dir(), "data dir {} does not exist", root.display());
    for s in ["train", "test"] {
        ensure!(root.join(s).is_dir(), "{} has no {s}/ folder (expected {s}/<class>/<image>)", root.display());
    }
    let classes: Vec<String> = sorted_entries(&root.join("train"))?
        .into_iter()
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    ensure!(!classes.is_empty(), "{} has no class folders", root.join("train").display());
    let train = list(&root.join("train"), &classes)?;
    let test = list(&root.join("test"), &classes)?;
    let size = match opts.size {
        Some(s) => (s, s),
        // The size every image must share: the first readable train image's.
        None => first_size(&train, opts.skip_bad)?,
    };
    let split = |files: Vec<(PathBuf, i64)>| FileSplit {
        range: 0..files.len(),
        files: Arc::new(files),
        size,
        opts,
        skipped: Arc::new(Mutex::new(BTreeSet::new())),
    };
    Ok((classes, split(train), split(test)))
}

fn list(dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, i64)>> {
    for extra in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = extra.file_name().unwrap_or_default().to_string_lossy().into_owned();
        ensure!(classes.contains(&name), "{}: class {name} is not among the train classes", dir.display());
    }
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let cdir = dir.join(class);
        let files: Vec<PathBuf> =
            if cdir.is_dir() { sorted_entries(&cdir)?.into_iter().filter(|p| is_image(p)).collect() } else { vec![] };
        ensure!(!files.is_empty(), "class folder {} has no images (.jpg, .jpeg, .png)", cdir.display());
        out.extend(files.into_iter().map(|f| (f, label as i64)));
    }
    Ok(out)
}

fn first_size(files: &[(PathBuf, i64)], skip_bad: bool) -> Result<(u32, u32)> {
    for (f, _) in files {
        match image::image_dimensions(f) {
            Ok(d) => return Ok(d),
            Err(_) if skip_bad => continue,
            Err(e) => bail!("{}: unreadable image ({e}); pass --skip-bad-images to skip such files", f.display()),
        }
    }
    bail!("no readable images")
}

impl FileSplit {
    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Items `range` of this split (relative to it).
    pub fn slice(&self, range: Range<usize>) -> FileSplit {
        let start = self.range.start + range.start.min(self.len());
        let end = self.range.start + range.end.min(self.len());
        FileSplit { range: start..end, ..self.clone() }
    }

    /// How many of this split's images were skipped as unreadable so far.
    pub fn skipped(&self) -> usize {
        self.skipped.lock().unwrap_or_else(|e| e.into_inner()).range(self.range.clone()).count()
    }

    /// Decodes items `idx` (relative to the split) into one batch; unreadable images are
    /// skipped with a warning under `--skip-bad-images`, else an error naming the file.
    pub fn get(&self, idx: &[usize]) -> Result<Split> {
        let (w, h) = self.size;
        let mut pixels = Vec::with_capacity(idx.len() * 3 * (w * h) as usize);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            crate::util::interrupt::check()?;
            let (path, label) = &self.files[self.range.start + i];
            if self.decode(self.range.start + i, path, &mut pixels)? {
                labels.push(*label);
            }
        }
        let n = labels.len() as i64;
        Ok(Split {
            images: Tensor::from_slice(&pixels).view([n, 3, h as i64, w as i64]),
            labels: Tensor::from_slice(&labels),
        })
    }

    /// Appends `path`'s CHW planes to `out`; false when it was skipped.
    fn decode(&self, index: usize, path: &Path, out: &mut Vec<u8>) -> Result<bool> {
        let img = match image::open(path) {
            Ok(i) => i.to_rgb8(),
            Err(e) if self.opts.skip_bad => {
                // The statistics pass and each view read the file again: warn once.
                if self.skipped.lock().unwrap_or_else(|e| e.into_inner()).insert(index) {
                    eprintln!("warning: {}: {e}; skipped", path.display());
                }
                return Ok(false);
            }
            Err(e) => bail!("{}: unreadable image ({e}); pass --skip-bad-images to skip such files", path.display()),
        };
        let img = match self.opts.size {
            Some(s) if self.opts.center_crop => center_crop(&img, s),
            Some(s) if img.dimensions() != (s, s) => {
                image::imageops::resize(&img, s, s, image::imageops::FilterType::Triangle)
            }
            None if img.dimensions() != self.size => bail!(
                "images differ in size: {} is {}×{}, the first train image {}×{}; pass --input-size N to resize them",
                path.display(),
                img.width(),
                img.height(),
                self.size.0,
                self.size.1
            ),
            _ => img,
        };
        // HWC → CHW planes, as the CIFAR files store them.
        let (w, h) = img.dimensions();
        let raw = img.into_raw();
        for c in 0..3 {
            out.extend((0..(w * h) as usize).map(|i| raw[i * 3 + c]));
        }
        Ok(true)
    }
}

/// torchvision's `Resize(round(s·256/224))` (shorter side, aspect kept, the longer side
/// truncated as torchvision does) followed by `CenterCrop(s)`.
fn center_crop(img: &image::RgbImage, s: u32) -> image::RgbImage {
    let short = (s as f64 * 256.0 / 224.0).round() as u32;
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (short, (short as f64 * h as f64 / w as f64) as u32)
    } else {
        ((short as f64 * w as f64 / h as f64) as u32, short)
    };
    let resized = image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle);
    let left = ((nw - s) as f64 / 2.0).round() as u32;
    let top = ((nh - s) as f64 / 2.0).round() as u32;
    image::imageops::crop_imm(&resized, left, top, s, s).to_image()
}

/// Per-channel mean and std (0..1 scale, population std) of a split's images: the folder
/// dataset's own normalisation statistics, from train only, summed batch by batch in f64.
pub fn channel_stats(batches: impl Iterator<Item = Result<Split>>) -> Result<super::normalize::ChannelStats> {
    let (mut sum, mut sq, mut count) = ([0f64; 3], [0f64; 3], 0f64);
    for b in batches {
        let x = b?.images.to_kind(tch::Kind::Double) / 255.0;
        let s = Vec::<f64>::try_from(x.sum_dim_intlist([0, 2, 3].as_slice(), false, tch::Kind::Double))?;
        let q = Vec::<f64>::try_from((&x * &x).sum_dim_intlist([0, 2, 3].as_slice(), false, tch::Kind::Double))?;
        for c in 0..3 {
            sum[c] += s[c];
            sq[c] += q[c];
        }
        count += (x.numel() / 3) as f64;
    }
    ensure!(count > 0.0, "no readable train images for the dataset's statistics");
    let mean = sum.map(|s| s / count);
    let std = [0, 1, 2].map(|c| (sq[c] / count - mean[c] * mean[c]).max(0.0).sqrt());
    Ok(super::normalize::ChannelStats { mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_crop_keeps_the_middle_of_the_shorter_side_resized() {
        // 80×40, each pixel's red value its column: s = 28 → shorter side round(32) = 32,
        // 64×32, then the 28 columns from round((64 − 28) / 2) = 18.
        let img = image::RgbImage::from_fn(80, 40, |x, _| image::Rgb([x as u8 * 3, 0, 0]));
        let out = center_crop(&img, 28);
        assert_eq!(out.dimensions(), (28, 28));
        // Resized column c samples the original around (c + 0.5)·80/64 − 0.5.
        for c in [0u32, 13, 27] {
            let want = ((18 + c) as f64 + 0.5) * 1.25 - 0.5;
            let got = out.get_pixel(c, 14)[0] as f64 / 3.0;
            assert!((got - want).abs() < 1.0, "column {c}: {got} vs {want}");
        }
        // Portrait: the crop is vertical.
        let tall = image::RgbImage::from_fn(30, 90, |_, y| image::Rgb([0, y as u8 * 2, 0]));
        let out = center_crop(&tall, 24);
        assert_eq!(out.dimensions(), (24, 24));
        let mid = out.get_pixel(12, 12)[1] as f64 / 2.0;
        assert!((mid - 45.0).abs() < 2.0, "the middle row comes from the middle: {mid}");
    }
}
