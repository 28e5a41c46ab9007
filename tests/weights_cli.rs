//! `--weights imagenet|PATH` and `compare` through the real binary, with checkpoints placed
//! in a temp TORCH_HOME (never the internet).
mod common;

use cnnprobe::models::{Arch, ModelConfig, Network, Stem};
use common::*;
use std::path::Path;
use std::process::Command;

/// A torchvision-layout resnet18 state dict (seed 5) at TORCH_HOME's checkpoint path.
/// Written as safetensors: the loader recognises the content whatever the file name.
fn place_checkpoint(torch_home: &Path, arch: Arch, seed: u64) {
    let cfg = ModelConfig::torchvision(arch, Stem::Imagenet, seed);
    let net = Network::build(&cfg).unwrap();
    let dir = torch_home.join("hub/checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join("tmp.safetensors");
    net.vs.save(&tmp).unwrap();
    let name = cnnprobe::models::pretrained::checkpoint_file(arch).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn run_in(cwd: &Path, torch_home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(QUICK)
        .env("TORCH_HOME", torch_home)
        .env("CNNPROBE_CACHE_DIR", cwd.join(".cache"))
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn imagenet_weights_offline_name_url_and_cache_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mirror = format!("http://127.0.0.1:{port}");
    let th = tmp.path().join("th");
    let out = run_in(
        tmp.path(),
        &th,
        &["run", "--data", data.to_str().unwrap(), "--weights", "imagenet", "--weights-mirror", &mirror],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let want = format!(
        "error: --weights imagenet: {mirror}/resnet18-f37072fd.pth is not available offline; place that file at {}",
        th.join("hub/checkpoints/resnet18-f37072fd.pth").display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(!th.join("hub/checkpoints/resnet18-f37072fd.pth").exists());
}

#[test]
fn cached_checkpoint_loads_and_equals_its_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 20);
    let data = data.to_str().unwrap();
    let th = tmp.path().join("th");
    place_checkpoint(&th, Arch::Resnet18, 5);
    // Same preprocessing both ways, so the cached "imagenet" weights must act as seed 5 does.
    let a = run_in(
        tmp.path(),
        &th,
        &[
            "run",
            "--data",
            data,
            "--weights",
            "imagenet",
            "--input-size",
            "32",
            "--input-norm",
            "dataset",
            "--out",
            "a",
            "--summary",
            "s.csv",
        ],
    );
    assert!(a.status.success(), "{}", stderr(&a));
    let b = run_in(tmp.path(), &th, &["run", "--data", data, "--seed", "5", "--out", "b", "--summary", "s.csv"]);
    assert!(b.status.success(), "{}", stderr(&b));
    let strip = |d: &str| {
        std::fs::read_to_string(tmp.path().join(d).join("epochs.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    // The probe seed differs (0 vs 5), so compare features through a fixed probe seed instead.
    let c = run_in(
        tmp.path(),
        &th,
        &[
            "run",
            "--data",
            data,
            "--weights",
            "imagenet",
            "--input-size",
            "32",
            "--input-norm",
            "dataset",
            "--seed",
            "5",
            "--out",
            "c",
            "--summary",
            "s.csv",
        ],
    );
    assert!(c.status.success(), "{}", stderr(&c));
    assert_eq!(strip("b"), strip("c"));
    let summary = std::fs::read_to_string(tmp.path().join("s.csv")).unwrap();
    assert!(summary.lines().nth(1).unwrap().contains(",imagenet,32,bilinear,dataset,"), "{summary}");
}

#[test]
fn weights_file_that_does_not_fit_lists_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 10);
    let th = tmp.path().join("th");
    place_checkpoint(&th, Arch::Resnet50, 0);
    let file = th.join("hub/checkpoints/resnet50-0676ba61.pth");
    let out = run_in(tmp.path(), &th, &["run", "--data", data.to_str().unwrap(), "--weights", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: --weights: loading into resnet18: ") && err.contains("does not fit"), "{err}");
    assert!(err.contains("unexpected keys [") && err.contains("layer1.0.bn3."), "{err}");
    assert!(err.contains("wrong shapes [") && err.contains("fc.weight"), "{err}");

    let out = run_in(tmp.path(), &th, &["run", "--data", data.to_str().unwrap(), "--weights", "missing.pth"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.pth"), "{}", stderr(&out));
}

#[test]
fn bad_weight_combinations_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        ["run", "--arch", "resnet20", "--weights", "imagenet"],
        ["run", "--stem", "cifar", "--weights", "imagenet"],
        ["run", "--arch", "resnet20", "--stem", "imagenet"],
    ] {
        let out = cnnprobe(tmp.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: --"), "{}", stderr(&out));
    }
}

#[test]
fn compare_runs_random_seeds_against_imagenet() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 20);
    let th = tmp.path().join("th");
    place_checkpoint(&th, Arch::Resnet18, 7);
    let out = run_in(
        tmp.path(),
        &th,
        &["compare", "--seeds", "0..2", "--data", data.to_str().unwrap(), "--input-size", "32", "--table", "cmp.csv"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("random") && stdout.contains("imagenet"), "{stdout}");
    let mut rdr = csv::Reader::from_path(tmp.path().join("cmp.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!((&rows[0][3], &rows[0][4], &rows[0][5]), ("random", "2", "0 1"));
    assert_eq!((&rows[1][3], &rows[1][4]), ("imagenet", "1"));
    assert!(rows[1][6].parse::<f64>().is_ok());
    // Three runs, three summary rows.
    let summary = std::fs::read_to_string(tmp.path().join("runs/summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 4);

    // Without the checkpoint and offline, the pretrained column says so instead of failing.
    let th2 = tmp.path().join("empty");
    let out = run_in(
        tmp.path(),
        &th2,
        &[
            "compare",
            "--seeds",
            "3",
            "--data",
            data.to_str().unwrap(),
            "--input-size",
            "32",
            "--table",
            "cmp2.csv",
            "--weights-mirror",
            "http://127.0.0.1:9",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(tmp.path().join("cmp2.csv")).unwrap();
    assert!(text.contains("not available offline"), "{text}");
}

/// `cnnprobe weights`: every torchvision architecture with its exact file name and URL, the
/// cache state, and --verify catching a file whose sha256 does not match its name.
#[test]
fn weights_lists_checkpoints_and_verifies_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("th/hub/checkpoints");
    let run = |args: &[&str]| Command::new(BIN).args(args).env("TORCH_HOME", tmp.path().join("th")).output().unwrap();
    let o = run(&["weights"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out.lines().filter(|l| l.contains(" missing ")).count(), 13, "{out}");
    assert!(
        out.contains("vgg11-8a719046.pth") && out.contains("https://download.pytorch.org/models/vgg13-19584684.pth")
    );
    assert!(out.contains(&hub.display().to_string()));
    std::fs::create_dir_all(&hub).unwrap();
    std::fs::write(hub.join("resnet18-f37072fd.pth"), b"not the checkpoint").unwrap();
    let o = run(&["weights", "--arch", "resnet18"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.lines().any(|l| l.split_whitespace().take(3).eq(["resnet18", "resnet18-f37072fd.pth", "yes"])),
        "{out}"
    );
    let o = run(&["weights", "--verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("CORRUPT"));
    assert!(stderr(&o).contains("sha256 does not match the file name"), "{}", stderr(&o));
}
