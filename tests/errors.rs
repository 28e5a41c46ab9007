//! Bad input gets one clear line and a non-zero exit: 1 for runtime errors, 2 for usage.
mod common;

use common::*;

fn run_err(cwd: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(QUICK);
    let out = cnnprobe(cwd, &args);
    let err = stderr(&out);
    (out.status.code().unwrap_or(-1), err)
}

fn last_line(s: &str) -> &str {
    s.trim_end().lines().last().unwrap_or("")
}

#[test]
fn missing_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, err) = run_err(tmp.path(), &["--data", "nowhere"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert_eq!(last_line(&err), "error: --data: data dir nowhere does not exist");
}

#[test]
fn empty_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let (code, err) = run_err(tmp.path(), &["--data", "empty"]);
    assert_eq!(code, 1);
    assert!(last_line(&err).starts_with("error: --data: data dir empty is empty"), "{err}");
}

#[test]
fn truncated_file_names_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = write_cifar10(tmp.path(), 10, 10);
    let f = folder.join("data_batch_3.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let (code, err) = run_err(tmp.path(), &["--data", folder.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("data_batch_3.bin: size 30630 is not a whole number of 3073-byte records"), "{err}");
    assert!(err.contains("record 9 is incomplete"), "{err}");
}

#[test]
fn label_out_of_range_names_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = write_cifar10(tmp.path(), 10, 10);
    let f = folder.join("test_batch.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[4 * 3073] = 10;
    std::fs::write(&f, bytes).unwrap();
    let (code, err) = run_err(tmp.path(), &["--data", folder.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.trim_end().ends_with("test_batch.bin: record 4 has label 10, outside the 10 classes 0..9"), "{err}");
}

#[test]
fn cuda_without_cuda() {
    if tch::Cuda::is_available() {
        eprintln!("skipped: this machine has CUDA");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let folder = write_cifar10(tmp.path(), 10, 10);
    let out = cnnprobe(tmp.path(), &["run", "--data", folder.to_str().unwrap(), "--device", "cuda"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        "error: --device cuda: CUDA is not available on this machine (libtorch sees no GPU); use --device cpu"
    );
    let out = cnnprobe(tmp.path(), &["run", "--data", folder.to_str().unwrap(), "--device", "cuda:7"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: --device cuda:7: CUDA is not available"));
}

#[test]
fn bad_numbers_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for (flag, value) in
        [("--lr", "NaN"), ("--lr", "-1"), ("--epochs", "0"), ("--val-fraction", "1"), ("--batch-size", "-3")]
    {
        let out = cnnprobe(tmp.path(), &["run", &format!("{flag}={value}")]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("invalid value '{value}' for '{flag}")), "{}", stderr(&out));
    }
    let out = cnnprobe(tmp.path(), &["run", "--device", "gpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'gpu' is not a device: use auto, cpu, cuda or cuda:N"));
}

#[test]
fn unwritable_out_fails_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = write_cifar10(tmp.path(), 10, 10);
    std::fs::write(tmp.path().join("afile"), "x").unwrap();
    let (code, err) = run_err(tmp.path(), &["--data", folder.to_str().unwrap(), "--out", "afile/run"]);
    assert_eq!(code, 1);
    assert!(last_line(&err).starts_with("error: --out afile/run: cannot create the run directory"), "{err}");
}
