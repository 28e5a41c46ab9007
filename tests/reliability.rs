//! Reliability: the rest of the bad-input catalogue, numerical health, interruption, and a
//! kill test (runs killed at random moments leave only complete, parseable files).
mod common;

use common::*;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run_args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "--data", data];
    a.extend_from_slice(extra);
    a.extend_from_slice(QUICK);
    a
}

/// The error line: exactly one, and the last (progress lines may come before it).
fn one_line(o: &std::process::Output) -> String {
    let e = stderr(o);
    assert_eq!(e.lines().filter(|l| l.starts_with("error:")).count(), 1, "not one error line: {e}");
    let last = e.trim_end().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("error: "), "the error is not the last line: {e}");
    last
}

#[test]
fn oversized_file_names_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    let f = data.join("data_batch_5.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes.extend([7u8; 10]);
    std::fs::write(&f, bytes).unwrap();
    let o = cnnprobe(tmp.path(), &run_args(data.to_str().unwrap(), &[]));
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line(&o).contains("data_batch_5.bin: size 30740 is not a whole number of 3073-byte records"));
}

#[test]
fn unknown_names_and_impossible_pooling_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    let d = data.to_str().unwrap();
    let o = cnnprobe(tmp.path(), &run_args(d, &["--arch", "resnet19"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid value 'resnet19' for '--arch <ARCH>'"), "{}", stderr(&o));
    let o = cnnprobe(tmp.path(), &run_args(d, &["--init", "he"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown init 'he'"), "{}", stderr(&o));
    let o = cnnprobe(tmp.path(), &run_args(d, &["--init", "normal:-1"]));
    assert_eq!(o.status.code(), Some(2));
    let o = cnnprobe(tmp.path(), &run_args(d, &["--pool-size", "3"]));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(one_line(&o), "error: --pool-size 3 is larger than the 1×1 map of layer4 at 32×32 input");
    let o = cnnprobe(tmp.path(), &run_args(d, &["--features", "layer7"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("resnet18 has no such stage; choose from layer1, layer2, layer3, layer4"));
}

#[test]
fn corrupt_pth_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    std::fs::write(tmp.path().join("bad.pth"), b"PK\x03\x04 not really a zip").unwrap();
    let o = cnnprobe(tmp.path(), &run_args(data.to_str().unwrap(), &["--weights", "bad.pth"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line(&o).contains("bad.pth"), "{}", stderr(&o));
}

#[test]
fn exploding_and_vanishing_networks_are_caught_and_located() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    let d = data.to_str().unwrap();
    let o = cnnprobe(tmp.path(), &run_args(d, &["--arch", "vgg19", "--stem", "cifar", "--init", "normal:1000"]));
    assert_eq!(o.status.code(), Some(1));
    let e = one_line(&o);
    assert!(e.contains("features of vgg19 are degenerate (NaN/Inf), first at block"), "{e}");
    let o = cnnprobe(tmp.path(), &run_args(d, &["--arch", "vgg19", "--stem", "cifar", "--init", "normal:1e-9"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line(&o).contains("degenerate (all zeros), first at block"), "{}", stderr(&o));
    let o = cnnprobe(
        tmp.path(),
        &[
            "extract",
            "--data",
            d,
            "--arch",
            "vgg19",
            "--stem",
            "cifar",
            "--init",
            "normal:1e-9",
            "--allow-degenerate",
            "--output",
            "x",
            "--device",
            "cpu",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: features of vgg19 are degenerate"));
}

#[test]
fn full_disk_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    let tiny = tmp.path().join("tiny");
    std::fs::create_dir(&tiny).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&tiny).status();
    if !mounted.map(|s| s.success()).unwrap_or(false) {
        skip("cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&tiny);
    let out = tiny.join("feats");
    let o = cnnprobe(
        tmp.path(),
        &[
            "extract",
            "--data",
            data.to_str().unwrap(),
            "--format",
            "csv",
            "--device",
            "cpu",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = one_line(&o);
    assert!(e.contains("No space left on device"), "{e}");
    // Complete or absent: no partial CSV, no temp file, no manifest.
    let left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn sigint_stops_within_two_seconds_and_removes_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 300, 300);
    let mut child = Command::new(BIN)
        .args([
            "extract",
            "--data",
            data.to_str().unwrap(),
            "--arch",
            "resnet18",
            "--stem",
            "cifar",
            "--device",
            "cpu",
            "--batch-size",
            "16",
            "--format",
            "csv",
            "--output",
            "out",
        ])
        .current_dir(tmp.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Signal once extraction is under way (its first line is on stderr), however long
    // loading libtorch took on a busy machine; then the process is surely past installing
    // its handler.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains(" train / "))), "extraction never started");
    std::thread::spawn(move || lines.for_each(drop));
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "finished before the signal; make the fixture bigger");
    let sent = Instant::now();
    unsafe_kill(child.id(), "INT");
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?} to stop", sent.elapsed());
    assert_eq!(status.code(), Some(130));
    let out = tmp.path().join("out");
    let left: Vec<String> = std::fs::read_dir(&out)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn unsafe_kill(pid: u32, signal: &str) {
    assert!(Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap().success());
}

#[test]
fn twenty_runs_killed_at_random_moments_leave_only_complete_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 40, 40);
    let d = data.to_str().unwrap();
    let mut rng = Bytes::new(2024);
    let signals = ["KILL", "TERM", "INT", "KILL"];
    for i in 0..20 {
        let seed = (i % 3).to_string();
        let out = format!("runs/r{i}");
        let mut args = vec!["run", "--data", d, "--seed", &seed, "--out", &out, "--summary", "summary.csv"];
        args.extend_from_slice(QUICK);
        let mut child = Command::new(BIN)
            .args(&args)
            .current_dir(tmp.path())
            .env("CNNPROBE_CACHE_DIR", tmp.path().join("cache"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // 0–2.5 s: anywhere from start-up through extraction, caching, fitting and logging.
        let wait = (rng.next() as u64 * 10) % 2500;
        std::thread::sleep(Duration::from_millis(wait));
        if child.try_wait().unwrap().is_none() {
            unsafe_kill(child.id(), signals[i % 4]);
        }
        child.wait().unwrap();
    }
    // Every CSV anywhere parses, row lengths match headers.
    for entry in walk(tmp.path()) {
        if entry.extension().is_some_and(|e| e == "csv") && !entry.starts_with(&data) {
            let mut rdr = csv::Reader::from_path(&entry).unwrap();
            let n = rdr.headers().unwrap().len();
            for r in rdr.records() {
                let r = r.unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
                assert_eq!(r.len(), n, "{}: ragged row", entry.display());
            }
        }
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !(name.starts_with('.') && (name.ends_with(".tmp") || name.ends_with(".partial"))),
            "temp file left: {}",
            entry.display()
        );
    }
    // Every cache entry under its final name is complete.
    if let Ok(dir) = std::fs::read_dir(tmp.path().join("cache")) {
        for e in dir {
            let p = e.unwrap().path();
            if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                cnnprobe::features::store::read(&p)
                    .unwrap_or_else(|e| panic!("cache entry {} is incomplete: {e:#}", p.display()));
            }
        }
    }
    // And a re-run completes.
    let mut args = vec!["run", "--data", d, "--out", "final", "--summary", "summary.csv"];
    args.extend_from_slice(QUICK);
    let o = Command::new(BIN)
        .args(&args)
        .current_dir(tmp.path())
        .env("CNNPROBE_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn fused_convolutions_keep_the_nans_of_an_overflowing_network() {
    // oneDNN's fused ReLU maps NaN to 0; the flag guard must rerun such a batch on aten's
    // ops, so both paths write the same bytes, NaNs included.
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    let run = |fused: &str| {
        let out = tmp.path().join(fused);
        let args = [
            "extract",
            "--data",
            data.to_str().unwrap(),
            "--arch",
            "vgg19",
            "--stem",
            "cifar",
            "--init",
            "normal:1000",
            "--allow-degenerate",
            "--device",
            "cpu",
            "--fused",
            fused,
            "--output",
            out.to_str().unwrap(),
        ];
        let o = cnnprobe(tmp.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        (provenance(&out, "convs"), std::fs::read(out.join("train_features.npy")).unwrap())
    };
    let (fused_convs, fused) = run("auto");
    let (aten_convs, aten) = run("off");
    assert_eq!((fused_convs.as_str(), aten_convs.as_str()), ("onednn-fused", "aten"));
    assert!(fused == aten, "the fused run's features differ from aten's");
}
