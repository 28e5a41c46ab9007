//! Results you can audit: checksummed feature files and cache entries, data identified by
//! content, provenance in every row, and `reproduce` of a logged run.
mod common;

use common::*;
use std::path::Path;

fn cell(dir: &Path, col: &str) -> String {
    let mut rdr = csv::Reader::from_path(dir.join("result.csv")).unwrap();
    let h = rdr.headers().unwrap().clone();
    rdr.records().next().unwrap().unwrap()[h.iter().position(|c| c == col).unwrap()].to_string()
}

fn run(cwd: &Path, data: &Path, out: &str) -> std::process::Output {
    let mut args = vec!["run", "--data", data.to_str().unwrap(), "--arch", "resnet20", "--out", out];
    args.extend_from_slice(&["--solver", "lbfgs", "--wd-search", "--summary", "s.csv"]);
    args.extend_from_slice(QUICK);
    cnnprobe(cwd, &args)
}

/// Flips 64 bytes in the middle of a file, keeping its size.
fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_cache_entry_is_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    assert!(run(tmp.path(), &data, "clean").status.success());
    let entry = std::fs::read_dir(tmp.path().join(".cache")).unwrap().next().unwrap().unwrap().path();
    damage(&entry.join("features.safetensors"));
    let o = run(tmp.path(), &data, "again");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    assert_eq!(cell(&tmp.path().join("again"), "cache"), "miss", "the damaged entry was served");
    for col in ["test_top1", "features_sha256", "val_acc"] {
        assert_eq!(cell(&tmp.path().join("clean"), col), cell(&tmp.path().join("again"), col), "{col}");
    }
}

#[test]
fn a_damaged_export_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    for (format, file) in
        [("npy", "train_features.npy"), ("csv", "features.csv"), ("safetensors", "features.safetensors")]
    {
        let dir = format!("x-{format}");
        let args = ["extract", "--data", data.to_str().unwrap(), "--format", format, "-o", &dir, "--device", "cpu"];
        let o = cnnprobe(tmp.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        damage(&tmp.path().join(&dir).join(file));
        let o = cnnprobe(tmp.path(), &["fit", &dir, "--device", "cpu", "--out", "f", "--summary", "s.csv"]);
        assert_eq!(o.status.code(), Some(1), "{format}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(&format!("{dir}/{file}: checksum mismatch")), "{format}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{format}: {err}");
    }
}

#[test]
fn data_are_identified_by_content_not_size_and_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    assert!(run(tmp.path(), &data, "a").status.success());
    // Same size, same mtime, other content.
    let f = data.join("data_batch_2.bin");
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[5000] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), mtime);
    assert!(run(tmp.path(), &data, "b").status.success());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert_ne!(cell(&a, "data_digest"), cell(&b, "data_digest"));
    assert_eq!(cell(&b, "cache"), "miss", "changed data were served from the cache");
    // Every row carries its provenance.
    assert_eq!(cell(&a, "weights_sha256"), "random:seed=0,init=torchvision,width=1");
    assert_eq!(cell(&a, "features_sha256").len(), 64);
    assert!(!cell(&a, "cnnprobe_version").is_empty() && !cell(&a, "libtorch_version").is_empty());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["provenance"]["data_digest"].as_str().unwrap(), cell(&a, "data_digest"));
}

#[test]
fn reproduce_matches_and_names_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    assert!(run(tmp.path(), &data, "r").status.success());
    let o = cnnprobe(tmp.path(), &["reproduce", "r", "--out", "r2"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("reproduced: every input and metric matches"), "{table}");
    assert!(!table.contains("DIFFERS"), "{table}");
    // The rerun logs into its own directory, never the user's summary.
    assert_eq!(std::fs::read_to_string(tmp.path().join("s.csv")).unwrap().lines().count(), 2);
    assert!(tmp.path().join("r2/summary.csv").is_file());

    let f = data.join("test_batch.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    let o = cnnprobe(tmp.path(), &["reproduce", "r", "--out", "r3"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not reproduced: the data differ; differing: data_digest"), "{}", stderr(&o));
}
