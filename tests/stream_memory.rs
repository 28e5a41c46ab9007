//! An export larger than the process's memory: `extract` streams rows to disk, so its peak
//! RSS does not grow with the feature matrix (issue 16, acceptance 3).
mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// Runs `extract` on `n` train images of 16×16 into 64·32·32 = 65,536 features per image
/// (layer1 of the CIFAR-stem ResNet-18, pooled 32×32); returns (peak RSS, matrix bytes).
fn export(cwd: &Path, n: usize) -> (u64, u64) {
    let data = cwd.join(format!("imgs{n}"));
    write_folder(&data, &["a", "b"], n / 2, 1, 16);
    let out = format!("out{n}");
    // Reaped by wait4 below, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_cnnprobe"))
        .current_dir(cwd)
        .env("XDG_CACHE_HOME", cwd.join(".xdg"))
        .args(["extract", "--dataset", "folder", "--data", data.to_str().unwrap(), "--output", &out])
        .args(["--arch", "resnet18", "--stem", "cifar", "--input-size", "32", "--features", "layer1:32"])
        .args(["--batch-size", "32", "--threads", "2", "--format", "npy"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // std's wait() discards the child's resource usage; wait4 returns its own peak RSS.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "extract of {n} images failed");
    let rss = usage.ru_maxrss as u64 * 1024;
    let matrix = std::fs::metadata(cwd.join(&out).join("train_features.npy")).unwrap().len();
    std::fs::remove_dir_all(cwd.join(&out)).unwrap();
    (rss, matrix)
}

#[test]
fn export_larger_than_memory_keeps_peak_rss_flat() {
    let tmp = tempfile::tempdir().unwrap();
    let (small_rss, small) = export(tmp.path(), 500);
    let (big_rss, big) = export(tmp.path(), 3200);
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "500 images: {:.0} MB matrix, {:.0} MB peak; 4000: {:.0} MB, {:.0} MB",
        mb(small),
        mb(small_rss),
        mb(big),
        mb(big_rss)
    );
    assert!(big > 750 << 20, "the big export must be over 750 MB ({:.0} MB)", mb(big));
    // The process never held the matrix: its whole peak is below the matrix's size ...
    assert!(big_rss < big, "peak RSS {:.0} MB >= the {:.0} MB matrix", mb(big_rss), mb(big));
    // ... and 6.4× the rows cost (almost) nothing.
    let growth = big_rss.saturating_sub(small_rss);
    assert!(
        growth * 10 < big - small,
        "peak RSS grew {:.0} MB for {:.0} MB more features",
        mb(growth),
        mb(big - small)
    );
}
