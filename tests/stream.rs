//! Streaming folders, sharded extraction and merge (issue 16), through the binary.
mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

const FLAGS: [&str; 12] = [
    "--dataset",
    "folder",
    "--arch",
    "resnet18",
    "--stem",
    "cifar",
    "--input-size",
    "24",
    "--center-crop",
    "--hflip",
    "--hflip-test",
    "--skip-bad-images",
];

fn extract(cwd: &Path, data: &Path, out: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cnnprobe"));
    c.current_dir(cwd).env("CNNPROBE_CACHE_DIR", cwd.join(".cache")).env("XDG_CACHE_HOME", cwd.join(".xdg"));
    c.args(["extract", "--data", data.to_str().unwrap(), "--output", out, "--threads", "1"]).args(FLAGS).args(extra);
    c
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("features.json")).unwrap()).unwrap()
}

fn features_sha256(dir: &Path) -> String {
    let m = manifest(dir);
    let p = m["provenance"].as_array().unwrap();
    p.iter().find(|kv| kv[0] == "features_sha256").unwrap()[1].as_str().unwrap().to_string()
}

#[test]
fn shards_run_in_parallel_merge_to_the_bytes_of_one_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (cwd, data) = (tmp.path(), tmp.path().join("imgs"));
    // Non-square images, so --center-crop has work to do, and one unreadable file.
    write_folder(&data, &["b", "a", "c"], 9, 4, 40);
    image::RgbImage::from_fn(52, 30, |x, y| image::Rgb([x as u8 * 4, y as u8 * 8, 90]))
        .save(data.join("train/a/wide.png"))
        .unwrap();
    std::fs::write(data.join("train/c/0003.jpg"), b"not a jpeg").unwrap();

    // One process, one worker, small batches ...
    ok(&extract(cwd, &data, "whole", &["--workers", "1", "--batch-size", "5"]).output().unwrap());
    // ... against four shards at once, several workers and the default batch.
    let shards: Vec<_> = (0..4)
        .map(|k| {
            extract(cwd, &data, &format!("s{k}"), &["--shard", &format!("{k}/4"), "--workers", "3"]).spawn().unwrap()
        })
        .collect();
    for mut s in shards {
        assert!(s.wait().unwrap().success());
    }
    let o = cnnprobe(cwd, &["merge", "s3", "s1", "s0", "s2", "--output", "merged"]);
    ok(&o);
    let whole = manifest(&cwd.join("whole"));
    assert_eq!(whole["n_train"], 27, "28 train images less the unreadable one");
    for part in ["train", "test", "train_flip", "test_flip"] {
        for kind in ["features", "labels"] {
            let name = format!("{part}_{kind}.npy");
            let (a, b) = (
                std::fs::read(cwd.join("whole").join(&name)).unwrap(),
                std::fs::read(cwd.join("merged").join(&name)).unwrap(),
            );
            assert!(a == b, "{name}: merged shards differ from the unsharded run");
        }
    }
    assert_eq!(features_sha256(&cwd.join("whole")), features_sha256(&cwd.join("merged")));
    assert_eq!(manifest(&cwd.join("merged"))["sha256"], whole["sha256"]);

    // The in-memory path (`run`) computes the same numbers as the streamed export.
    let mut args =
        vec!["run", "--data", data.to_str().unwrap(), "--out", "r", "--summary", "sum.csv", "--threads", "1"];
    args.extend(FLAGS);
    args.extend(["--solver", "lbfgs"]);
    let o = cnnprobe(cwd, &args);
    ok(&o);
    let summary = std::fs::read_to_string(cwd.join("sum.csv")).unwrap();
    assert!(summary.contains(&features_sha256(&cwd.join("whole"))), "run's features_sha256 differs from extract's");

    // Refusals: one line each, nothing written.
    let refuse = |args: &[&str], want: &str| {
        let o = cnnprobe(cwd, args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.trim_end().lines().count() == 1 && e.contains(want), "{e}");
        assert!(!cwd.join("bad").join("features.json").exists());
    };
    refuse(&["merge", "s0", "s1", "s3", "-o", "bad"], "shard 2/4 is missing");
    refuse(&["merge", "s0", "s1", "s1", "s2", "s3", "-o", "bad"], "shard 1/4 is given twice");
    refuse(&["merge", "s0", "whole", "-o", "bad"], "is not a shard");
    ok(&extract(cwd, &data, "other", &["--shard", "1/4", "--seed", "3"]).output().unwrap());
    refuse(&["merge", "s0", "other", "s2", "s3", "-o", "bad"], "different extractions (differing: seed");
    ok(&extract(cwd, &data, "three", &["--shard", "1/3"]).output().unwrap());
    refuse(&["merge", "s0", "three", "-o", "bad"], "is shard 1/3");
    std::fs::write(cwd.join("s2/test_features.npy"), b"damaged").unwrap();
    refuse(&["merge", "s0", "s1", "s2", "s3", "-o", "bad"], "checksum mismatch");
}

#[test]
fn every_format_streams_to_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (cwd, data) = (tmp.path(), tmp.path().join("imgs"));
    write_folder(&data, &["x", "y"], 6, 3, 32);
    let mut digests = vec![];
    for f in ["npy", "csv", "safetensors"] {
        ok(&extract(cwd, &data, f, &["--format", f, "--batch-size", "4"]).output().unwrap());
        digests.push(features_sha256(&cwd.join(f)));
        // And the files read back (checksums verified) into a probe.
        ok(&cnnprobe(cwd, &["fit", f, "--out", &format!("fit-{f}"), "--solver", "lbfgs"]));
    }
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
}

#[test]
fn scan_counts_images_and_unreadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("imgs");
    write_folder(&data, &["x", "y"], 5, 2, 32);
    std::fs::write(data.join("test/y/0001.jpg"), b"").unwrap();
    let d = data.to_str().unwrap();
    let o = cnnprobe(tmp.path(), &["scan", "--dataset", "folder", "--data", d, "--skip-bad-images", "--workers", "2"]);
    ok(&o);
    assert!(stderr(&o).contains("scan: 13 images") && stderr(&o).contains("1 unreadable"), "{}", stderr(&o));
    let o = cnnprobe(tmp.path(), &["scan", "--dataset", "folder", "--data", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("0001.jpg: unreadable image"), "{}", stderr(&o));
}

#[test]
fn fit_says_when_features_do_not_fit_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let (cwd, data) = (tmp.path(), tmp.path().join("imgs"));
    write_folder(&data, &["x", "y"], 6, 3, 32);
    ok(&extract(cwd, &data, "f", &[]).output().unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_cnnprobe"))
        .current_dir(cwd)
        .env("CNNPROBE_MEMORY_LIMIT", "100M")
        .args(["fit", "f", "--out", "r"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--limit N") && stderr(&o).contains("GB is available"), "{}", stderr(&o));
    assert!(!cwd.join("r").exists(), "a refused fit must leave no run directory");
}
