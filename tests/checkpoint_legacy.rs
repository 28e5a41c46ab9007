//! torch.save's legacy container (before PyTorch 1.6, and `_use_new_zipfile_serialization=
//! False`): files written by the venv's torch read back value for value; a Python-2-era file
//! built here opcode by opcode (SHORT_BINSTRING keys, OrderedDict from [k, v] lists,
//! `_rebuild_tensor` v1, 5- and 6-element persistent ids, a storage view) reads as torch reads
//! it; every corruption is a one-line error naming the file, never a panic or a huge
//! allocation.
mod common;

use cnnprobe::models::weights::read_state_dict;
use common::legacy::{python2_file, python2_file_with, sys_info, Pickle};
use common::{assert_same, assert_views};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `hay` with every `from` replaced by `to`.
fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    assert_ne!(out, hay, "nothing replaced");
    out
}

fn read(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<Vec<(String, Tensor)>> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    read_state_dict(&p)
}

/// The error for `bytes`: one line naming the file.
fn error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    match read(dir, name, bytes) {
        Ok(t) => panic!("{name} read fine ({} tensors)", t.len()),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains(name), "error does not name the file: {e}");
            assert!(!e.contains('\n'), "error is not one line: {e}");
            if name != "cut.pth" {
                eprintln!("{e}");
            }
            e
        }
    }
}

#[test]
fn python2_era_file_reads_as_torch_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let five = read(dir.path(), "py2five.pth", &python2_file_with(true).bytes()).unwrap();
    let got = read(dir.path(), "py2.pth", &python2_file().bytes()).unwrap();
    for ((a, x), (b, y)) in five.iter().zip(&got) {
        assert_eq!(a, b);
        assert_same(a, x, y);
    }
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["w", "b", "t", "n"]);
    let w = Tensor::arange(6, (Kind::Float, Device::Cpu));
    assert_same("w", &got[0].1, &w.view([2, 3]));
    assert_same("b", &got[1].1, &Tensor::from_slice(&[4f32, 5.]));
    assert_same("t", &got[2].1, &Tensor::from_slice(&[1f32, 4., 2., 5.]).view([2, 2]));
    assert_same("n", &got[3].1, &Tensor::from(7i64));

    // The same bytes through torch.load, where the venv exists: the fixture is what torch reads.
    let Some(py) = common::python() else {
        eprintln!("torch.load cross-check skipped: no CNNPROBE_PYTHON");
        return;
    };
    let script = "
import sys, torch
sd = torch.load(sys.argv[1], weights_only=False)
for k, v in sd.items():
    print(k, v.dtype, list(v.shape), v.flatten().tolist())
";
    let p = dir.path().join("py2.pth").display().to_string();
    let out = common::run_python(&py, dir.path(), script, &[&p]);
    let want = "w torch.float32 [2, 3] [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]\n\
                b torch.float32 [2] [4.0, 5.0]\n\
                t torch.float32 [2, 2] [1.0, 4.0, 2.0, 5.0]\n\
                n torch.int64 [] [7]\n";
    assert_eq!(out, want);
}

const TORCH_SAVES: &str = "
import torch, torchvision, numpy as np
torch.manual_seed(0)
sd = torchvision.models.resnet18().state_dict()
torch.save(sd, 'r18.pth', _use_new_zipfile_serialization=False)
np.savez('r18.npz', **{k: v.numpy() for k, v in sd.items()})
t = torch.arange(24.).reshape(4, 6)
d = {'a': t, 'b': t.t(), 'c': t[1:3, ::2], 'h': t.half(), 'l': torch.arange(5),
     'flag': torch.tensor([True, False]), 'bf': t[0].bfloat16(), 'd': t.double()[2],
     'i8': torch.tensor([-3, 4], dtype=torch.int8), 'empty': torch.zeros(0, 3),
     'scalar': torch.tensor(2.5), 'p': torch.nn.Parameter(t[3]), 'step': 7}
torch.save(d, 'views.pth', _use_new_zipfile_serialization=False)
torch.save(d, 'views_p1.pth', _use_new_zipfile_serialization=False, pickle_protocol=1)
torch.save({'epoch': 3, 'state_dict': {'w': t}}, 'wrapped.pth', _use_new_zipfile_serialization=False)
torch.save({'w': torch.zeros(2, dtype=torch.complex64), 'v': t}, 'complex.pth', _use_new_zipfile_serialization=False)
torch.save(torch.nn.Linear(2, 3), 'module.pth', _use_new_zipfile_serialization=False)
";

#[test]
fn torch_legacy_saves_read_exactly() {
    let Some(py) = common::require_python("torch_legacy_saves_read_exactly") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    common::run_python(&py, dir.path(), TORCH_SAVES, &[]);
    let p = |n: &str| dir.path().join(n);

    let got = read_state_dict(&p("r18.pth")).unwrap();
    let npz: HashMap<String, Tensor> = Tensor::read_npz(p("r18.npz")).unwrap().into_iter().collect();
    assert_eq!(got.len(), 122);
    assert_eq!(got[0].0, "conv1.weight");
    assert_eq!(got.last().unwrap().0, "fc.bias");
    for (name, t) in &got {
        assert_same(name, t, &npz[name]);
    }

    let got: HashMap<String, Tensor> = read_state_dict(&p("views.pth")).unwrap().into_iter().collect();
    assert_views(&got);
    assert_eq!(got.len(), 12);
    // Pickle protocol 1 (text LONG for the magic number, no PROTO opcode): the same tensors.
    let p1 = read_state_dict(&p("views_p1.pth")).unwrap();
    assert_eq!(p1.len(), 12);
    for (name, t) in &p1 {
        assert_same(name, t, &got[name]);
    }

    let got = read_state_dict(&p("wrapped.pth")).unwrap();
    assert_eq!(got.len(), 1);
    assert_same("w", &got[0].1, &Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([4, 6]));

    // A storage that cannot become a tensor is stepped over, and an error only when wanted.
    let e = format!("{:#}", read_state_dict(&p("complex.pth")).unwrap_err());
    assert!(e.contains("complex.pth") && e.contains("unsupported storage type torch.ComplexFloatStorage"), "{e}");
    let e = format!("{:#}", read_state_dict(&p("module.pth")).unwrap_err());
    assert!(e.contains("module.pth") && e.contains("not a dict of tensors"), "{e}");
}

#[test]
fn legacy_corruptions_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = python2_file();
    let bytes = good.bytes();
    assert!(read(d, "good.pth", &bytes).is_ok());

    // Wrong magic number (one byte of it changed).
    let mut b = bytes.clone();
    b[6] ^= 0x01;
    let e = error(d, "magic.pth", &b);
    assert!(e.contains("legacy torch.save file: wrong magic number"), "{e}");

    let mut f = python2_file();
    f.version = Pickle::new().int(1002).stop();
    let e = error(d, "version.pth", &f.bytes());
    assert!(e.contains("protocol version 1002, expected 1001"), "{e}");

    let mut f = python2_file();
    f.sys_info = sys_info(false, 8);
    let e = error(d, "bigendian.pth", &f.bytes());
    assert!(e.contains("big-endian"), "{e}");
    f.sys_info = sys_info(true, 3);
    let e = error(d, "sizes.pth", &f.bytes());
    assert!(e.contains("sys_info says a C long has 3 bytes"), "{e}");

    // Truncated storage: the last storage's bytes cut short.
    let e = error(d, "truncated.pth", &bytes[..bytes.len() - 3]);
    assert!(e.contains(r#"storage "1002" (2 of 2): 1 × 8 bytes do not fit in the 5 bytes left"#), "{e}");
    assert!(e.contains("(truncated?)"), "{e}");

    // Storage count mismatch, both ways.
    let mut f = python2_file();
    f.keys = {
        let mut p = Pickle::new();
        p.op(b"](").s("1000").op(b"e");
        p.stop()
    };
    f.storages.pop();
    let e = error(d, "fewer.pth", &f.bytes());
    assert!(
        e.contains(r#"storage count mismatch: 1 in the key list, 2 named by the pickle; "1002" has no data"#),
        "{e}"
    );
    let mut f = python2_file();
    f.keys = {
        let mut p = Pickle::new();
        p.op(b"](").s("1000").s("1002").s("1003").op(b"e");
        p.stop()
    };
    let e = error(d, "more.pth", &f.bytes());
    assert!(
        e.contains(r#"storage count mismatch: 3 in the key list, 2 named by the pickle; "1003" is not in the pickle"#),
        "{e}"
    );
    f.keys = {
        let mut p = Pickle::new();
        p.op(b"](").s("1000").s("1000").op(b"e");
        p.stop()
    };
    let e = error(d, "twice.pth", &f.bytes());
    assert!(e.contains(r#"storage "1000" is listed twice"#), "{e}");

    // The element count before a storage disagrees with the pickle.
    let mut f = python2_file();
    f.storages[0].0 = 5;
    let e = error(d, "count.pth", &f.bytes());
    assert!(e.contains(r#"storage "1000" (1 of 2): the file holds 5 elements at byte"#), "{e}");
    assert!(e.contains("the pickle says 6"), "{e}");

    // A huge size in the persistent id and before the storage: checked against the file's
    // length, not allocated.
    let mut f = python2_file();
    let huge = [&[0x8a, 8][..], &(1u64 << 60).to_le_bytes()].concat();
    f.object = replace(&f.object, b"M\x06\x00", &huge);
    f.storages[0].0 = 1 << 60;
    let e = error(d, "huge.pth", &f.bytes());
    assert!(e.contains(r#"storage "1000" (1 of 2): 1152921504606846976 × 4 bytes do not fit"#), "{e}");

    // Bytes after the last storage.
    let mut b = bytes.clone();
    b.extend([0; 17]);
    let e = error(d, "trailing.pth", &b);
    assert!(e.contains("17 unexpected bytes after the last storage"), "{e}");

    // A view that runs past its storage.
    let mut f = python2_file();
    f.storages[0] = (2, vec![0; 8]);
    f.object = replace(&f.object, b"M\x06\x00", b"M\x02\x00");
    let e = error(d, "view.pth", &f.bytes());
    assert!(e.contains(r#"storage "1000": a view of 2 elements at offset 4 does not fit its 2 elements"#), "{e}");
    // A tensor that runs past its storage (offset 1 instead of 0).
    let mut f = python2_file();
    f.object = replace(&f.object, b"QM\x00\x00(", b"QM\x01\x00(");
    let e = error(d, "extent.pth", &f.bytes());
    assert!(e.contains(r#"tensor "w": view (offset 1, size [2, 3], stride [3, 1]) runs past its storage of 6"#), "{e}");

    // A LONG4 claiming 2 GB inside a pickle.
    let mut f = python2_file();
    f.object = [&[0x80, 2, 0x8b][..], &0x7fff_ffffu32.to_le_bytes(), b"."].concat();
    let e = error(d, "long4.pth", &f.bytes());
    assert!(e.contains("the object pickle is not readable: truncated at byte"), "{e}");

    // Every truncation, and flipped bytes everywhere: an error or (rarely) a file that still
    // reads, never a panic.
    for cut in 0..bytes.len() {
        let e = error(d, "cut.pth", &bytes[..cut]);
        assert!(cut == 0 || e.contains("legacy torch.save file"), "cut at {cut}: {e}");
    }
    for i in 0..bytes.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= x;
            if let Err(e) = read(d, "flip.pth", &b) {
                let e = format!("{e:#}");
                assert!(e.contains("flip.pth") && !e.contains('\n'), "{e}");
            }
        }
    }
}
