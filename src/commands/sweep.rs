//! `cnnprobe sweep`: a grid of runs, each appended to one sweep CSV as it finishes.
//! Re-running skips the points already in the CSV, so a killed sweep resumes where it
//! stopped; a point that fails is recorded as a failed row and the sweep goes on. An
//! aggregate CSV (mean ± sd and n over seeds) is rewritten after every point.
use super::run::run;
use crate::config::{SweepConfig, SweepPoint};
use crate::models::{pretrained, WeightsSource};
use crate::report::aggregate::{aggregate_path, write_aggregate};
use crate::report::summary::Row;
use crate::util::interrupt;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::Path;

pub fn sweep(cfg: &SweepConfig) -> Result<()> {
    let done = completed(&cfg.sweep_csv)?;
    let total = cfg.points.len();
    let (mut skipped, mut failed) = (0, 0);
    let aggregate = aggregate_path(&cfg.sweep_csv);
    for (i, p) in cfg.points.iter().enumerate() {
        if done.contains(&p.key) {
            skipped += 1;
            continue;
        }
        let what: Vec<String> = p.describe.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("sweep [{}/{total}] {}", i + 1, what.join(" "));
        let row = run_point(p)?;
        failed += row.0.iter().any(|(k, v)| k == "status" && v.starts_with("failed")) as usize;
        row.append_to(&cfg.sweep_csv)?;
        write_aggregate(&cfg.sweep_csv, &aggregate)?;
    }
    if skipped > 0 {
        eprintln!("sweep: {skipped} of {total} configurations were already done ({})", cfg.sweep_csv.display());
    }
    write_aggregate(&cfg.sweep_csv, &aggregate)?;
    eprintln!("sweep: {} and {}", cfg.sweep_csv.display(), aggregate.display());
    if failed > 0 {
        bail!("sweep: {failed} of {total} configurations failed (status column of {})", cfg.sweep_csv.display());
    }
    Ok(())
}

/// The sweep row of one point: its result row, or a status saying why it has none.
fn run_point(p: &SweepPoint) -> Result<Row> {
    let mut row = Row::default();
    row.set("sweep_key", &p.key);
    let status = match &p.run {
        Err(e) => format!("skipped: {e}"),
        Ok(cfg)
            if cfg.extract.weights == WeightsSource::Imagenet
                && pretrained::ensure_checkpoint(cfg.extract.model.arch, cfg.extract.weights_mirror.as_deref())
                    .is_err() =>
        {
            "not available offline".into()
        }
        Ok(cfg) => match run(cfg) {
            Ok(outcome) => {
                row.set("status", "ok");
                row.0.extend(Row::read_single(&outcome.run_dir.join("result.csv"))?.0);
                return Ok(row);
            }
            // A signal stops the sweep; anything else is this point's failure.
            Err(e) if interrupt::requested() => return Err(e),
            Err(e) => format!("failed: {}", format!("{e:#}").replace('\n', " ")),
        },
    };
    row.set("status", status);
    row.0.extend(p.describe.iter().cloned());
    Ok(row)
}

/// Keys of the points a sweep CSV already settles: finished, or invalid as configured.
/// Failed points and missing checkpoints are tried again.
fn completed(path: &Path) -> Result<HashSet<String>> {
    let mut keys = HashSet::new();
    if !path.exists() {
        return Ok(keys);
    }
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let h = rdr.headers()?.clone();
    let Some(k) = h.iter().position(|c| c == "sweep_key") else { return Ok(keys) };
    let status = h.iter().position(|c| c == "status");
    for rec in rdr.records().flatten() {
        let settled = status.and_then(|i| rec.get(i)).is_none_or(|s| s == "ok" || s.starts_with("skipped"));
        if let (Some(v), true) = (rec.get(k), settled) {
            keys.insert(v.to_string());
        }
    }
    Ok(keys)
}
