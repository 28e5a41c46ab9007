//! `cnnprobe scan`: decodes every image of a folder dataset with extract's reader, to find
//! unreadable files before a long job and to measure decoding throughput.
use crate::data::DataConfig;
use anyhow::Result;
use std::time::Instant;

pub fn scan(cfg: &DataConfig) -> Result<()> {
    let (dataset, train, test) = cfg.load()?;
    let start = Instant::now();
    let mut images = 0;
    for (what, split) in [("train", &train), ("test", &test)] {
        let bar = crate::util::progress::images(split.len() as u64, &format!("scan {what}"));
        for batch in split.batches(256, cfg.workers) {
            let n = batch?.len();
            images += n;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    let skipped = train.skipped() + test.skipped();
    let (h, w) = train.image_size();
    eprintln!(
        "scan: {images} images, {secs:.2} s, {:.1} images/s ({} classes, {w}×{h}, {} workers, {skipped} unreadable)",
        images as f64 / secs.max(1e-9),
        dataset.num_classes(),
        cfg.workers
    );
    Ok(())
}
