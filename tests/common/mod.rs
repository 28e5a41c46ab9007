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
        // Data digests' memo and any other cache stay in the fixture.
        .env("XDG_CACHE_HOME", cwd.join(".xdg"))
        .output()
        .expect("cnnprobe runs")
}

/// The value of `key` in the provenance of the feature export in `dir` (its features.json).
pub fn provenance(dir: &Path, key: &str) -> String {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("features.json")).unwrap()).unwrap();
    let prov = m["provenance"].as_array().unwrap();
    let kv = prov.iter().find(|kv| kv[0] == key).unwrap_or_else(|| panic!("no {key} in {}", dir.display()));
    kv[1].as_str().unwrap().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The venv Python with torch/torchvision/numpy (set by scripts/env.sh), if any. Under
/// `CI=true` its absence fails the calling test instead of letting it skip: CI runs the
/// README's test command, which always sets it up.
pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("CNNPROBE_PYTHON").map(PathBuf::from).filter(|p| p.exists());
    if p.is_none() {
        skip("CNNPROBE_PYTHON is not set to an existing Python (run through ./scripts/test.sh)");
    }
    p
}

/// Says why a test cannot run here; under `CI=true`, where every tool must be present,
/// that is a failure instead.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: {why}");
    }
    eprintln!("skipped: {why}");
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

/// torch.save legacy files built opcode by opcode, as torch 0.3 under Python 2 wrote them
/// (for the legacy reader's tests and fuzzing, with no Python needed).
pub mod legacy {
    /// Pickle opcodes, protocol 2, as Python 2's cPickle wrote them.
    #[derive(Default)]
    pub struct Pickle(pub Vec<u8>);

    impl Pickle {
        pub fn new() -> Self {
            Pickle(vec![0x80, 2])
        }
        pub fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        /// SHORT_BINSTRING: a Python 2 `str`.
        pub fn s(&mut self, s: &str) -> &mut Self {
            self.0.push(b'U');
            self.0.push(s.len() as u8);
            self.op(s.as_bytes())
        }
        pub fn int(&mut self, i: u16) -> &mut Self {
            self.0.push(b'M');
            self.op(&i.to_le_bytes())
        }
        pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(format!("c{module}\n{name}\n").as_bytes())
        }
        pub fn ints(&mut self, v: &[u16]) -> &mut Self {
            self.op(b"(");
            v.iter().for_each(|&i| {
                self.int(i);
            });
            self.op(b"t")
        }
        pub fn stop(&mut self) -> Vec<u8> {
            self.0.push(b'.');
            std::mem::take(&mut self.0)
        }
    }

    pub const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

    /// The pieces of a legacy file, to put together whole or damaged.
    pub struct Legacy {
        pub magic: Vec<u8>,
        pub version: Vec<u8>,
        pub sys_info: Vec<u8>,
        pub object: Vec<u8>,
        pub keys: Vec<u8>,
        pub storages: Vec<(i64, Vec<u8>)>,
    }

    impl Legacy {
        pub fn bytes(&self) -> Vec<u8> {
            let mut b = [&self.magic[..], &self.version, &self.sys_info, &self.object, &self.keys].concat();
            for (count, data) in &self.storages {
                b.extend(count.to_le_bytes());
                b.extend(data);
            }
            b
        }
    }

    pub fn sys_info(little: bool, long: u16) -> Vec<u8> {
        let mut p = Pickle::new();
        p.op(b"}(").s("protocol_version").int(1001).s("little_endian").op(if little { b"\x88" } else { b"\x89" });
        p.s("type_sizes").op(b"}(").s("short").int(2).s("int").int(4).s("long").int(long).op(b"uu");
        p.stop()
    }

    /// What torch 0.3 under Python 2 wrote for an OrderedDict state dict of
    /// w = [[0, 1, 2], [3, 4, 5]] (float), b = a 2-element view at offset 4 of w's storage,
    /// t = a strided (transposed) view of it, and n = a scalar int64 7. `five`: n's persistent id
    /// without view metadata, as the oldest files have it (today's torch.load refuses that).
    pub fn python2_file_with(five: bool) -> Legacy {
        let magic = {
            let mut p = Pickle::new();
            p.op(&[0x8a, 10]).op(&MAGIC);
            p.stop()
        };
        let version = Pickle::new().int(1001).stop();
        let mut o = Pickle::new();
        o.global("collections", "OrderedDict").op(b"q\x00");
        o.op(b"](");
        // [u'w', _rebuild_tensor(('storage', FloatStorage, '1000', 'cpu', 6, None), 0, (2, 3), (3, 1))]
        o.op(b"](").s("w").global("torch._utils", "_rebuild_tensor").op(b"q\x01((").s("storage");
        o.global("torch", "FloatStorage").op(b"q\x02").s("1000").s("cpu").int(6).op(b"Ntq\x03Q");
        o.int(0).ints(&[2, 3]).ints(&[3, 1]).op(b"tRe");
        // b: a view ('1001', offset 4, 2 elements) of storage '1000', memo for the global.
        o.op(b"](").s("b").op(b"h\x01((").s("storage").op(b"h\x02").s("1000").s("cpu").int(6);
        o.op(b"(").s("1001").int(4).int(2).op(b"ttQ").int(0).ints(&[2]).ints(&[1]).op(b"tRe");
        // t: w's storage seen as [[1, 4], [2, 5]]; the persistent id again, from the memo.
        o.op(b"](").s("t").op(b"h\x01(h\x03Q").int(1).ints(&[2, 2]).ints(&[1, 3]).op(b"tRe");
        // n: a LongStorage, its persistent id with or without view metadata.
        o.op(b"](").s("n").op(b"h\x01((").s("storage").global("torch", "LongStorage").s("1002").s("cpu").int(1);
        o.op(if five { b"tQ" } else { b"NtQ" }).int(0).op(b")").op(b")").op(b"tRe");
        o.op(b"e\x85R");
        // BUILD with the instance dict (torch ≥ 0.4 kept `_metadata` there).
        o.op(b"}(").s("_metadata").op(b"}ub");
        let object = o.stop();
        let keys = {
            let mut p = Pickle::new();
            p.op(b"](").s("1000").s("1002").op(b"e");
            p.stop()
        };
        let w: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let n = 7i64.to_le_bytes().to_vec();
        Legacy { magic, version, sys_info: sys_info(true, 8), object, keys, storages: vec![(6, w), (1, n)] }
    }

    pub fn python2_file() -> Legacy {
        python2_file_with(false)
    }
}

/// Asserts a tensor equals `want` in shape, dtype and every value.
pub fn assert_same(name: &str, got: &tch::Tensor, want: &tch::Tensor) {
    assert_eq!(got.size(), want.size(), "{name}: shape");
    assert_eq!(got.kind(), want.kind(), "{name}: kind");
    assert!(got.equal(want), "{name}: values differ: {got} vs {want}");
}

/// The entries both state-dict "views" fixtures (zip and legacy) hold: strided and offset
/// views of one 4×6 storage, other dtypes, an empty tensor and a scalar.
pub fn assert_views(got: &std::collections::HashMap<String, tch::Tensor>) {
    use tch::{Device, Kind, Tensor};
    let t = Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([4, 6]);
    assert_same("a", &got["a"], &t);
    assert_same("b", &got["b"], &t.tr().contiguous());
    assert_same("c", &got["c"], &t.slice(0, 1, 3, 1).slice(1, 0, 6, 2).contiguous());
    assert_same("h", &got["h"], &t.to_kind(Kind::Half));
    assert_same("l", &got["l"], &Tensor::arange(5, (Kind::Int64, Device::Cpu)));
    assert_same("flag", &got["flag"], &Tensor::from_slice(&[true, false]));
    assert_same("bf", &got["bf"], &t.get(0).to_kind(Kind::BFloat16));
    assert_same("d", &got["d"], &t.get(2).to_kind(Kind::Double));
    assert_same("i8", &got["i8"], &Tensor::from_slice(&[-3i8, 4]));
    assert_eq!(got["empty"].size(), [0, 3]);
    assert_same("scalar", &got["scalar"], &Tensor::from(2.5f32));
    assert_same("p", &got["p"], &t.get(3));
}

/// class c: a flat colour per class plus noise, `n` images per split, PNG for even
/// indices and JPEG for odd ones.
pub fn write_folder(root: &Path, classes: &[&str], n_train: usize, n_test: usize, size: u32) {
    let mut rng = Bytes::new(5);
    for (split, n) in [("train", n_train), ("test", n_test)] {
        for (c, name) in classes.iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let base = [(c * 80) as u8, (255 - c * 60) as u8, (c * 37) as u8];
                let img = image::RgbImage::from_fn(size, size, |_, _| {
                    image::Rgb(base.map(|b| b.saturating_add(rng.next() % 40)))
                });
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                img.save(dir.join(format!("{i:04}.{ext}"))).unwrap();
            }
        }
    }
}
