//! End-to-end runs of the real binary on synthetic CIFAR fixtures.
mod common;

use common::*;

#[test]
fn run_writes_epochs_config_result_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 40, 50);
    let data = data.to_str().unwrap();
    let mut args = vec!["run", "--data", data, "--stem", "imagenet", "--seed", "3", "--out", "run1"];
    args.extend_from_slice(QUICK);
    let out = cnnprobe(tmp.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));

    let run = tmp.path().join("run1");
    let epochs = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    let lines: Vec<&str> = epochs.lines().collect();
    assert_eq!(lines[0], "epoch,train_loss,train_acc,val_acc,val_loss,lr,elapsed_s");
    assert_eq!(lines.len(), 1 + 5, "one row per epoch");
    for l in &lines[1..] {
        let cells: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
        assert_eq!(cells.len(), 7);
        assert!(cells[1].is_finite() && (0.0..=1.0).contains(&cells[2]) && (0.0..=1.0).contains(&cells[3]));
    }

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["extract"]["model"]["seed"], 3);
    assert_eq!(cfg["extract"]["model"]["arch"], "resnet18");
    assert_eq!(cfg["extract"]["model"]["init"], "torchvision");
    assert_eq!(cfg["extract"]["bn"], "eval");
    assert_eq!(cfg["probe"]["epochs"], 5);

    let mut rdr = csv::Reader::from_path(tmp.path().join("runs/summary.csv")).unwrap();
    let header = rdr.headers().unwrap().clone();
    for col in [
        "dataset",
        "arch",
        "stem",
        "init",
        "seed",
        "weights",
        "device",
        "feature_dim",
        "n_train",
        "n_val",
        "n_test",
        "val_acc",
        "test_top1",
        "test_top5",
        "extract_s",
        "images_per_s",
        "fit_s",
        "cnnprobe_version",
        "libtorch_version",
    ] {
        assert!(header.iter().any(|h| h == col), "summary lacks column {col}");
    }
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    let get = |c: &str| rows[0][header.iter().position(|h| h == c).unwrap()].to_string();
    assert_eq!(get("feature_dim"), "512");
    assert_eq!(get("n_train"), "180");
    assert_eq!(get("n_val"), "20");
    assert_eq!(get("n_test"), "50");
    // Run time (the library the binary loaded) against build time (build.rs's reading).
    assert!(get("libtorch_version").starts_with("2."), "{}", get("libtorch_version"));
    assert_eq!(get("libtorch_version"), cnnprobe::LIBTORCH_VERSION);
    let top1: f64 = get("test_top1").parse().unwrap();
    let top5: f64 = get("test_top5").parse().unwrap();
    // Colour-coded classes are easy even for random features: a probe that learned nothing scores ~0.1.
    assert!(top1 > 0.5, "test top1 {top1}");
    assert!(top5 >= top1);

    // A second run appends a second row under the same header.
    let mut args2 = vec!["run", "--data", data, "--stem", "cifar", "--seed", "4", "--out", "run2"];
    args2.extend_from_slice(QUICK);
    let out = cnnprobe(tmp.path(), &args2);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(tmp.path().join("runs/summary.csv")).unwrap();
    assert_eq!(text.lines().count(), 3);
}

#[test]
fn same_seed_same_result_different_seed_different_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 30);
    let data = data.to_str().unwrap();
    let run = |seed: &str, out: &str| {
        let mut a = vec!["run", "--data", data, "--seed", seed, "--out", out, "--summary", "s.csv"];
        a.extend_from_slice(QUICK);
        let o = cnnprobe(tmp.path(), &a);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(tmp.path().join(out).join("epochs.csv")).unwrap()
    };
    let strip = |s: String| s.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect::<Vec<_>>();
    let a = strip(run("1", "a"));
    let b = strip(run("1", "b"));
    let c = strip(run("2", "c"));
    assert_eq!(a, b, "same seed, same losses and accuracies");
    assert_ne!(a, c);
}

/// A user's run never edits a checkout's committed files: default outputs go to `runs/`.
#[test]
fn default_run_dir_is_timestamped_under_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 20);
    let mut a = vec!["run", "--data", data.to_str().unwrap(), "--seed", "7"];
    a.extend_from_slice(QUICK);
    let o = cnnprobe(tmp.path(), &a);
    assert!(o.status.success(), "{}", stderr(&o));
    let runs: Vec<String> = std::fs::read_dir(tmp.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 1);
    assert!(tmp.path().join("runs/summary.csv").is_file());
    assert!(!tmp.path().join("results").exists());
    assert!(runs[0].ends_with("-cifar10-resnet18-imagenet-s7"), "{}", runs[0]);
    assert!(runs[0].chars().take(8).all(|c| c.is_ascii_digit()));
}
