//! State-dict loading: torch.save zip archives written by the venv's torch, read back by
//! `cnnprobe::models::weights` and compared value for value; strict loading into a
//! VarStore; corrupt files give errors, not panics.
mod common;

use cnnprobe::models::weights::{load_into, read_state_dict};
use cnnprobe::models::{Arch, ModelConfig, Network, Stem};
use common::{assert_same, assert_views};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// Runs `script` with the venv Python in `dir`; None (after printing why) without one.
fn python(dir: &Path, script: &str) -> Option<()> {
    let Some(py) = common::python() else {
        eprintln!("skipped: no CNNPROBE_PYTHON (source scripts/env.sh)");
        return None;
    };
    let out = Command::new(py).arg("-c").arg(script).current_dir(dir).output().expect("python runs");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(())
}

const RESNET18_SEED0: &str = "
import torch, torchvision, numpy as np
torch.manual_seed(0)
m = torchvision.models.resnet18()
sd = m.state_dict()
torch.save(sd, 'sd.pth')
np.savez('sd.npz', **{k: v.numpy() for k, v in sd.items()})
with open('names.txt', 'w') as f:
    f.write('\\n'.join(sd.keys()))
";

#[test]
fn torchvision_resnet18_state_dict_reads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    if python(dir.path(), RESNET18_SEED0).is_none() {
        return;
    }
    let got = read_state_dict(&dir.path().join("sd.pth")).unwrap();
    let names = std::fs::read_to_string(dir.path().join("names.txt")).unwrap();
    let names: Vec<&str> = names.lines().collect();
    let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got_names, names, "names in file order");
    assert_eq!(got.len(), 122);

    let npz: std::collections::HashMap<String, Tensor> =
        Tensor::read_npz(dir.path().join("sd.npz")).unwrap().into_iter().collect();
    for (name, t) in &got {
        assert_eq!(t.device(), Device::Cpu);
        let want = &npz[name];
        if name.ends_with("num_batches_tracked") {
            assert_eq!(t.kind(), Kind::Int64, "{name}");
            assert_eq!(t.size(), Vec::<i64>::new(), "{name}");
        } else {
            assert_eq!(t.kind(), Kind::Float, "{name}");
        }
        assert_same(name, t, want);
    }
    let (_, fc) = got.iter().find(|(n, _)| n == "fc.weight").unwrap();
    assert_eq!(fc.size(), [1000, 512]);
}

#[test]
fn views_shared_storages_and_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let script = "
import torch
t = torch.arange(24.).reshape(4, 6)
d = {'a': t, 'b': t.t(), 'c': t[1:3, ::2], 'h': t.half(), 'l': torch.arange(5),
     'flag': torch.tensor([True, False]), 'bf': t[0].bfloat16(), 'd': t.double()[2],
     'i8': torch.tensor([-3, 4], dtype=torch.int8), 'u8': torch.tensor([200, 7], dtype=torch.uint8),
     'i32': torch.tensor([-70000], dtype=torch.int32), 'i16': torch.tensor([-300], dtype=torch.int16),
     'empty': torch.zeros(0, 3), 'scalar': torch.tensor(2.5), 'p': torch.nn.Parameter(t[3]),
     'step': 7, 'note': 'not a tensor'}
torch.save(d, 'v.pth')
";
    if python(dir.path(), script).is_none() {
        return;
    }
    let got: std::collections::HashMap<String, Tensor> =
        read_state_dict(&dir.path().join("v.pth")).unwrap().into_iter().collect();
    assert_views(&got);
    assert_same("u8", &got["u8"], &Tensor::from_slice(&[200u8, 7]));
    assert_same("i32", &got["i32"], &Tensor::from_slice(&[-70000i32]));
    assert_same("i16", &got["i16"], &Tensor::from_slice(&[-300i16]));
    assert!(!got.contains_key("step") && !got.contains_key("note"));
    assert_eq!(got.len(), 15);
    assert!(got["b"].is_contiguous() && got["c"].is_contiguous());
}

#[test]
fn plain_dict_and_wrapped_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let script = "
import torch
from collections import OrderedDict
torch.manual_seed(1)
sd = OrderedDict([('w', torch.randn(3, 2)), ('b', torch.randn(3))])
torch.save(dict(sd), 'plain.pth')
torch.save({'epoch': 3, 'state_dict': sd, 'optimizer': {'lr': 0.1}}, 'wrapped.pth')
torch.save({'model': dict(sd)}, 'model.pt')
torch.save(sd, 'legacy.pth', _use_new_zipfile_serialization=False)
torch.save([sd['w']], 'list.pth')
import zipfile, numpy as np
with zipfile.ZipFile('plain.pth') as src, zipfile.ZipFile('big.pth', 'w') as dst:
    for info in src.infolist():
        data = src.read(info.filename)
        if '/data/' in info.filename:
            data = np.frombuffer(data, '<f4').astype('>f4').tobytes()
        if info.filename.endswith('/byteorder'):
            data = b'big'
        dst.writestr(info.filename, data)
with open('w.bin', 'wb') as f:
    f.write(sd['w'].numpy().tobytes() + sd['b'].numpy().tobytes())
";
    if python(dir.path(), script).is_none() {
        return;
    }
    let raw = std::fs::read(dir.path().join("w.bin")).unwrap();
    let w = Tensor::from_data_size(&raw[..24], &[3, 2], Kind::Float);
    let b = Tensor::from_data_size(&raw[24..], &[3], Kind::Float);
    for file in ["plain.pth", "wrapped.pth", "model.pt", "big.pth", "legacy.pth"] {
        let got = read_state_dict(&dir.path().join(file)).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["w", "b"], "{file}");
        assert_same(file, &got[0].1, &w);
        assert_same(file, &got[1].1, &b);
    }
    let e = format!("{:#}", read_state_dict(&dir.path().join("list.pth")).unwrap_err());
    assert!(e.contains("list.pth") && e.contains("not a dict"), "{e}");
}

#[test]
fn load_into_is_exact_and_strict() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{RESNET18_SEED0}
m10 = torchvision.models.resnet18(num_classes=10)
sd = m10.state_dict()
del sd['layer2.0.bn1.running_var']
sd['extra.weight'] = torch.zeros(2)
torch.save(sd, 'bad.pth')
"
    );
    if python(dir.path(), &script).is_none() {
        return;
    }
    let pth = dir.path().join("sd.pth");
    let cfg = ModelConfig::torchvision(Arch::Resnet18, Stem::Imagenet, 1);
    let net = Network::random(&cfg, Device::Cpu).unwrap();
    load_into(&net.vs, read_state_dict(&pth).unwrap(), &pth).unwrap();
    let file: std::collections::HashMap<String, Tensor> = read_state_dict(&pth).unwrap().into_iter().collect();
    let vars = net.vs.variables();
    assert_eq!(vars.len(), file.len());
    for (name, v) in &vars {
        assert_same(name, v, &file[name]);
    }

    let bad = dir.path().join("bad.pth");
    let before = net.vs.variables()["conv1.weight"].copy();
    let e = load_into(&net.vs, read_state_dict(&bad).unwrap(), &bad).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("bad.pth"), "{e}");
    assert!(e.contains("missing keys [layer2.0.bn1.running_var]"), "{e}");
    assert!(e.contains("unexpected keys [extra.weight]"), "{e}");
    assert!(e.contains("fc.weight: file [10, 512], model [1000, 512]"), "{e}");
    assert!(e.contains("fc.bias: file [10], model [1000]"), "{e}");
    // Nothing was copied.
    assert!(net.vs.variables()["conv1.weight"].equal(&before));
}

fn err_of(path: &Path) -> String {
    match read_state_dict(path) {
        Ok(t) => panic!("{} read fine ({} tensors)", path.display(), t.len()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn corrupt_files_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    let script = "
import torch, zipfile
torch.save({'w': torch.arange(10.), 'c': torch.zeros(2, dtype=torch.complex64)}, 'ok.pth')
torch.save({'w': torch.arange(10.)}, 'small.pth')
with zipfile.ZipFile('small.pth') as src, zipfile.ZipFile('short.pth', 'w') as dst:
    for info in src.infolist():
        data = src.read(info.filename)
        if info.filename.endswith('/data/0'):
            data = data[:10]
        dst.writestr(info.filename, data)
";
    if python(dir.path(), script).is_none() {
        return;
    }
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    let ok = std::fs::read(p("ok.pth")).unwrap();

    // A complex storage is only an error once its tensor is wanted.
    let e = err_of(&p("ok.pth"));
    assert!(e.contains("ok.pth") && e.contains("unsupported storage type torch.ComplexFloatStorage"), "{e}");

    let e = err_of(&p("short.pth"));
    assert!(e.contains("short.pth") && e.contains("storage data/0 has 10 bytes, needs 40"), "{e}");

    std::fs::write(p("half.pth"), &ok[..ok.len() / 2]).unwrap();
    let e = err_of(&p("half.pth"));
    assert!(e.contains("half.pth") && e.contains("zip"), "{e}");

    std::fs::write(p("empty.pth"), b"").unwrap();
    let e = err_of(&p("empty.pth"));
    assert!(e.contains("empty.pth") && e.contains("empty file"), "{e}");

    let mut rng = common::Bytes::new(7);
    let noise: Vec<u8> = (0..4096).map(|_| rng.next()).collect();
    std::fs::write(p("noise.pth"), &noise).unwrap();
    let e = err_of(&p("noise.pth"));
    assert!(e.contains("noise.pth"), "{e}");

    // Truncations and flipped bytes: errors or (for bytes outside what is read, such as
    // alignment padding) success, never a panic.
    let small = std::fs::read(p("small.pth")).unwrap();
    for cut in (0..small.len()).step_by(37) {
        std::fs::write(p("cut.pth"), &small[..cut]).unwrap();
        assert!(read_state_dict(&p("cut.pth")).is_err(), "cut at {cut}");
    }
    for i in (0..small.len()).step_by(5) {
        let mut b = small.clone();
        b[i] ^= 0x5a;
        std::fs::write(p("flip.pth"), &b).unwrap();
        let _ = read_state_dict(&p("flip.pth"));
    }

    std::fs::write(p("x.safetensors"), &noise).unwrap();
    let e = err_of(&p("x.safetensors"));
    assert!(e.contains("x.safetensors") && e.contains("safetensors"), "{e}");
    std::fs::write(p("e.safetensors"), b"").unwrap();
    let e = err_of(&p("e.safetensors"));
    assert!(e.contains("e.safetensors"), "{e}");

    let e = err_of(&p("missing.pth"));
    assert!(e.contains("missing.pth") && e.contains("cannot open"), "{e}");
}

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let w = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]);
    let n = Tensor::from(5i64);
    Tensor::write_safetensors(&[("w", &w), ("n", &n)], &path).unwrap();
    let got: std::collections::HashMap<String, Tensor> = read_state_dict(&path).unwrap().into_iter().collect();
    assert_same("w", &got["w"], &w);
    assert_same("n", &got["n"], &n);
}
