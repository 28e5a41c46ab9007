//! The feature cache: a miss stores, a hit reuses (same numbers, no extraction), a
//! changed setting or data file misses, and a corrupted entry is replaced.
mod common;

use common::*;
use std::path::Path;

fn run(cwd: &Path, data: &Path, out: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["run", "--data", data.to_str().unwrap(), "--out", out, "--summary", "s.csv"];
    args.extend_from_slice(extra);
    args.extend_from_slice(QUICK);
    let o = cnnprobe(cwd, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut rdr = csv::Reader::from_path(cwd.join(out).join("result.csv")).unwrap();
    let h = rdr.headers().unwrap().clone();
    let row = rdr.records().next().unwrap().unwrap();
    let get = |c: &str| row[h.iter().position(|x| x == c).unwrap()].to_string();
    (get("cache"), get("test_top1"))
}

fn entries(cwd: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cwd.join(".cache")).unwrap().map(|e| e.unwrap().path()).collect()
}

#[test]
fn miss_then_hit_then_miss_on_change() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    let (c1, t1) = run(tmp.path(), &data, "a", &[]);
    let (c2, t2) = run(tmp.path(), &data, "b", &[]);
    assert_eq!((c1.as_str(), c2.as_str()), ("miss", "hit"));
    assert_eq!(t1, t2, "a cache hit gives the same result");
    assert_eq!(entries(tmp.path()).len(), 1);
    // A setting that changes features is another entry; a probe setting is not.
    assert_eq!(run(tmp.path(), &data, "c", &["--seed", "1"]).0, "miss");
    assert_eq!(run(tmp.path(), &data, "d", &["--weight-decay", "0.02"]).0, "hit");
    // A changed data file is another entry.
    let f = data.join("test_batch.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[100] ^= 1;
    bytes.extend(std::fs::read(&f).unwrap()[..3073].to_vec());
    std::fs::write(&f, bytes).unwrap();
    assert_eq!(run(tmp.path(), &data, "e", &[]).0, "miss");
    assert_eq!(entries(tmp.path()).len(), 3);
    // --no-cache neither reads nor writes.
    let mut args = vec!["run", "--data", data.to_str().unwrap(), "--out", "f", "--summary", "s.csv", "--no-cache"];
    args.extend_from_slice(QUICK);
    assert!(cnnprobe(tmp.path(), &args).status.success());
    assert_eq!(entries(tmp.path()).len(), 3);
}

#[test]
fn corrupted_entry_is_extracted_again() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 20);
    let (_, t1) = run(tmp.path(), &data, "a", &[]);
    let entry = entries(tmp.path()).pop().unwrap();
    let f = entry.join("features.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();
    let mut args = vec!["run", "--data", data.to_str().unwrap(), "--out", "b", "--summary", "s.csv"];
    args.extend_from_slice(QUICK);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("is unreadable"), "{}", stderr(&o));
    let (c, t2) = run(tmp.path(), &data, "c", &[]);
    assert_eq!(c, "hit", "the entry was rebuilt");
    assert_eq!(t1, t2);
}
