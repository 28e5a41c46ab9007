//! `cnnprobe sweep`: a grid runs, its aggregate has mean ± sd over seeds, a killed sweep
//! resumes without repeating or losing rows, and unavailable pretrained weights are marked.
mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn rows(path: &Path) -> Vec<csv::StringRecord> {
    let mut rdr = csv::Reader::from_path(path).unwrap();
    rdr.records().map(Result::unwrap).collect()
}

fn column(path: &Path, name: &str) -> Vec<String> {
    let mut rdr = csv::Reader::from_path(path).unwrap();
    let i = rdr.headers().unwrap().iter().position(|c| c == name).unwrap();
    rdr.records().map(|r| r.unwrap()[i].to_string()).collect()
}

fn sweep_args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["sweep", "--data", data, "--stem", "cifar", "--sweep-csv", "sw.csv", "--summary", "s.csv"];
    a.extend_from_slice(extra);
    a.extend_from_slice(QUICK);
    a
}

#[test]
fn grid_runs_and_aggregates_over_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 20);
    let grid = tmp.path().join("grid.json");
    std::fs::write(&grid, r#"{"arch": ["resnet20", "resnet18"], "seed": [0, 1], "weights": ["random", "imagenet"]}"#)
        .unwrap();
    let o = Command::new(BIN)
        .args(sweep_args(
            data.to_str().unwrap(),
            &["--grid", grid.to_str().unwrap(), "--weights-mirror", "http://127.0.0.1:9"],
        ))
        .current_dir(tmp.path())
        .env("CNNPROBE_CACHE_DIR", tmp.path().join(".cache"))
        .env("TORCH_HOME", tmp.path().join("th"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let status = column(&tmp.path().join("sw.csv"), "status");
    assert_eq!(status.iter().filter(|s| *s == "ok").count(), 4, "{status:?}");
    // resnet20 has no torchvision weights; resnet18's cannot be fetched offline.
    assert_eq!(status.iter().filter(|s| s.starts_with("skipped: --weights imagenet")).count(), 2, "{status:?}");
    assert_eq!(status.iter().filter(|s| *s == "not available offline").count(), 2, "{status:?}");
    let agg = tmp.path().join("sw_aggregate.csv");
    let arch = column(&agg, "arch");
    let n = column(&agg, "n");
    let weights = column(&agg, "weights");
    let ok: Vec<(String, String)> = arch
        .iter()
        .zip(&n)
        .zip(&weights)
        .filter(|((_, _), w)| *w == "random")
        .map(|((a, n), _)| (a.clone(), n.clone()))
        .collect();
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|(_, n)| n == "2"), "{ok:?}");
    let sd = column(&agg, "test_top1_sd");
    assert!(sd.iter().any(|v| !v.is_empty()));
}

#[test]
fn killed_sweep_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 20);
    let data = data.to_str().unwrap();
    let args = sweep_args(data, &["--archs", "resnet20", "--seeds", "0..4"]);
    let mut child = Command::new(BIN)
        .args(&args)
        .current_dir(tmp.path())
        .env("CNNPROBE_CACHE_DIR", tmp.path().join(".cache"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let csv = tmp.path().join("sw.csv");
    let start = Instant::now();
    while !csv.exists() || rows(&csv).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "no row after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = rows(&csv).len();
    assert!(before < 4, "the sweep finished before the kill");

    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{before} of 4 configurations were already done")), "{}", stderr(&o));
    let keys = column(&csv, "sweep_key");
    assert_eq!(keys.len(), 4);
    assert_eq!(keys.iter().collect::<std::collections::HashSet<_>>().len(), 4, "a configuration ran twice");
    assert_eq!(column(&csv, "seed"), ["0", "1", "2", "3"]);
    // Once complete, a re-run runs nothing.
    let o = cnnprobe(tmp.path(), &args);
    assert!(stderr(&o).contains("4 of 4 configurations were already done"));
    assert_eq!(rows(&csv).len(), 4);
}

/// The resume key is made of the settings that change results: another thread count (or
/// a flag spelled out at its default) is the same point; another probe setting is not.
#[test]
fn resume_key_ignores_what_cannot_change_results() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 20);
    let data = data.to_str().unwrap();
    let o = cnnprobe(tmp.path(), &sweep_args(data, &["--archs", "resnet20", "--seeds", "0"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut again = sweep_args(data, &["--archs", "resnet20", "--seeds", "0", "--resize", "bilinear"]);
    again.extend(["--threads", "1"]);
    let o = cnnprobe(tmp.path(), &again);
    assert!(stderr(&o).contains("1 of 1 configurations were already done"), "{}", stderr(&o));
    let o = cnnprobe(tmp.path(), &sweep_args(data, &["--archs", "resnet20", "--seeds", "0", "--val-fraction", "0.2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rows(&tmp.path().join("sw.csv")).len(), 2);
}

/// A point that fails at run time is a `failed:` row; the other points still run, and the
/// sweep exits 1 at the end. A re-run tries the failed point again.
#[test]
fn a_failing_point_is_recorded_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 20);
    let data = data.to_str().unwrap();
    let args = sweep_args(data, &["--archs", "resnet20", "--seeds", "0", "--weight-sources", "missing.pth,random"]);
    let o = cnnprobe(tmp.path(), &args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 of 2 configurations failed"), "{}", stderr(&o));
    let status = column(&tmp.path().join("sw.csv"), "status");
    assert_eq!(status.len(), 2, "{status:?}");
    assert!(status[0].starts_with("failed: ") && status[0].contains("missing.pth"), "{status:?}");
    assert_eq!(status[1], "ok");
    let o = cnnprobe(tmp.path(), &args);
    assert!(stderr(&o).contains("1 of 2 configurations were already done"), "{}", stderr(&o));
}
