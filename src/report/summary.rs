//! Summary rows: one CSV row per finished run, named columns in a fixed order.
use crate::probe::{Evaluation, ProbeConfig};
use crate::util::files::{append_csv_rows, write_atomic};
use crate::util::names::value_name;
use anyhow::{Context, Result};
use std::path::Path;

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

    /// The row of a one-row CSV written by `write_single` (a run's result.csv).
    pub fn read_single(path: &Path) -> Result<Row> {
        let mut rdr = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
        let h = rdr.headers()?.clone();
        let rec = rdr.records().next().with_context(|| format!("{}: no row", path.display()))??;
        Ok(Row(h.iter().zip(rec.iter()).map(|(a, b)| (a.to_string(), b.to_string())).collect()))
    }

    /// The value of `column`, if the row has it.
    pub fn get(&self, column: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == column).map(|(_, v)| v.as_str())
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

/// The summary row of an evaluated run: the features' provenance, the probe's settings and
/// what it measured, and the versions that produced it.
pub fn run_row(provenance: &[(String, String)], s: &ProbeConfig, eval: &Evaluation, run_dir: &Path) -> Row {
    let fitted = &eval.fitted;
    let test =
        |f: fn(&crate::probe::metrics::Metrics) -> f64| eval.test.as_ref().map(|m| frac(f(m))).unwrap_or_default();
    let kernel = s.solver == crate::probe::Solver::Kernel;
    let mut row = Row::default();
    row.set("finished_at", humantime::format_rfc3339_seconds(std::time::SystemTime::now()));
    row.0.extend(provenance.iter().cloned());
    row.set("solver", value_name(&s.solver))
        .set("normalize", value_name(&s.normalize))
        // The kernel readout's settings, empty for the other solvers (which ignore them).
        .set("kernel_precision", if kernel { value_name(&s.kernel_precision) } else { String::new() })
        .set("kernel", if kernel { s.kernel.to_string() } else { String::new() })
        .set("kernel_views", if kernel { value_name(&s.kernel_views) } else { String::new() })
        .set("wd_search", s.wd_search)
        .set("weight_decay", s.weight_decay)
        .set("chosen_weight_decay", format!("{:.4e}", fitted.chosen_weight_decay))
        .set("epochs", s.epochs)
        .set("lr", s.lr)
        .set("schedule", value_name(&s.schedule))
        .set("probe_batch_size", s.batch_size)
        .set("probe_seed", s.seed)
        .set("val_fraction", s.val_fraction)
        .set("best_epoch", fitted.best_epoch)
        .set("refit", fitted.refit)
        .set("n_train", eval.n_train)
        .set("n_val", eval.val_indices.len())
        .set("n_test", eval.n_test)
        .set("val_acc", frac(fitted.val_acc))
        .set("val_only", s.val_only)
        .set("test_top1", test(|m| m.top1))
        .set("test_top5", test(|m| m.top5))
        .set("mean_per_class_recall", test(|m| m.mean_per_class_recall))
        .set("fit_s", format!("{:.1}", fitted.fit_s))
        .set("run_dir", run_dir.display())
        .set("cnnprobe_version", crate::VERSION)
        .set("libtorch_version", crate::util::device::libtorch_runtime().0);
    row
}

/// Formats an accuracy/fraction with 4 decimals.
pub fn frac(v: f64) -> String {
    format!("{v:.4}")
}
