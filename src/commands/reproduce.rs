//! `cnnprobe reproduce RUN_DIR`: reruns a logged `run` or `fit` from its config.json into a
//! fresh directory, then compares what went in (data, weights, features: by content digest)
//! and what came out (every metric) with the logged result.
use super::{fit::fit, run::run};
use crate::config::{FitConfig, ReproduceJob, RunConfig};
use crate::report::summary::Row;
use crate::report::OutputConfig;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Inputs, compared as text (digests must be equal).
const INPUTS: [&str; 3] = ["data_digest", "weights_sha256", "features_sha256"];
/// Metrics, compared as numbers within the tolerance.
const METRICS: [&str; 5] = ["chosen_weight_decay", "val_acc", "test_top1", "test_top5", "mean_per_class_recall"];

pub fn reproduce(job: &ReproduceJob) -> Result<()> {
    let path = job.run_dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let logged: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let before = Row::read_single(&job.run_dir.join("result.csv"))?;
    let out = job.out.clone().unwrap_or_else(|| job.run_dir.join(format!("reproduce-{}", stamp())));
    let bad_config =
        || format!("{}: not a config.json that `run` or `fit` wrote (cnnprobe 0.2 or later)", path.display());
    let after_dir = match logged.get("command").and_then(|c| c.as_str()) {
        Some("run") => {
            let mut cfg: RunConfig = serde_json::from_value(logged.clone()).with_context(bad_config)?;
            redirect(&mut cfg.output, &out);
            if !job.use_cache {
                cfg.output.cache_dir = None;
            }
            run(&cfg)?.run_dir
        }
        Some("fit") => {
            let mut cfg: FitConfig = serde_json::from_value(logged.clone()).with_context(bad_config)?;
            redirect(&mut cfg.output, &out);
            fit(&cfg)?.run_dir
        }
        _ => bail!(bad_config()),
    };
    let after = Row::read_single(&after_dir.join("result.csv"))?;
    let differ = compare(&before, &after, job.tolerance);
    if differ.is_empty() {
        println!("reproduced: every input and metric matches ({})", after_dir.display());
        return Ok(());
    }
    let inputs: Vec<&str> = differ.iter().copied().filter(|d| INPUTS.contains(d)).collect();
    let why = match inputs.first() {
        Some(&"data_digest") => "the data differ",
        Some(&"weights_sha256") => "the weights differ",
        Some(_) => "the features differ (same data and weights: another machine, build or precision?)",
        None => "the metrics differ",
    };
    bail!("not reproduced: {why}; differing: {} (rerun in {})", differ.join(", "), after_dir.display())
}

/// The rerun writes only under `out`: never the user's summary, and a saved head goes there too.
fn redirect(output: &mut OutputConfig, out: &Path) {
    output.out = Some(out.to_path_buf());
    output.summary = out.join("summary.csv");
    output.save_head = output.save_head.as_ref().map(|_| out.join("head.safetensors"));
}

/// Prints each input and metric side by side; returns the names that differ.
fn compare<'a>(before: &Row, after: &Row, tolerance: f64) -> Vec<&'a str> {
    println!("{:<22} {:<20} {:<20} verdict", "", "logged", "rerun");
    let mut differ = Vec::new();
    for name in INPUTS.iter().chain(&METRICS) {
        let (a, b) = (before.get(name).unwrap_or(""), after.get(name).unwrap_or(""));
        let same = match (a.parse::<f64>(), b.parse::<f64>()) {
            _ if a == b => true,
            (Ok(x), Ok(y)) if METRICS.contains(name) => (x - y).abs() <= tolerance,
            _ => false,
        };
        let short = |v: &str| if v.len() > 18 { format!("{}…", &v[..17]) } else { v.to_string() };
        println!("{name:<22} {:<20} {:<20} {}", short(a), short(b), if same { "match" } else { "DIFFERS" });
        if !same {
            differ.push(*name);
        }
    }
    differ
}

fn stamp() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect()
}
