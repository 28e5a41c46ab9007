//! Results over seeds: the columns and statistics that compare tables and sweep
//! aggregates share.
use crate::util::files::write_atomic;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// Test and validation accuracies of one configuration, one entry per seed.
#[derive(Clone, Debug, Default)]
pub struct OverSeeds {
    pub seeds: Vec<u64>,
    pub top1: Vec<f64>,
    pub top5: Vec<f64>,
    pub val: Vec<f64>,
}

impl OverSeeds {
    pub fn push(&mut self, seed: u64, top1: f64, top5: f64, val: f64) {
        self.seeds.push(seed);
        self.top1.push(top1);
        self.top5.push(top5);
        self.val.push(val);
    }

    /// The `OVER_SEEDS` cells; empty statistics when nothing finished.
    pub fn cells(&self) -> Vec<String> {
        let n = self.top1.len();
        let seeds = self.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        if n == 0 {
            return [vec!["0".to_string(), seeds], vec![String::new(); 5]].concat();
        }
        let ((m1, s1), (m5, s5), (mv, _)) = (mean_sd(&self.top1), mean_sd(&self.top5), mean_sd(&self.val));
        let f = |x: f64| if x.is_nan() { String::new() } else { format!("{x:.4}") };
        vec![n.to_string(), seeds, f(m1), f(s1), f(m5), f(s5), f(mv)]
    }

    /// `mean ± sd` in percent of a list of fractions, or n/a.
    pub fn percent(v: &[f64]) -> String {
        if v.is_empty() {
            return "n/a".into();
        }
        let (m, s) = mean_sd(v);
        format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s)
    }
}

/// Columns that identify a configuration across seeds, for the aggregate.
const GROUP: &[&str] = &[
    "dataset",
    "labels",
    "arch",
    "stem",
    "init",
    "weights",
    "input_size",
    "bn",
    "features",
    "pool",
    "pool_size",
    "precision",
    "solver",
    "normalize",
    "wd_search",
    "kernel_precision",
    "kernel",
    "kernel_views",
];

/// `sweep.csv` → `sweep_aggregate.csv`.
pub fn aggregate_path(sweep: &Path) -> PathBuf {
    let stem = sweep.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into());
    sweep.with_file_name(format!("{stem}_aggregate.csv"))
}

/// Mean ± sd and n over seeds of each configuration (rows with status ok), plus one line
/// for each configuration that could not run, with its status.
pub fn write_aggregate(sweep: &Path, out: &Path) -> Result<()> {
    let mut rdr = csv::Reader::from_path(sweep).with_context(|| format!("cannot read {}", sweep.display()))?;
    let h = rdr.headers()?.clone();
    let col = |name: &str| h.iter().position(|c| c == name);
    let mut groups: BTreeMap<Vec<String>, (OverSeeds, String)> = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec?;
        let get = |name: &str| col(name).and_then(|i| rec.get(i)).unwrap_or("").to_string();
        let num = |name: &str| get(name).parse().unwrap_or(f64::NAN);
        let key: Vec<String> = GROUP.iter().map(|g| get(g)).collect();
        let (results, status) = groups.entry(key).or_default();
        let row_status = get("status");
        if row_status == "ok" {
            results.push(get("seed").parse().unwrap_or(0), num("test_top1"), num("test_top5"), num("val_acc"));
        } else if status.is_empty() {
            *status = row_status;
        }
    }
    write_atomic(out, |w| {
        let mut c = csv::Writer::from_writer(w);
        let mut header: Vec<&str> = GROUP.to_vec();
        header.extend(OVER_SEEDS.iter().chain(&["status"]));
        c.write_record(&header)?;
        for (key, (results, status)) in &groups {
            let mut r = key.clone();
            r.extend(results.cells());
            r.push(if results.top1.is_empty() { status.clone() } else { "ok".into() });
            c.write_record(&r)?;
        }
        c.flush()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_of_nothing_and_of_two_seeds() {
        let mut o = OverSeeds { seeds: vec![3], ..Default::default() };
        assert_eq!(o.cells(), ["0", "3", "", "", "", "", ""]);
        o = OverSeeds::default();
        o.push(0, 0.5, 0.9, 0.4);
        o.push(1, 0.7, 0.9, 0.6);
        assert_eq!(o.cells(), ["2", "0 1", "0.6000", "0.1414", "0.9000", "0.0000", "0.5000"]);
    }
}
