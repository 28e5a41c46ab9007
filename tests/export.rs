//! `extract` → feature files → `fit`: every format round-trips, `fit` reproduces `run`,
//! numpy reads the .npy files, and damaged files are clear errors.
mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const FAST_EXTRACT: &[&str] = &["--device", "cpu", "--threads", "2", "--batch-size", "64"];

fn extract(cwd: &Path, data: &Path, format: &str, out: &str) {
    let mut args =
        vec!["extract", "--data", data.to_str().unwrap(), "--format", format, "--output", out, "--seed", "2"];
    args.extend_from_slice(FAST_EXTRACT);
    let o = cnnprobe(cwd, &args);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn fit(cwd: &Path, dir: &str, out: &str) -> std::process::Output {
    cnnprobe(
        cwd,
        &["fit", dir, "--device", "cpu", "--solver", "lbfgs", "--wd-search", "--out", out, "--summary", "s.csv"],
    )
}

/// Drops features.json's checksums, as in a hand-written manifest or one from before 0.2:
/// the readers' own checks (shapes, ragged rows, NaN) must then catch damage by themselves.
fn strip_checksums(dir: &Path) {
    let path = dir.join("features.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("sha256");
    std::fs::write(&path, m.to_string()).unwrap();
}

/// The same features exported as npy/, csv/ and st/ (safetensors), checksums dropped.
fn exports_without_checksums() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    for (format, dir) in [("npy", "npy"), ("csv", "csv"), ("safetensors", "st")] {
        extract(tmp.path(), &data, format, dir);
        strip_checksums(&tmp.path().join(dir));
    }
    tmp
}

fn result_cell(cwd: &Path, run: &str, col: &str) -> String {
    let mut rdr = csv::Reader::from_path(cwd.join(run).join("result.csv")).unwrap();
    let h = rdr.headers().unwrap().clone();
    let row = rdr.records().next().unwrap().unwrap();
    row[h.iter().position(|c| c == col).unwrap()].to_string()
}

#[test]
fn every_format_round_trips_and_fit_matches_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 30);
    for format in ["npy", "csv", "safetensors"] {
        extract(tmp.path(), &data, format, format);
        let o = fit(tmp.path(), format, &format!("fit-{format}"));
        assert!(o.status.success(), "{format}: {}", stderr(&o));
    }
    let mut args = vec![
        "run",
        "--data",
        data.to_str().unwrap(),
        "--seed",
        "2",
        "--solver",
        "lbfgs",
        "--wd-search",
        "--out",
        "run",
        "--summary",
        "s.csv",
    ];
    args.extend_from_slice(FAST_EXTRACT);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    // Same features, seed and probe: the same numbers, whichever way they travelled.
    let want = result_cell(tmp.path(), "run", "test_top1");
    for format in ["npy", "csv", "safetensors"] {
        for col in ["test_top1", "val_acc", "chosen_weight_decay", "arch", "feature_dim"] {
            assert_eq!(
                result_cell(tmp.path(), &format!("fit-{format}"), col),
                result_cell(tmp.path(), "run", col),
                "{format} {col}"
            );
        }
    }
    assert!(!want.is_empty());
    let csv = std::fs::read_to_string(tmp.path().join("csv/features.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("split,index,label,f0,f1,") && header.ends_with(",f511"));
    assert_eq!(csv.lines().count(), 1 + 100 + 30);
    // No temp files left anywhere.
    for d in ["npy", "csv", "safetensors"] {
        for e in std::fs::read_dir(tmp.path().join(d)).unwrap() {
            assert!(!e.unwrap().file_name().to_string_lossy().starts_with('.'));
        }
    }
}

#[test]
fn numpy_reads_the_npy_export() {
    let Some(py) = python() else {
        eprintln!("skipped: CNNPROBE_PYTHON not set (run through scripts/test.sh)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    extract(tmp.path(), &data, "npy", "f");
    let set = cnnprobe::features::store::read(&tmp.path().join("f")).unwrap();
    let first: Vec<f32> = Vec::<f32>::try_from(set.train.x.get(0)).unwrap();
    let script = format!(
        "import numpy as np\nx = np.load(r'{d}/train_features.npy'); y = np.load(r'{d}/train_labels.npy')\n\
         print(x.shape, x.dtype, y.shape, y.dtype)\nprint(' '.join(repr(float(v)) for v in x[0]))\n",
        d = tmp.path().join("f").display()
    );
    let out = Command::new(py).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "(50, 512) float32 (50,) int64");
    let theirs: Vec<f32> = lines.next().unwrap().split(' ').map(|v| v.parse::<f64>().unwrap() as f32).collect();
    assert_eq!(first, theirs);
}

#[test]
fn damaged_feature_files_are_clear_errors() {
    let tmp = exports_without_checksums();

    let f = tmp.path().join("npy/train_features.npy");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 7]).unwrap();
    let o = fit(tmp.path(), "npy", "x1");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("train_features.npy: has 102393 data bytes, its shape [50, 512] needs 102400"),
        "{}",
        stderr(&o)
    );

    let f = tmp.path().join("csv/features.csv");
    let text = std::fs::read_to_string(&f).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[3] = lines[3].rsplit_once(',').unwrap().0.to_string();
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
    let o = fit(tmp.path(), "csv", "x2");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("features.csv: line 4"), "{}", stderr(&o));
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut cells: Vec<&str> = lines[5].split(',').collect();
    cells[5] = "abc";
    lines[5] = cells.join(",");
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
    let o = fit(tmp.path(), "csv", "x3");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("features.csv: line 6, column f") && stderr(&o).contains("is not a number"),
        "{}",
        stderr(&o)
    );

    std::fs::write(tmp.path().join("st/features.safetensors"), b"garbage").unwrap();
    let o = fit(tmp.path(), "st", "x4");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("features.safetensors: not a readable safetensors file"), "{}", stderr(&o));

    // An export without features.json (e.g. killed before the end) is never read.
    std::fs::remove_file(tmp.path().join("npy/features.json")).unwrap();
    let o = fit(tmp.path(), "npy", "x5");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no features.json"), "{}", stderr(&o));
    for d in ["x1", "x2", "x3", "x4", "x5"] {
        assert!(!tmp.path().join(d).join("result.csv").exists());
    }
}

/// One NaN cell makes every number after it meaningless: `fit` refuses each format with a
/// one-line error naming the file, row and column, and writes no result or summary row.
#[test]
fn non_finite_features_are_refused() {
    let tmp = exports_without_checksums();

    // CSV: row 3 of train (line 5), column f7.
    let f = tmp.path().join("csv/features.csv");
    let text = std::fs::read_to_string(&f).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut cells: Vec<String> = lines[4].split(',').map(String::from).collect();
    cells[3 + 7] = "NaN".into();
    lines[4] = cells.join(",");
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();

    // npy: test row 2, column f5, as an IEEE NaN in place (same size).
    let f = tmp.path().join("npy/test_features.npy");
    let mut bytes = std::fs::read(&f).unwrap();
    let data_start = bytes.len() - 10 * 512 * 4;
    let at = data_start + (2 * 512 + 5) * 4;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&f, bytes).unwrap();

    // safetensors: +inf in the first train value, rewritten through libtorch.
    let f = tmp.path().join("st/features.safetensors");
    let named = tch::Tensor::read_safetensors(&f).unwrap();
    for (name, t) in &named {
        if name == "train_features" {
            let _ = t.get(0).get(0).fill_(f64::INFINITY);
        }
    }
    tch::Tensor::write_safetensors(&named, &f).unwrap();

    for (dir, want) in [
        ("csv", "features.csv (train rows): row 3, column f7 is NaN or infinite"),
        ("npy", "test_features.npy: row 2, column f5 is NaN or infinite"),
        ("st", "features.safetensors (train_features): row 0, column f0 is NaN or infinite"),
    ] {
        let out = format!("run-{dir}");
        let o = fit(tmp.path(), dir, &out);
        assert_eq!(o.status.code(), Some(1), "{dir}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(want), "{dir}: {err}");
        // The warning about the missing checksums, then the one-line error.
        assert_eq!(err.trim_end().lines().filter(|l| l.starts_with("error:")).count(), 1, "{dir}: {err}");
        assert!(!tmp.path().join(&out).join("result.csv").exists(), "{dir}: a result was written");
    }
    assert!(!tmp.path().join("s.csv").exists(), "a summary row was written");
}
