//! `cnnprobe sweep`: a grid of architectures × inits × seeds × weights × pool sizes × BN
//! settings, each run appended to one sweep CSV as it finishes. Re-running skips the
//! configurations already in the CSV, so a killed sweep resumes where it stopped. An
//! aggregate CSV (mean ± sd and n over seeds) is rewritten after every run.
use crate::cli::{RunArgs, SweepArgs};
use crate::config::{BnSetting, WeightsSource};
use crate::files::write_atomic;
use crate::models::init::InitScheme;
use crate::models::Arch;
use crate::pipeline;
use crate::report::mean_sd;
use crate::report::Row;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The axes of a sweep (a `--grid` JSON file has the same keys, each a list).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    pub arch: Option<Vec<String>>,
    pub init: Option<Vec<String>>,
    pub seed: Option<Vec<u64>>,
    pub weights: Option<Vec<String>>,
    pub pool_size: Option<Vec<usize>>,
    pub bn: Option<Vec<String>>,
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
];

/// One configuration of the grid, as the run flags it changes.
struct Point {
    arch: Arch,
    init: InitScheme,
    seed: u64,
    weights: WeightsSource,
    pool_size: usize,
    bn: BnSetting,
}

pub fn run(args: &SweepArgs) -> Result<()> {
    let file: Grid = match &args.grid {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("--grid {}: cannot read", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("--grid {}: not a valid grid", p.display()))?
        }
        None => Grid::default(),
    };
    let base = &args.run;
    let archs: Vec<Arch> = match file.arch.as_ref() {
        Some(v) => v
            .iter()
            .map(|a| Arch::from_str(a, false).map_err(|_| anyhow::anyhow!("--grid: unknown arch '{a}'")))
            .collect::<Result<_>>()?,
        None if !args.archs.is_empty() => args.archs.clone(),
        None => vec![base.model.arch],
    };
    let inits: Vec<InitScheme> = match file.init.as_ref() {
        Some(v) => {
            v.iter().map(|s| s.parse().map_err(|e: String| anyhow::anyhow!("--grid: {e}"))).collect::<Result<_>>()?
        }
        None if !args.inits.is_empty() => args.inits.clone(),
        None => vec![base.model.init],
    };
    let seeds = file.seed.clone().unwrap_or_else(|| args.seeds.clone());
    let weights: Vec<WeightsSource> = match file.weights.as_ref() {
        Some(v) => {
            v.iter().map(|s| s.parse().map_err(|e: String| anyhow::anyhow!("--grid: {e}"))).collect::<Result<_>>()?
        }
        None if !args.weight_sources.is_empty() => args.weight_sources.clone(),
        None => vec![base.model.weights.clone()],
    };
    let pools = file.pool_size.clone().unwrap_or_else(|| {
        if args.pool_sizes.is_empty() {
            vec![base.model.pool_size]
        } else {
            args.pool_sizes.clone()
        }
    });
    let bns: Vec<BnSetting> = match file.bn.as_ref() {
        Some(v) => {
            v.iter().map(|s| s.parse().map_err(|e: String| anyhow::anyhow!("--grid: {e}"))).collect::<Result<_>>()?
        }
        None if !args.bns.is_empty() => args.bns.clone(),
        None => vec![base.model.bn],
    };
    let mut points = Vec::new();
    for &arch in &archs {
        for &init in &inits {
            for w in &weights {
                for &pool_size in &pools {
                    for &bn in &bns {
                        for &seed in &seeds {
                            points.push(Point { arch, init, seed, weights: w.clone(), pool_size, bn });
                        }
                    }
                }
            }
        }
    }
    if points.is_empty() {
        bail!("the sweep grid is empty");
    }
    let done = completed(&args.sweep_csv)?;
    let total = points.len();
    let mut skipped = 0;
    for (i, p) in points.into_iter().enumerate() {
        let run_args = apply(base, &p);
        let key = point_key(&run_args);
        if done.contains(&key) {
            skipped += 1;
            continue;
        }
        eprintln!(
            "sweep [{}/{total}] {} init={} seed={} weights={} pool={} bn={}",
            i + 1,
            p.arch.name(),
            p.init,
            p.seed,
            p.weights,
            p.pool_size,
            p.bn
        );
        let mut row = Row::default();
        row.set("sweep_key", &key);
        match run_args.clone().into_config() {
            Err(e) => {
                row.set("status", format!("skipped: {e:#}"));
                describe(&mut row, &p);
            }
            Ok(cfg) => {
                let pretrained_offline = cfg.weights == WeightsSource::Imagenet
                    && crate::models::pretrained::ensure_checkpoint(cfg.model.arch, cfg.weights_mirror.as_deref())
                        .is_err();
                if pretrained_offline {
                    row.set("status", "not available offline");
                    describe(&mut row, &p);
                } else {
                    let outcome = pipeline::run(&cfg)?;
                    row.set("status", "ok");
                    let result = csv_row(&outcome.run_dir.join("result.csv"))?;
                    row.0.extend(result);
                }
            }
        }
        row.append_to(&args.sweep_csv)?;
        write_aggregate(&args.sweep_csv, &aggregate_path(&args.sweep_csv))?;
    }
    if skipped > 0 {
        eprintln!("sweep: {skipped} of {total} configurations were already done ({})", args.sweep_csv.display());
    }
    write_aggregate(&args.sweep_csv, &aggregate_path(&args.sweep_csv))?;
    eprintln!("sweep: {} and {}", args.sweep_csv.display(), aggregate_path(&args.sweep_csv).display());
    Ok(())
}

fn describe(row: &mut Row, p: &Point) {
    row.set("arch", p.arch.name())
        .set("init", p.init)
        .set("seed", p.seed)
        .set("weights", &p.weights)
        .set("pool_size", p.pool_size)
        .set("bn", p.bn);
}

fn apply(base: &RunArgs, p: &Point) -> RunArgs {
    let mut a = base.clone();
    a.model.arch = p.arch;
    a.model.init = p.init;
    a.model.seed = p.seed;
    a.model.weights = p.weights.clone();
    a.model.pool_size = p.pool_size;
    a.model.bn = p.bn;
    // CIFAR ResNets have only the CIFAR stem: the base stem applies to the others.
    if p.arch.is_cifar_resnet() {
        a.model.stem = None;
    } else if p.weights == WeightsSource::Imagenet {
        // Pretrained means torchvision's network as published: its ImageNet stem.
        a.model.stem = Some(crate::models::Stem::Imagenet);
    }
    a
}

/// Identifies a configuration: every flag of the run except where results are written.
fn point_key(a: &RunArgs) -> String {
    let mut a = a.clone();
    a.output.out = None;
    a.output.summary = PathBuf::new();
    let digest = Sha256::digest(format!("{:?}{:?}{:?}", a.data, a.model, a.probe).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

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
    for rec in rdr.records().flatten() {
        if let Some(v) = rec.get(k) {
            keys.insert(v.to_string());
        }
    }
    Ok(keys)
}

fn csv_row(path: &Path) -> Result<Vec<(String, String)>> {
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let h = rdr.headers()?.clone();
    let rec = rdr.records().next().context("empty result.csv")??;
    Ok(h.iter().zip(rec.iter()).map(|(a, b)| (a.to_string(), b.to_string())).collect())
}

pub fn aggregate_path(sweep: &Path) -> PathBuf {
    let stem = sweep.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into());
    sweep.with_file_name(format!("{stem}_aggregate.csv"))
}

/// The results of one configuration over its seeds.
#[derive(Default)]
struct Seeds {
    seeds: Vec<u64>,
    top1: Vec<f64>,
    top5: Vec<f64>,
    val: Vec<f64>,
    status: String,
}

/// Mean ± sd and n over seeds of each configuration (rows with status ok), plus one line
/// for each configuration that could not run, with its status.
pub fn write_aggregate(sweep: &Path, out: &Path) -> Result<()> {
    let mut rdr = csv::Reader::from_path(sweep).with_context(|| format!("cannot read {}", sweep.display()))?;
    let h = rdr.headers()?.clone();
    let col = |name: &str| h.iter().position(|c| c == name);
    let mut groups: BTreeMap<Vec<String>, Seeds> = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec?;
        let get = |name: &str| col(name).and_then(|i| rec.get(i)).unwrap_or("").to_string();
        let key: Vec<String> = GROUP.iter().map(|g| get(g)).collect();
        let e = groups.entry(key).or_default();
        let status = get("status");
        if status == "ok" {
            e.seeds.push(get("seed").parse().unwrap_or(0));
            e.top1.push(get("test_top1").parse().unwrap_or(f64::NAN));
            e.top5.push(get("test_top5").parse().unwrap_or(f64::NAN));
            e.val.push(get("val_acc").parse().unwrap_or(f64::NAN));
        } else if e.status.is_empty() {
            e.status = status;
        }
    }
    write_atomic(out, |w| {
        let mut c = csv::Writer::from_writer(w);
        let mut header: Vec<String> = GROUP.iter().map(|s| s.to_string()).collect();
        header.extend(crate::report::OVER_SEEDS.iter().chain(&["status"]).map(|s| s.to_string()));
        c.write_record(&header)?;
        for (key, Seeds { seeds, top1: t1, top5: t5, val: va, status }) in &groups {
            let mut r = key.clone();
            if t1.is_empty() {
                r.extend([
                    "0".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    status.clone(),
                ]);
            } else {
                let ((m1, s1), (m5, s5), (mv, _)) = (mean_sd(t1), mean_sd(t5), mean_sd(va));
                r.extend([
                    t1.len().to_string(),
                    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
                    format!("{m1:.4}"),
                    format!("{s1:.4}"),
                    format!("{m5:.4}"),
                    format!("{s5:.4}"),
                    format!("{mv:.4}"),
                    "ok".into(),
                ]);
            }
            c.write_record(&r)?;
        }
        c.flush()?;
        Ok(())
    })
}
