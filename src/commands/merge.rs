//! `cnnprobe merge`: the shard directories of `extract --shard K/N` joined, in shard order,
//! into the rows of one unsharded run. One shard part is in memory at a time.
use crate::config::MergeJob;
use crate::features::export::Export;
use crate::features::extract::Sink;
use crate::features::store::{self, Manifest};
use crate::util::progress;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

pub fn merge(job: &MergeJob) -> Result<()> {
    let shards = check(&job.shards)?;
    let first = &shards[0].1;
    let mut export = Export::create(&job.dir, first.format)?;
    // Every shard holds the parts the first one does (same settings), in PARTS order.
    for (part, _) in store::expected_parts(first) {
        let total: i64 = shards
            .iter()
            .map(|(_, m)| store::expected_parts(m).into_iter().find(|(p, _)| *p == part).map_or(0, |(_, n)| n))
            .sum();
        let bar = progress::rows(total as u64, &format!("merge {part}"));
        export.begin(part, total as usize, first.feature_dim)?;
        for (dir, m) in &shards {
            let f = store::read_part(dir, m, part)?;
            let mut start = 0;
            while start < f.y.size()[0] {
                let len = 4096.min(f.y.size()[0] - start);
                export.rows(&f.x.narrow(0, start, len), &f.y.narrow(0, start, len))?;
                bar.inc(len as u64);
                start += len;
            }
        }
        export.end()?;
        bar.finish_and_clear();
    }
    let secs: f64 = shards.iter().filter_map(|(_, m)| column(m, "extract_s")?.parse::<f64>().ok()).sum();
    let images: i64 = shards.iter().flat_map(|(_, m)| store::expected_parts(m)).map(|(_, n)| n).sum();
    let mut provenance = first.provenance.clone();
    provenance.retain(|(k, _)| k != "shard");
    for (k, v) in provenance.iter_mut() {
        match k.as_str() {
            // Summed over the shards, as if one process had done all the work.
            "extract_s" => *v = format!("{secs:.1}"),
            "images_per_s" => *v = format!("{:.1}", images as f64 / secs.max(1e-9)),
            _ => {}
        }
    }
    export.finish(first.class_names.clone(), provenance)?;
    eprintln!("merged {} shards ({images} images) → {}", shards.len(), job.dir.display());
    Ok(())
}

fn column<'a>(m: &'a Manifest, key: &str) -> Option<&'a str> {
    m.provenance.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The shards in order, after checking they are all N parts of one extraction.
fn check(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Manifest)>> {
    let mut shards = Vec::new();
    for d in dirs {
        let m = store::manifest(d).with_context(|| format!("merge: {}", d.display()))?;
        let Some(info) = m.shard.clone() else {
            bail!("merge: {} is not a shard (it was extracted without --shard K/N)", d.display())
        };
        shards.push((d.clone(), m, info));
    }
    let (d0, m0, s0) = shards[0].clone();
    for (d, m, s) in &shards[1..] {
        if s.count != s0.count {
            bail!(
                "merge: {} is shard {}/{}, {} is shard {}/{}",
                d0.display(),
                s0.index,
                s0.count,
                d.display(),
                s.index,
                s.count
            );
        }
        if s.settings != s0.settings || m.feature_dim != m0.feature_dim || m.class_names != m0.class_names {
            let differ: Vec<&str> = m0
                .provenance
                .iter()
                .filter(|(k, v)| !VOLATILE.contains(&k.as_str()) && column(m, k) != Some(v.as_str()))
                .map(|(k, _)| k.as_str())
                .collect();
            let what = if differ.is_empty() { "the data, weights or device".to_string() } else { differ.join(", ") };
            bail!("merge: {} and {} come from different extractions (differing: {what})", d0.display(), d.display());
        }
    }
    shards.sort_by_key(|(_, _, s)| s.index);
    for w in shards.windows(2) {
        if w[0].2.index == w[1].2.index {
            bail!(
                "merge: shard {}/{} is given twice ({} and {})",
                w[0].2.index,
                s0.count,
                w[0].0.display(),
                w[1].0.display()
            );
        }
    }
    let have: Vec<usize> = shards.iter().map(|(_, _, s)| s.index).collect();
    if let Some(missing) = (0..s0.count).find(|i| !have.contains(i)) {
        let have: Vec<String> = have.iter().map(|i| format!("{i}/{}", s0.count)).collect();
        bail!("merge: shard {missing}/{} is missing (given: {})", s0.count, have.join(", "));
    }
    Ok(shards.into_iter().map(|(d, m, _)| (d, m)).collect())
}

/// Provenance columns that legitimately differ between shards.
const VOLATILE: [&str; 8] =
    ["shard", "extract_s", "images_per_s", "features_sha256", "threads", "batch_size", "device", "convs"];
