//! Run directories, per-run CSV/JSON logs and the shared summary CSV.
use crate::files::{append_csv_rows, write_atomic};
use crate::probe::metrics::Metrics;
use crate::probe::{EpochLog, GridPoint};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The libtorch version this binary was built against (read from the install by build.rs).
pub const LIBTORCH_VERSION: &str = env!("CNNPROBE_LIBTORCH_VERSION");

/// The libtorch version this process runs on, and where the loader found it: a portable
/// binary may run on another install than the one it was built against.
pub fn libtorch_runtime() -> (String, Option<PathBuf>) {
    let dir = crate::libtorch::loaded_lib_dir();
    let version = dir.as_deref().and_then(crate::libtorch::version_of).unwrap_or_else(|| LIBTORCH_VERSION.into());
    (version, dir)
}

/// Creates the run directory: `--out` as given, or a fresh
/// `results/runs/<UTC timestamp>-<short name>` (suffixed when two runs start in one second).
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
    let base = PathBuf::from("results").join("runs");
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

/// Any serialisable value as pretty JSON (config.json, features.json).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    write_atomic(path, |w| Ok(writeln!(w, "{json}")?))
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

/// Ordered (column, value) pairs; one call builds one summary row.
#[derive(Default)]
pub struct Row(pub Vec<(String, String)>);

impl Row {
    pub fn set(&mut self, column: &str, value: impl ToString) -> &mut Self {
        self.0.push((column.to_string(), value.to_string()));
        self
    }

    pub fn append_to(&self, path: &Path) -> Result<()> {
        let header: Vec<String> = self.0.iter().map(|(c, _)| c.clone()).collect();
        let values: Vec<String> = self.0.iter().map(|(_, v)| v.clone()).collect();
        append_csv_rows(path, &header, &[values])
            .with_context(|| format!("cannot append to summary {}", path.display()))
    }

    pub fn write_single(&self, path: &Path) -> Result<()> {
        write_atomic(path, |w| {
            let mut c = csv::Writer::from_writer(w);
            c.write_record(self.0.iter().map(|(k, _)| k))?;
            c.write_record(self.0.iter().map(|(_, v)| v))?;
            c.flush()?;
            Ok(())
        })
    }
}

/// Columns of a result aggregated over seeds (compare tables, sweep aggregates).
pub const OVER_SEEDS: [&str; 7] =
    ["n", "seeds", "test_top1_mean", "test_top1_sd", "test_top5_mean", "test_top5_sd", "val_acc_mean"];

/// Mean and sample standard deviation (0 for a single value), as reported over seeds.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (m, sd)
}

/// Formats an accuracy/fraction with 4 decimals.
pub fn frac(v: f64) -> String {
    format!("{v:.4}")
}

/// `cnnprobe models`: every architecture with its stages and default features.
pub fn print_models() {
    use clap::ValueEnum;
    println!("{:<10} {:<9} description", "arch", "stages");
    for arch in crate::models::Arch::value_variants() {
        let stages = if arch.is_vgg() {
            "block1-5"
        } else if arch.is_cifar_resnet() {
            "layer1-3"
        } else {
            "layer1-4"
        };
        println!("{:<10} {:<9} {}", arch.name(), stages, arch.describe());
    }
    println!();
    println!("Features: the last stage, globally average-pooled, unless --features/--taps names stages");
    println!("(pooled with --pool avg|max|avgmax over --pool-size K×K cells, then concatenated) or fc2 (VGG).");
    println!("Init (--init): torchvision (default; the family's torchvision formulas), pytorch-default,");
    println!("kaiming-normal, xavier-uniform, orthogonal, normal:STD, uniform:A. Drawn on the CPU from --seed.");
    println!();
    println!("Presets (run --preset NAME; flags given on the command line override them):");
    for p in crate::presets::PRESETS {
        println!("  {}: {}", p.name, p.about);
        println!("    flags: {}", p.flags.join(" "));
        println!("    with random weights also: {}", p.random_only.join(" "));
    }
}

/// `cnnprobe info`.
pub fn print_info() {
    println!("cnnprobe: {}", crate::VERSION);
    let (version, dir) = libtorch_runtime();
    match dir {
        Some(dir) => println!("libtorch: {version} ({})", dir.display()),
        None => println!("libtorch: {version} (location unknown; the build-time version)"),
    }
    println!("built against libtorch: {LIBTORCH_VERSION}");
    println!("threads: {}", tch::get_num_threads());
    if tch::Cuda::is_available() {
        println!(
            "cuda: available, {} device(s), cudnn: {}",
            tch::Cuda::device_count(),
            tch::Cuda::cudnn_is_available()
        );
    } else {
        println!("cuda: not available");
    }
}

/// Sets a run label (`tag`, `preset`) in the summary columns. Labels are added after the
/// features are made or read from the cache, so a cached entry never carries an old one.
pub fn label(provenance: &mut Vec<(String, String)>, key: &str, value: Option<&str>) {
    provenance.retain(|(k, _)| k != key);
    provenance.push((key.into(), value.unwrap_or_default().into()));
}
