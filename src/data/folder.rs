//! Image-folder datasets in torchvision's ImageFolder layout: `DIR/train/<class>/*` and
//! `DIR/test/<class>/*` (JPEG or PNG). Classes are the train folder names, sorted.
use super::{Dataset, Split};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// How images become one uint8 tensor.
pub struct FolderOptions {
    /// Resize every image to size×size; `None` requires all images to share one size.
    pub size: Option<u32>,
    /// Warn about and skip unreadable images instead of failing.
    pub skip_bad: bool,
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

/// Reads `root/train` and `root/test`.
pub fn load(root: &Path, opts: &FolderOptions) -> Result<Dataset> {
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
    let mut skipped = 0;
    let mut size = opts.size.map(|s| (s, s));
    let train = read_split(&root.join("train"), &classes, opts, &mut size, &mut skipped)?;
    let test = read_split(&root.join("test"), &classes, opts, &mut size, &mut skipped)?;
    if skipped > 0 {
        eprintln!("warning: skipped {skipped} unreadable image(s) (--skip-bad-images)");
    }
    Ok(Dataset { name: "folder".into(), class_names: classes, train, test })
}

fn read_split(
    dir: &Path,
    classes: &[String],
    opts: &FolderOptions,
    size: &mut Option<(u32, u32)>,
    skipped: &mut usize,
) -> Result<Split> {
    for extra in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = extra.file_name().unwrap_or_default().to_string_lossy().into_owned();
        ensure!(classes.contains(&name), "{}: class {name} is not among the train classes", dir.display());
    }
    let bar = crate::util::progress::images(0, dir.file_name().unwrap_or_default().to_string_lossy().as_ref());
    let (mut pixels, mut labels, mut first): (Vec<u8>, Vec<i64>, Option<PathBuf>) = (Vec::new(), Vec::new(), None);
    for (label, class) in classes.iter().enumerate() {
        let cdir = dir.join(class);
        let files: Vec<PathBuf> =
            if cdir.is_dir() { sorted_entries(&cdir)?.into_iter().filter(|p| is_image(p)).collect() } else { vec![] };
        ensure!(!files.is_empty(), "class folder {} has no images (.jpg, .jpeg, .png)", cdir.display());
        bar.inc_length(files.len() as u64);
        for f in files {
            crate::util::interrupt::check()?;
            let img = match image::open(&f) {
                Ok(i) => i.to_rgb8(),
                Err(e) if opts.skip_bad => {
                    eprintln!("warning: {}: {e}; skipped", f.display());
                    *skipped += 1;
                    continue;
                }
                Err(e) => bail!("{}: unreadable image ({e}); pass --skip-bad-images to skip such files", f.display()),
            };
            let img = match (opts.size, *size) {
                (Some(s), _) if img.dimensions() != (s, s) => {
                    image::imageops::resize(&img, s, s, image::imageops::FilterType::Triangle)
                }
                (None, Some(want)) if img.dimensions() != want => bail!(
                    "images differ in size: {} is {}×{}, {} is {}×{}; pass --input-size N to resize them",
                    first.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    want.0,
                    want.1,
                    f.display(),
                    img.width(),
                    img.height()
                ),
                _ => img,
            };
            if size.is_none() {
                *size = Some(img.dimensions());
                first = Some(f.clone());
            }
            // HWC → CHW planes, as the CIFAR files store them.
            let (w, h) = img.dimensions();
            let raw = img.into_raw();
            for c in 0..3 {
                pixels.extend((0..(w * h) as usize).map(|i| raw[i * 3 + c]));
            }
            labels.push(label as i64);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let (w, h) = size.unwrap_or((0, 0));
    let n = labels.len() as i64;
    ensure!(n > 0, "{} has no readable images", dir.display());
    Ok(Split {
        images: Tensor::from_slice(&pixels).view([n, 3, h as i64, w as i64]),
        labels: Tensor::from_slice(&labels),
    })
}

/// Per-channel mean and std (0..1 scale) of a uint8 split: the folder dataset's own
/// normalisation statistics, from train only.
pub fn channel_stats(images: &Tensor) -> super::normalize::ChannelStats {
    let x = images.to_kind(tch::Kind::Float) / 255.0;
    let mean = x.mean_dim([0, 2, 3].as_slice(), false, tch::Kind::Float);
    let std = x.std_dim([0, 2, 3].as_slice(), false, false);
    let v = |t: &Tensor| -> [f64; 3] {
        let v = Vec::<f32>::try_from(t).unwrap_or_default();
        [v[0] as f64, v[1] as f64, v[2] as f64]
    };
    super::normalize::ChannelStats { mean: v(&mean), std: v(&std) }
}
