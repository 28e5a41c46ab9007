//! Shared helpers for the integration tests: synthetic CIFAR fixtures and a runner for the
//! real `cnnprobe` binary.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_cnnprobe");

/// Deterministic pseudo-random bytes (xorshift), so fixtures need no RNG crate.
pub struct Bytes(u64);

impl Bytes {
    pub fn new(seed: u64) -> Self {
        Bytes(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

/// One CIFAR-10 record of class `label`: a class-specific colour plus noise, so random
/// features separate the classes well enough for a probe to learn.
pub fn record(label: u8, rng: &mut Bytes) -> Vec<u8> {
    let mut r = vec![label];
    let base = [(label as u32 * 25) % 256, (label as u32 * 70) % 256, (label as u32 * 130) % 256];
    for b in base {
        for _ in 0..1024 {
            r.push((b + (rng.next() as u32 % 60)).min(255) as u8);
        }
    }
    r
}

/// Writes a small CIFAR-10 binary folder: `per_file` records in each of the five train
/// batches and `test` records in the test batch, labels cycling over the 10 classes.
pub fn write_cifar10(dir: &Path, per_file: usize, test: usize) -> PathBuf {
    let folder = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&folder).unwrap();
    let mut rng = Bytes::new(1);
    let mut write = |name: &str, n: usize| {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.extend(record((i % 10) as u8, &mut rng));
        }
        std::fs::write(folder.join(name), bytes).unwrap();
    };
    for i in 1..=5 {
        write(&format!("data_batch_{i}.bin"), per_file);
    }
    write("test_batch.bin", test);
    folder
}

/// Runs the binary in `cwd` with `args`.
pub fn cnnprobe(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("CNNPROBE_CACHE_DIR", cwd.join(".cache"))
        .output()
        .expect("cnnprobe runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The venv Python with torch/torchvision/numpy (set by scripts/env.sh), if any.
pub fn python() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("CNNPROBE_PYTHON")?);
    p.exists().then_some(p)
}

/// Fast flags for fixture runs.
pub const QUICK: &[&str] = &[
    "--device",
    "cpu",
    "--threads",
    "2",
    "--epochs",
    "5",
    "--batch-size",
    "64",
    "--probe-batch-size",
    "32",
    "--lr",
    "0.01",
];

/// The venv Python for a test that cannot run without it. Elsewhere the test skips with a
/// printed reason (None); under CI=true a missing Python fails the test instead, so that a
/// broken set-up cannot pass as skipped tests.
pub fn require_python(test: &str) -> Option<PathBuf> {
    if let Some(p) = python() {
        return Some(p);
    }
    let why = "CNNPROBE_PYTHON is not set or missing (scripts/env.sh sets it after scripts/setup.sh)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs the venv Python and CI=true: {why}");
    }
    eprintln!("skipped {test}: {why}");
    None
}

/// Runs a Python snippet with `py` in `dir` and returns its stdout; panics with its stderr
/// when it fails.
pub fn run_python(py: &Path, dir: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(py).arg("-c").arg(script).args(args).current_dir(dir).output().expect("python runs");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
