//! Acceptance 2 of issue 12: a legacy-format torch.save file placed in
//! `$TORCH_HOME/hub/checkpoints` under torchvision's exact name is what `--weights imagenet`,
//! `compare` and `run --preset random-best --weights imagenet` use, end to end through the
//! binary, with nothing downloaded (the mirror is a closed port) and the file left as it was.
mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn run_in(cwd: &Path, torch_home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("TORCH_HOME", torch_home)
        .env("CNNPROBE_CACHE_DIR", cwd.join(".cache"))
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn legacy_vgg11_in_the_hub_cache_serves_imagenet_weights() {
    let Some(py) = require_python("legacy_vgg11_in_the_hub_cache_serves_imagenet_weights") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 10, 20);
    let data = data.to_str().unwrap();
    let fixture = tmp.path().join("fixture");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/checkpoint_fixture.py");
    let out = Command::new(py)
        .arg(script)
        .args(["vgg11", fixture.to_str().unwrap(), "--data", data, "--limit", "4", "--fc2", "--formats", "legacy"])
        .output()
        .unwrap();
    assert!(out.status.success(), "fixture: {}", String::from_utf8_lossy(&out.stderr));
    let th = tmp.path().join("th");
    let hub = th.join("hub/checkpoints");
    std::fs::create_dir_all(&hub).unwrap();
    let cached = hub.join(cnnprobe::models::pretrained::checkpoint_file(cnnprobe::models::Arch::Vgg11).unwrap());
    assert_eq!(cached.file_name().unwrap(), "vgg11-8a719046.pth");
    std::fs::rename(fixture.join("legacy.pth"), &cached).unwrap();
    let before = std::fs::metadata(&cached).unwrap();
    let loaded_from = format!("MB from {}", cached.display());
    // Any download attempt fails at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mirror = format!("http://127.0.0.1:{port}");
    let offline = ["--weights-mirror", mirror.as_str(), "--input-size", "32", "--limit", "20", "--max-iter", "50"];
    let quick = [QUICK, &offline[..]].concat();

    // The cached weights are torchvision's: its features, to 1e-4.
    let mut args = vec!["extract", "--data", data, "--arch", "vgg11", "--weights", "imagenet", "--features", "fc2"];
    args.extend(["--output", "feats", "--device", "cpu", "--threads", "2"]);
    args.extend(["--weights-mirror", mirror.as_str(), "--input-size", "32", "--limit", "4"]);
    let o = run_in(tmp.path(), &th, &args);
    assert!(o.status.success(), "extract: {}", stderr(&o));
    assert!(stderr(&o).contains(&loaded_from), "{}", stderr(&o));
    for split in ["train", "test"] {
        let got = tch::Tensor::read_npy(tmp.path().join(format!("feats/{split}_features.npy"))).unwrap();
        let want = tch::Tensor::read_npy(fixture.join(format!("expected_{split}.npy"))).unwrap();
        let rel = ((&got - &want).abs().max() / want.abs().max()).double_value(&[]);
        assert!(rel <= 1e-4, "{split}: features differ by {rel:e} (relative)");
    }

    let mut args = vec!["run", "--data", data, "--arch", "vgg11", "--weights", "imagenet", "--out", "r"];
    args.extend(["--summary", "s.csv"]);
    args.extend(&quick);
    let o = run_in(tmp.path(), &th, &args);
    assert!(o.status.success(), "run: {}", stderr(&o));
    assert!(stderr(&o).contains(&loaded_from), "{}", stderr(&o));

    let mut args = vec!["run", "--preset", "random-best", "--weights", "imagenet", "--data", data, "--out", "p"];
    args.extend(["--summary", "s.csv"]);
    args.extend(&quick);
    let o = run_in(tmp.path(), &th, &args);
    assert!(o.status.success(), "preset: {}", stderr(&o));
    assert!(stderr(&o).contains(&loaded_from), "{}", stderr(&o));

    // --no-cache: the run above cached these very features.
    let mut args = vec!["compare", "--seeds", "0", "--data", data, "--arch", "vgg11", "--table", "cmp.csv"];
    args.extend(["--summary", "s.csv", "--no-cache"]);
    args.extend(&quick);
    let o = run_in(tmp.path(), &th, &args);
    assert!(o.status.success(), "compare: {}", stderr(&o));
    assert!(stderr(&o).contains(&loaded_from), "{}", stderr(&o));
    let mut rdr = csv::Reader::from_path(tmp.path().join("cmp.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!((&rows[1][1], &rows[1][3], &rows[1][4]), ("vgg11", "imagenet", "1"), "{rows:?}");
    assert!(rows[1][6].parse::<f64>().is_ok(), "{rows:?}");

    // Three pretrained runs in the summary, all from the cached file; it is untouched and alone.
    let mut rdr = csv::Reader::from_path(tmp.path().join("s.csv")).unwrap();
    let col = rdr.headers().unwrap().iter().position(|h| h == "weights").unwrap();
    let weights: Vec<String> = rdr.records().map(|r| r.unwrap()[col].to_string()).collect();
    assert_eq!(weights, ["imagenet", "imagenet", "random", "imagenet"]);
    let after = std::fs::metadata(&cached).unwrap();
    assert_eq!((after.len(), after.modified().unwrap()), (before.len(), before.modified().unwrap()));
    let names: Vec<_> = std::fs::read_dir(&hub).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["vgg11-8a719046.pth"]);
}
