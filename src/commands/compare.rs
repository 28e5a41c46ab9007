//! `cnnprobe compare`: random weights over several seeds against torchvision's ImageNet
//! weights, on the same data and probe protocol, as one side-by-side table.
use super::run::run;
use crate::config::{CompareConfig, RunConfig};
use crate::models::pretrained;
use crate::report::aggregate::{OverSeeds, OVER_SEEDS};
use crate::util::files::write_atomic;
use anyhow::Result;
use std::path::Path;

/// One line of the comparison.
pub struct Group {
    pub weights: String,
    pub results: OverSeeds,
    pub note: String,
}

pub fn compare(cfg: &CompareConfig) -> Result<Vec<Group>> {
    let mut random = Group { weights: "random".into(), results: OverSeeds::default(), note: String::new() };
    for &seed in &cfg.seeds {
        let o = run(&in_subdir(cfg.random.with_seed(seed), "random"))?;
        random.results.push(seed, o.test_top1, o.test_top5, o.val_acc);
    }
    let seed = cfg.seeds[0];
    let mut pre = Group {
        weights: "imagenet".into(),
        results: OverSeeds { seeds: vec![seed], ..Default::default() },
        note: String::new(),
    };
    match &cfg.pretrained {
        Err(why) => pre.note = why.clone(),
        Ok(c) => match pretrained::ensure_checkpoint(c.extract.model.arch, c.extract.weights_mirror.as_deref()) {
            Err(e) => pre.note = format!("not available offline ({e:#})"),
            Ok(_) => {
                let o = run(&in_subdir(c.with_seed(seed), "imagenet"))?;
                pre.results = OverSeeds::default();
                pre.results.push(seed, o.test_top1, o.test_top5, o.val_acc);
            }
        },
    }
    let groups = vec![random, pre];
    print_table(&cfg.random, &groups);
    write_table(&cfg.table, &cfg.random, &groups)?;
    eprintln!("comparison → {}", cfg.table.display());
    Ok(groups)
}

/// With `--out DIR`, each run gets `DIR/<short name>-<tag>`.
fn in_subdir(mut c: RunConfig, tag: &str) -> RunConfig {
    c.output.out = c.output.out.as_ref().map(|p| p.join(format!("{}-{tag}", c.extract.short_name())));
    c
}

fn print_table(base: &RunConfig, groups: &[Group]) {
    let e = &base.extract;
    println!("{} on {} (test accuracy %, mean ± sd over seeds)", e.model.arch.name(), e.data.dataset_name());
    println!("{:<10} {:>3}  {:>16}  {:>16}  {:>16}", "weights", "n", "top1", "top5", "val");
    for g in groups {
        let r = &g.results;
        println!(
            "{:<10} {:>3}  {:>16}  {:>16}  {:>16}  {}",
            g.weights,
            r.top1.len(),
            OverSeeds::percent(&r.top1),
            OverSeeds::percent(&r.top5),
            OverSeeds::percent(&r.val),
            g.note
        );
    }
}

fn write_table(path: &Path, base: &RunConfig, groups: &[Group]) -> Result<()> {
    let e = &base.extract;
    write_atomic(path, |w| {
        let mut c = csv::Writer::from_writer(w);
        let mut header = vec!["dataset", "arch", "stem", "weights"];
        header.extend(OVER_SEEDS);
        header.push("note");
        c.write_record(&header)?;
        for g in groups {
            let mut row = vec![
                e.data.dataset_name().to_string(),
                e.model.arch.name().to_string(),
                e.model.stem.name().to_string(),
                g.weights.clone(),
            ];
            row.extend(g.results.cells());
            row.push(g.note.clone());
            c.write_record(&row)?;
        }
        c.flush()?;
        Ok(())
    })
}
