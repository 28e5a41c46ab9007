//! What a run leaves behind: its run directory (config, logs, per-class results), its row
//! in the summary CSV (`summary`), and over-seed aggregates (`aggregate`, shared by compare
//! and sweep); `plot` charts them.
pub mod aggregate;
pub mod plot;
pub mod summary;

use crate::features::FeatureSet;
use crate::probe::metrics::Metrics;
use crate::probe::{EpochLog, Evaluation, GridPoint, ProbeConfig};
use crate::util::files::write_atomic;
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a run's results go. Defaults stay under `runs/`, which git ignores, so a user's run
/// never edits the repository's committed `results/`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct OutputConfig {
    /// Run directory; `None` means runs/<timestamp>-<short name>.
    pub out: Option<PathBuf>,
    /// CSV that gets one row per finished run.
    pub summary: PathBuf,
    /// Feature cache directory; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Where to save the fitted head, if anywhere.
    pub save_head: Option<PathBuf>,
    /// Free-text label for the summary row.
    pub tag: Option<String>,
    /// `--preset` the flags came from, if any.
    pub preset: Option<String>,
}

/// The folder that default outputs go to.
pub const RUNS_DIR: &str = "runs";

/// What a finished run reports back (also printed).
pub struct Outcome {
    pub run_dir: PathBuf,
    pub val_acc: f64,
    pub test_top1: f64,
    pub test_top5: f64,
}

/// config.json: the command's validated config, the command's name, and the provenance of
/// its features (data digest, weights digest, features digest, versions), so `reproduce`
/// can rerun it and check each input.
pub fn write_config(
    run_dir: &Path,
    command: &str,
    config: &impl Serialize,
    provenance: &[(String, String)],
) -> Result<()> {
    let mut v = serde_json::to_value(config)?;
    let o = v.as_object_mut().context("a config serialises to an object")?;
    o.insert("command".into(), command.into());
    let p: serde_json::Map<String, serde_json::Value> =
        provenance.iter().map(|(k, v)| (k.clone(), v.as_str().into())).collect();
    o.insert("provenance".into(), p.into());
    crate::util::files::write_json(&run_dir.join("config.json"), &v)
}

/// Writes the run directory's logs and the summary row of an evaluated feature set.
pub fn write_run(
    run_dir: &Path,
    set: &FeatureSet,
    eval: &Evaluation,
    probe: &ProbeConfig,
    out: &OutputConfig,
) -> Result<Outcome> {
    let fitted = &eval.fitted;
    if let Some(path) = &out.save_head {
        fitted.head.save(path)?;
    }
    write_epochs(run_dir, &fitted.epochs)?;
    write_indices(&run_dir.join("val_indices.csv"), &eval.val_indices)?;
    write_grid(run_dir, &fitted.grid, fitted.chosen_weight_decay)?;
    if let Some(m) = &eval.test {
        write_per_class(run_dir, &set.class_names, m)?;
    }
    let mut row = summary::run_row(&set.provenance, probe, eval, run_dir);
    if let Some(path) = &out.save_head {
        row.set("head_sha256", crate::util::digest::file_sha256(path)?);
    }
    row.write_single(&run_dir.join("result.csv"))?;
    row.append_to(&out.summary)?;
    let (top1, top5) = eval.test.as_ref().map(|m| (m.top1, m.top5)).unwrap_or((f64::NAN, f64::NAN));
    let test = match &eval.test {
        Some(_) => format!("test top1 {top1:.4} top5 {top5:.4}"),
        None => "test not scored (--val-only)".into(),
    };
    eprintln!(
        "probe: val_acc {:.4} (weight decay {:.3e}); {test} → {}",
        fitted.val_acc,
        fitted.chosen_weight_decay,
        run_dir.display()
    );
    Ok(Outcome { run_dir: run_dir.to_path_buf(), val_acc: fitted.val_acc, test_top1: top1, test_top5: top5 })
}

/// Creates the run directory: `--out` as given, or a fresh
/// `runs/<UTC timestamp>-<short name>` (suffixed when two runs start in one second).
pub fn create_run_dir(out: Option<&Path>, short_name: &str) -> Result<PathBuf> {
    if let Some(out) = out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("--out {}: cannot create the run directory", out.display()))?;
        probe_writable(out)?;
        return Ok(out.to_path_buf());
    }
    let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    let base = PathBuf::from(RUNS_DIR);
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    for attempt in 0.. {
        let name = match attempt {
            0 => format!("{stamp}-{short_name}"),
            n => format!("{stamp}-{short_name}-{n}"),
        };
        let dir = base.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    unreachable!()
}

/// Fails early, before hours of extraction, when the run dir cannot take files.
fn probe_writable(dir: &Path) -> Result<()> {
    tempfile::tempfile_in(dir).with_context(|| format!("--out {}: directory is not writable", dir.display()))?;
    Ok(())
}

/// The train-set row indices held out for validation (so other tools can use the same split).
pub fn write_indices(path: &Path, idx: &[i64]) -> Result<()> {
    write_atomic(path, |w| {
        writeln!(w, "index")?;
        for i in idx {
            writeln!(w, "{i}")?;
        }
        Ok(())
    })
}

/// wd_search.csv: every evaluated L2 strength and its validation accuracy.
pub fn write_grid(dir: &Path, grid: &[GridPoint], chosen: f64) -> Result<()> {
    write_atomic(&dir.join("wd_search.csv"), |w| {
        let mut c = csv::Writer::from_writer(w);
        c.write_record(["stage", "weight_decay", "val_acc", "steps", "chosen"])?;
        for g in grid {
            c.write_record([
                g.stage.to_string(),
                format!("{:.4e}", g.weight_decay),
                format!("{:.4}", g.val_acc),
                g.steps.to_string(),
                (g.weight_decay == chosen).to_string(),
            ])?;
        }
        c.flush()?;
        Ok(())
    })
}

/// per_class.csv (class, support, accuracy) and confusion.csv (true class × predicted).
pub fn write_per_class(dir: &Path, class_names: &[String], m: &Metrics) -> Result<()> {
    write_atomic(&dir.join("per_class.csv"), |w| {
        let mut c = csv::Writer::from_writer(w);
        c.write_record(["class", "support", "accuracy"])?;
        for (name, (n, ok)) in class_names.iter().zip(&m.per_class) {
            let acc = if *n > 0 { format!("{:.4}", *ok as f64 / *n as f64) } else { String::new() };
            c.write_record([name.clone(), n.to_string(), acc])?;
        }
        c.flush()?;
        Ok(())
    })?;
    write_atomic(&dir.join("confusion.csv"), |w| {
        let mut c = csv::Writer::from_writer(w);
        let mut header = vec!["true/predicted".to_string()];
        header.extend(class_names.iter().cloned());
        c.write_record(&header)?;
        for (name, row) in class_names.iter().zip(&m.confusion) {
            let mut r = vec![name.clone()];
            r.extend(row.iter().map(i64::to_string));
            c.write_record(&r)?;
        }
        c.flush()?;
        Ok(())
    })
}

pub fn write_epochs(dir: &Path, epochs: &[EpochLog]) -> Result<()> {
    write_atomic(&dir.join("epochs.csv"), |w| {
        let mut c = csv::Writer::from_writer(w);
        c.write_record(["epoch", "train_loss", "train_acc", "val_acc", "val_loss", "lr", "elapsed_s"])?;
        for e in epochs {
            let opt = |v: f64, p: usize| if v.is_nan() { String::new() } else { format!("{v:.p$}") };
            c.write_record([
                e.epoch.to_string(),
                format!("{:.6}", e.train_loss),
                format!("{:.4}", e.train_acc),
                opt(e.val_acc, 4),
                opt(e.val_loss, 6),
                format!("{:.6e}", e.lr),
                format!("{:.3}", e.elapsed_s),
            ])?;
        }
        c.flush()?;
        Ok(())
    })
}
