//! Property-based fuzzing of every reader of untrusted bytes: the CIFAR record parser,
//! the .npy reader, the CSV feature reader and the torch.save/.pth readers (zip and legacy) must
//! return an error, never panic or read out of bounds. Ignored in the normal suite (they
//! run long); `scripts/fuzz.sh` runs them for a bounded time with PROPTEST_CASES.
mod common;

use cnnprobe::data::cifar::{parse_records, Cifar};
use proptest::prelude::*;
use std::path::Path;

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// A valid small file of each kind, to mutate.
fn seeds(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let x = tch::Tensor::arange(24, (tch::Kind::Float, tch::Device::Cpu)).view([4, 6]);
    let npy = dir.join("seed.npy");
    x.write_npy(&npy).unwrap();
    let st = dir.join("seed.safetensors");
    tch::Tensor::write_safetensors(&[("a", &x)], &st).unwrap();
    let csv = b"split,index,label,f0,f1\ntrain,0,1,0.5,1.5\ntest,0,0,2.0,-1\n".to_vec();
    (std::fs::read(npy).unwrap(), std::fs::read(st).unwrap(), csv)
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    for &(i, b) in edits {
        if !bytes.is_empty() {
            let n = bytes.len();
            bytes[i % n] = b;
        }
    }
    bytes.truncate(cut.min(bytes.len()));
    bytes
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    #[ignore]
    fn cifar_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        for which in [Cifar::Ten, Cifar::HundredFine, Cifar::HundredCoarse] {
            let (mut px, mut ys) = (Vec::new(), Vec::new());
            let r = parse_records(Path::new("fuzz.bin"), &bytes, which, &mut px, &mut ys);
            if r.is_ok() {
                prop_assert_eq!(px.len(), ys.len() * 3072);
            }
        }
    }

    #[test]
    #[ignore]
    fn npy_reader_never_panics(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in any::<usize>(), noise in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let (npy, _, _) = seeds(dir.path());
        for bytes in [mutate(npy, &edits, cut), noise.clone()] {
            let p = dir.path().join("f.npy");
            std::fs::write(&p, &bytes).unwrap();
            let _ = cnnprobe::features::npy::read_npy(&p, tch::Kind::Float);
        }
    }

    #[test]
    #[ignore]
    fn csv_reader_never_panics(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in any::<usize>()) {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, csv) = seeds(dir.path());
        let p = dir.path().join("features.csv");
        std::fs::write(&p, mutate(csv, &edits, cut)).unwrap();
        let _ = cnnprobe::features::store::read_csv(&p, 2);
    }

    #[test]
    #[ignore]
    fn state_dict_reader_never_panics(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in any::<usize>(), noise in proptest::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let (_, st, _) = seeds(dir.path());
        for (name, bytes) in [("a.safetensors", mutate(st, &edits, cut)), ("b.pth", noise.clone())] {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes).unwrap();
            let _ = cnnprobe::models::weights::read_state_dict(&p);
        }
    }

    #[test]
    #[ignore]
    fn legacy_state_dict_reader_never_panics(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in any::<usize>()) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("legacy.pth");
        std::fs::write(&p, mutate(common::legacy::python2_file().bytes(), &edits, cut)).unwrap();
        if let Err(e) = cnnprobe::models::weights::read_state_dict(&p) {
            let e = format!("{e:#}");
            prop_assert!(e.contains("legacy.pth") && !e.contains('\n'), "{}", e);
        }
    }
}
