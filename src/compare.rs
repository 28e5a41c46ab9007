//! `cnnprobe compare`: random weights over several seeds against torchvision's ImageNet
//! weights, on the same data and probe protocol, as one side-by-side table.
use crate::cli::RunArgs;
use crate::config::{InputNorm, RunConfig, WeightsSource};
use crate::files::write_atomic;
use crate::pipeline;
use crate::report::mean_sd;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// `--seeds`: `0,1,2`, `0..3` (exclusive end, as in Rust) or `0..=2`.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("'{s}': use a list (0,1,2) or a range (0..3, 0..=2)");
    let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..=") {
        let (a, b) = (a.parse::<u64>().map_err(|_| bad())?, b.parse::<u64>().map_err(|_| bad())?);
        (a..=b).collect()
    } else if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (a.parse::<u64>().map_err(|_| bad())?, b.parse::<u64>().map_err(|_| bad())?);
        (a..b).collect()
    } else {
        s.split(',').map(|v| v.trim().parse::<u64>().map_err(|_| bad())).collect::<Result<_, _>>()?
    };
    if seeds.is_empty() {
        return Err(format!("'{s}' contains no seed"));
    }
    Ok(seeds)
}

/// One line of the comparison.
pub struct Group {
    pub weights: String,
    pub seeds: Vec<u64>,
    pub top1: Vec<f64>,
    pub top5: Vec<f64>,
    pub val: Vec<f64>,
    pub note: String,
}

pub fn run(args: RunArgs, seeds: &[u64], table: Option<PathBuf>) -> Result<Vec<Group>> {
    if args.model.weights != WeightsSource::Random {
        bail!("compare runs both random and imagenet weights itself: drop --weights");
    }
    let (input_size, input_norm) = (args.model.input_size, args.model.input_norm);
    let base: RunConfig = args.into_config()?;
    let out_parent = base.out.clone();
    let with_out = |mut c: RunConfig, tag: &str| {
        c.out = out_parent.as_ref().map(|p| p.join(format!("{}-{tag}", c.short_name())));
        c
    };

    let mut random = Group {
        weights: "random".into(),
        seeds: seeds.to_vec(),
        top1: vec![],
        top5: vec![],
        val: vec![],
        note: String::new(),
    };
    for &seed in seeds {
        let mut c = base.clone();
        c.model.seed = seed;
        c.probe.seed = seed;
        let o = pipeline::run(&with_out(c, "random"))?;
        random.top1.push(o.test_top1);
        random.top5.push(o.test_top5);
        random.val.push(o.val_acc);
    }

    let mut pre = Group {
        weights: "imagenet".into(),
        seeds: vec![seeds[0]],
        top1: vec![],
        top5: vec![],
        val: vec![],
        note: String::new(),
    };
    if !base.model.arch.in_torchvision() {
        pre.note = format!("no torchvision ImageNet weights for {}", base.model.arch.name());
    } else if base.model.stem != crate::models::Stem::Imagenet {
        pre.note = "not applicable: torchvision checkpoints have the ImageNet stem".into();
    } else {
        let mut c = base.clone();
        c.weights = WeightsSource::Imagenet;
        c.input_size = input_size.map(|n| n as i64).unwrap_or(224);
        c.input_norm = input_norm.unwrap_or(InputNorm::Imagenet);
        c.model.seed = seeds[0];
        c.probe.seed = seeds[0];
        match crate::models::pretrained::ensure_checkpoint(c.model.arch, c.weights_mirror.as_deref()) {
            Err(e) => pre.note = format!("not available offline ({e:#})"),
            Ok(_) => {
                let o = pipeline::run(&with_out(c, "imagenet"))?;
                pre.top1.push(o.test_top1);
                pre.top5.push(o.test_top5);
                pre.val.push(o.val_acc);
            }
        }
    }
    let groups = vec![random, pre];
    print_table(&base, &groups);
    let path = table.unwrap_or_else(|| {
        PathBuf::from("results").join("compare").join(format!(
            "{}-{}.csv",
            base.data.dataset_name(),
            base.model.arch.name()
        ))
    });
    write_table(&path, &base, &groups)?;
    eprintln!("comparison → {}", path.display());
    Ok(groups)
}

fn cell(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let (m, s) = mean_sd(v);
    format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s)
}

fn print_table(base: &RunConfig, groups: &[Group]) {
    println!("{} on {} (test accuracy %, mean ± sd over seeds)", base.model.arch.name(), base.data.dataset_name());
    println!("{:<10} {:>3}  {:>16}  {:>16}  {:>16}", "weights", "n", "top1", "top5", "val");
    for g in groups {
        println!(
            "{:<10} {:>3}  {:>16}  {:>16}  {:>16}  {}",
            g.weights,
            g.top1.len(),
            cell(&g.top1),
            cell(&g.top5),
            cell(&g.val),
            g.note
        );
    }
}

fn write_table(path: &Path, base: &RunConfig, groups: &[Group]) -> Result<()> {
    write_atomic(path, |w| {
        let mut c = csv::Writer::from_writer(w);
        let mut header = vec!["dataset", "arch", "stem", "weights"];
        header.extend(crate::report::OVER_SEEDS);
        header.push("note");
        c.write_record(&header)?;
        for g in groups {
            let (t1, s1) = if g.top1.is_empty() { (f64::NAN, f64::NAN) } else { mean_sd(&g.top1) };
            let (t5, s5) = if g.top5.is_empty() { (f64::NAN, f64::NAN) } else { mean_sd(&g.top5) };
            let (va, _) = if g.val.is_empty() { (f64::NAN, f64::NAN) } else { mean_sd(&g.val) };
            let f = |x: f64| if x.is_nan() { String::new() } else { format!("{x:.4}") };
            let seeds = g.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
            c.write_record([
                base.data.dataset_name().to_string(),
                base.model.arch.name().to_string(),
                base.model.stem.name().to_string(),
                g.weights.clone(),
                g.top1.len().to_string(),
                seeds,
                f(t1),
                f(s1),
                f(t5),
                f(s5),
                f(va),
                g.note.clone(),
            ])?;
        }
        c.flush()?;
        Ok(())
    })
}
