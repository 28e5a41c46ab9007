//! The probe protocol: it can fit, it agrees with scikit-learn, and choosing never reads
//! the test split.
mod common;

use cnnprobe::features::Features;
use cnnprobe::probe::{self, Normalize, ProbeConfig, Schedule, Solver, TrainingData};
use common::*;
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn settings(solver: Solver, wd: f64) -> ProbeConfig {
    ProbeConfig {
        val_fraction: 0.1,
        solver,
        normalize: Normalize::Standardize,
        weight_decay: wd,
        wd_search: false,
        epochs: 60,
        lr: 0.01,
        batch_size: 64,
        schedule: Schedule::Cosine,
        patience: 0,
        max_iter: 500,
        seed: 0,
        val_only: false,
        kernel_precision: probe::KernelPrecision::Fp32,
        kernel: probe::kernel::KernelFn::ArcCos,
        kernel_views: probe::KernelViews::Mean,
    }
}

/// Gaussian blobs: class c centred at 4·e_c in 20 dims (linearly separable by construction).
fn blobs(n_per: i64, classes: i64, seed: i64) -> Features {
    tch::manual_seed(seed);
    let y = Tensor::arange(classes, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(n_per, None, None);
    let centres =
        Tensor::eye(classes, (Kind::Float, Device::Cpu)).narrow(1, 0, classes).pad([0, 20 - classes], "constant", None)
            * 4.0;
    let x = centres.index_select(0, &y) + Tensor::randn([classes * n_per, 20], (Kind::Float, Device::Cpu)) * 0.5;
    Features { x, y }
}

#[test]
fn separable_data_reaches_99_percent_train_accuracy() {
    let train = blobs(100, 5, 0);
    let val = blobs(20, 5, 1);
    for solver in [Solver::Lbfgs, Solver::Adamw, Solver::Adam, Solver::Sgd] {
        let fitted = probe::fit(data(&train, &val, 5), &settings(solver, 1e-6), Device::Cpu).unwrap();
        let acc = probe::metrics::accuracy(&fitted.head.logits(&train.x).unwrap(), &train.y);
        assert!(acc >= 0.99, "{solver:?}: train accuracy {acc}");
    }
}

/// Two classes by the sign of x₀·x₁ (XOR of the quadrants), away from the origin: no
/// linear head does better than chance, a kernel head does.
fn quadrants(n: i64, seed: i64) -> Features {
    tch::manual_seed(seed);
    let x = Tensor::rand([n, 2], (Kind::Float, Device::Cpu)) * 4.0 - 2.0;
    let y = (x.select(1, 0) * x.select(1, 1)).gt(0.0).to_kind(Kind::Int64);
    Features { x: x + 3.0, y }
}

#[test]
fn the_kernel_readout_fits_what_a_linear_head_cannot() {
    let (train, val) = (blobs(60, 5, 4), blobs(20, 5, 5));
    let fitted = probe::fit(data(&train, &val, 5), &settings(Solver::Kernel, 1e-2), Device::Cpu).unwrap();
    assert!(fitted.head.kernel.is_some());
    assert!(probe::metrics::accuracy(&fitted.head.logits(&train.x).unwrap(), &train.y) >= 0.99);
    assert!(fitted.val_acc >= 0.95, "blobs: validation {}", fitted.val_acc);
    let (train, val) = (quadrants(600, 6), quadrants(300, 7));
    let kernel = probe::fit(data(&train, &val, 2), &settings(Solver::Kernel, 1e-2), Device::Cpu).unwrap();
    let linear = probe::fit(data(&train, &val, 2), &settings(Solver::Lbfgs, 1e-4), Device::Cpu).unwrap();
    assert!(linear.val_acc < 0.7, "a linear head separated XOR: {}", linear.val_acc);
    assert!(kernel.val_acc > 0.9, "kernel head on XOR: {}", kernel.val_acc);
    // The λ search: one conjugate-gradient run for the whole grid, then the refit.
    let mut s = settings(Solver::Kernel, 0.0);
    s.wd_search = true;
    let f = probe::fit(data(&train, &val, 2), &s, Device::Cpu).unwrap();
    assert_eq!(f.grid.len(), probe::kernel::GRID.len());
    assert!(f.grid.iter().all(|g| g.stage == "kernel"));
    assert!(f.refit && f.head.kernel.as_ref().unwrap().views[0].size()[0] == 900, "refit on train+val");
    assert!(probe::metrics::accuracy(&f.head.logits(&val.x).unwrap(), &val.y) > 0.9);
}

#[test]
fn wd_search_visits_coarse_and_fine_points_and_refits() {
    let train = blobs(60, 4, 2);
    let val = blobs(30, 4, 3);
    let mut s = settings(Solver::Lbfgs, 0.0);
    s.wd_search = true;
    let f = probe::fit(data(&train, &val, 4), &s, Device::Cpu).unwrap();
    assert_eq!(f.grid.iter().filter(|g| g.stage == "coarse").count(), 6);
    assert_eq!(f.grid.iter().filter(|g| g.stage == "fine").count(), 2);
    assert!(f.grid.iter().any(|g| g.weight_decay == f.chosen_weight_decay));
    assert!(f.refit);
}

#[test]
fn lbfgs_agrees_with_scikit_learn() {
    let Some(py) = python() else {
        eprintln!("skipped: CNNPROBE_PYTHON not set (run through scripts/test.sh)");
        return;
    };
    // A noisy, overlapping 6-class problem, so the regulariser matters.
    tch::manual_seed(7);
    let n = 600;
    let w_true = Tensor::randn([6, 30], (Kind::Float, Device::Cpu));
    let x = Tensor::randn([n, 30], (Kind::Float, Device::Cpu));
    let y = (x.mm(&w_true.tr()) + Tensor::randn([n, 6], (Kind::Float, Device::Cpu)) * 2.0).argmax(1, false);
    let (train, test) = (
        Features { x: x.narrow(0, 0, 400), y: y.narrow(0, 0, 400) },
        Features { x: x.narrow(0, 400, 200), y: y.narrow(0, 400, 200) },
    );
    let lambda = 1e-2;
    let mut s = settings(Solver::Lbfgs, lambda);
    s.normalize = Normalize::None;
    s.max_iter = 2000;
    let fitted = probe::fit(data(&train, &test, 6), &s, Device::Cpu).unwrap();
    let ours = Vec::<i64>::try_from(fitted.head.logits(&test.x).unwrap().argmax(1, false)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    Tensor::write_npz(&[("xtr", &train.x), ("ytr", &train.y), ("xte", &test.x)], dir.path().join("d.npz")).unwrap();
    // scikit-learn's C multiplies the summed loss: C = 1/(λ·n) gives our mean-loss objective.
    let script = format!(
        "import numpy as np\nfrom sklearn.linear_model import LogisticRegression\n\
         d = np.load(r'{}')\n\
         m = LogisticRegression(C={}, max_iter=5000, tol=1e-8).fit(d['xtr'], d['ytr'])\n\
         print(' '.join(map(str, m.predict(d['xte']))))\n",
        dir.path().join("d.npz").display(),
        1.0 / (lambda * 400.0)
    );
    let out = Command::new(py).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<i64> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(|v| v.parse().unwrap()).collect();
    let agree = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count() as f64 / theirs.len() as f64;
    assert!(agree >= 0.98, "agreement with scikit-learn {agree}");
}

/// Two fixture folders with identical train files and different test files.
fn twin_fixtures(root: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let a = write_cifar10(&root.join("a"), 20, 30);
    let b = write_cifar10(&root.join("b"), 20, 30);
    // b's test split: other images, each labelled as the next class (so a head that is
    // right on a's test split is wrong on b's).
    let mut rng = Bytes::new(99);
    let mut bytes = Vec::new();
    for i in 0..30 {
        let mut r = record(((i * 7 + 3) % 10) as u8, &mut rng);
        r[0] = (r[0] + 1) % 10;
        bytes.extend(r);
    }
    std::fs::write(b.join("test_batch.bin"), bytes).unwrap();
    (a, b)
}

#[test]
fn choices_never_depend_on_the_test_split() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = twin_fixtures(tmp.path());
    let run = |data: &std::path::Path, out: &str| {
        let mut args = vec!["run", "--data", data.to_str().unwrap(), "--solver", "lbfgs", "--wd-search", "--out", out];
        args.extend_from_slice(QUICK);
        let o = cnnprobe(tmp.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(tmp.path().join(out).join("wd_search.csv")).unwrap()
    };
    let (ga, gb) = (run(&a, "ra"), run(&b, "rb"));
    assert_eq!(ga, gb, "the search saw something of the test split");
    // The test split did differ, and so do the test scores: the choice was blind to it.
    let top1 = |d: &str| {
        let mut r = csv::Reader::from_path(tmp.path().join(d).join("result.csv")).unwrap();
        let col = r.headers().unwrap().iter().position(|h| h == "test_top1").unwrap();
        r.records().next().unwrap().unwrap()[col].parse::<f64>().unwrap()
    };
    let (ta, tb) = (top1("ra"), top1("rb"));
    assert!(ta - tb > 0.3, "test top-1 {ta} on the true labels vs {tb} on the shifted ones");
}

#[test]
fn run_writes_protocol_files_and_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_cifar10(tmp.path(), 20, 30);
    let mut args = vec![
        "run",
        "--data",
        data.to_str().unwrap(),
        "--solver",
        "lbfgs",
        "--wd-search",
        "--out",
        "r",
        "--save-head",
        "head.safetensors",
    ];
    args.extend_from_slice(QUICK);
    let o = cnnprobe(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = tmp.path().join("r");
    let grid = std::fs::read_to_string(r.join("wd_search.csv")).unwrap();
    assert_eq!(grid.lines().next().unwrap(), "stage,weight_decay,val_acc,steps,chosen");
    assert_eq!(grid.lines().count(), 1 + 8);
    assert!(grid.lines().any(|l| l.ends_with(",true")));
    let per_class = std::fs::read_to_string(r.join("per_class.csv")).unwrap();
    assert_eq!(per_class.lines().next().unwrap(), "class,support,accuracy");
    assert!(per_class.lines().nth(1).unwrap().starts_with("airplane,3,"));
    let confusion = std::fs::read_to_string(r.join("confusion.csv")).unwrap();
    assert_eq!(confusion.lines().count(), 11);
    let total: i64 = confusion
        .lines()
        .skip(1)
        .flat_map(|l| l.split(',').skip(1).map(|v| v.parse::<i64>().unwrap()).collect::<Vec<_>>())
        .sum();
    assert_eq!(total, 30);
    let mut rdr = csv::Reader::from_path(tmp.path().join("runs/summary.csv")).unwrap();
    let h = rdr.headers().unwrap().clone();
    for col in ["mean_per_class_recall", "chosen_weight_decay", "solver"] {
        assert!(h.iter().any(|c| c == col), "missing {col}");
    }
    let head = Tensor::read_safetensors(tmp.path().join("head.safetensors")).unwrap();
    let names: Vec<&str> = head.iter().map(|(n, _)| n.as_str()).collect();
    for k in ["weight", "bias", "feature_mean", "feature_std"] {
        assert!(names.contains(&k), "{names:?}");
    }
}

/// `probe::fit` takes the fit rows by value: it scales them in place and frees them before the refit.
fn own(f: &Features) -> Features {
    Features { x: f.x.copy(), y: f.y.copy() }
}

/// Fit on `train`, choose on `val`, no mirrored views.
fn data<'a>(train: &'a Features, val: &'a Features, classes: usize) -> TrainingData<'a> {
    TrainingData { fit: own(train), val, val_view: None, refit: vec![train, val], classes }
}

/// `--kernel-precision bf16-lean`'s bf16 rows are standardised with the statistics of their values (a
/// block-wise float64 sum), the same as float32 copies of them give.
#[test]
fn bf16_rows_get_the_statistics_of_their_values() {
    tch::manual_seed(8);
    let x = (Tensor::randn([2500, 7], (Kind::Float, Device::Cpu)) * 3.0 + 5.0).to_kind(Kind::BFloat16);
    let rounded = probe::Scaler::fit(&x, Normalize::Standardize);
    let exact = probe::Scaler::fit(&x.to_kind(Kind::Float), Normalize::Standardize);
    for (a, b) in [(&rounded.mean, &exact.mean), (&rounded.std, &exact.std)] {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.kind(), Kind::Float);
        assert!(a.allclose(b, 1e-5, 1e-5, false), "{a:?} against {b:?}");
    }
}

/// bf16 rows are scaled through float32 a block at a time and stay bf16: the values are the
/// float32 scaling of the rows, rounded.
#[test]
fn bf16_rows_are_scaled_as_float32_and_rounded() {
    tch::manual_seed(9);
    let x = (Tensor::randn([2100, 5], (Kind::Float, Device::Cpu)) * 2.0 + 1.0).to_kind(Kind::BFloat16);
    let scaler = probe::Scaler::fit(&x, Normalize::Standardize);
    let want = ((x.to_kind(Kind::Float) - scaler.mean.as_ref().unwrap()) / scaler.std.as_ref().unwrap())
        .to_kind(Kind::BFloat16);
    let mut inplace = x.copy();
    scaler.apply_in_place(&mut inplace);
    let copied = scaler.apply(&x);
    for got in [&inplace, &copied] {
        assert_eq!(got.kind(), Kind::BFloat16);
        assert!(got.equal(&want), "bf16 scaling differs from float32 scaling rounded");
    }
}
