//! Reading state dicts from files: torch.save's zip archives (PyTorch ≥ 1.6) and legacy
//! streams (before 1.6, and `_use_new_zipfile_serialization=False`), and `.safetensors`.
//!
//! libtorch's own loaders (`Tensor::loadz_multi`, `VarStore::load`) reject what
//! `torch.save(model.state_dict(), ...)` writes: an `OrderedDict` carrying `_metadata`
//! ("isGenericDict() INTERNAL ASSERT FAILED"), and they cannot read the legacy format at all.
//! So both containers are read here and their pickles run through a small interpreter.
//!
//! Why no crate: `serde-pickle` has no persistent ids (`BINPERSID`, which is how torch refers
//! to every storage) and replaces unresolved globals such as `torch._utils._rebuild_tensor_v2`
//! with `None`, so tensors cannot be rebuilt from its value tree. `candle-core`'s pickle
//! module reads zip archives only and brings a whole tensor library. `pytorch-reader` (burn's)
//! reads both containers, but returns tensors in hash order (state dicts have an order),
//! refuses big-endian archives that this reader handles, hands each tensor back as a `Vec`
//! to copy again, and would add a second `zip` major version. The interpreter below covers
//! the opcodes of pickle protocols 0–5 that plain data and torch.save emit (Python 2's
//! included); it never imports or calls anything: the few globals torch uses are recognised
//! by name, every other reduction becomes an opaque value that is skipped.
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;
use std::{cell::RefCell, fmt::Write as _};
use tch::{Kind, Tensor};

/// Reads a state dict: named CPU tensors in file order.
///
/// `.safetensors` files go through libtorch's reader; anything else must be a torch.save file
/// (`.pth`, `.pt`, `.bin`, ...), zip or legacy, told apart by its first bytes. A top-level
/// dict without tensors that wraps one dict of tensors (`{"state_dict": {...}}`,
/// `{"model": {...}}`) yields the inner dict. Entries that are not tensors (ints, strings,
/// nested dicts) are skipped.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let name = path.display();
    let mut file = File::open(path).with_context(|| format!("{name}: cannot open"))?;
    let len = file.metadata().with_context(|| format!("{name}: cannot read"))?.len();
    let mut head = [0u8; 512];
    let n = read_up_to(&mut file, &mut head).with_context(|| format!("{name}: cannot read"))?;
    let head = &head[..n];
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    let looks_safetensors = n >= 9 && head[8] == b'{';
    if ext.as_deref() == Some("safetensors") || (!head.starts_with(b"PK") && looks_safetensors) {
        return read_safetensors(path);
    }
    if n == 0 {
        bail!("{name}: empty file (expected a torch.save file or a safetensors file)");
    }
    file.rewind().with_context(|| format!("{name}: cannot read"))?;
    if head.starts_with(b"PK") {
        // The zip crate is meant to return errors on malformed archives; a panic deep inside
        // it on hostile input must still not take the caller down.
        return match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_torch_zip(file))) {
            Ok(r) => r.map_err(|e| anyhow!("{name}: {e:#}")),
            Err(_) => bail!("{name}: corrupt zip archive"),
        };
    }
    // PROTO (protocol 2+) or the text LONG of protocols 0/1: the legacy magic-number pickle.
    if head[0] == 0x80 || (head[0] == b'L' && head.get(1).is_some_and(u8::is_ascii_digit)) {
        return read_legacy(file, len).map_err(|e| anyhow!("{name}: legacy torch.save file: {e:#}"));
    }
    if head.get(257..262) == Some(b"ustar") {
        bail!("{name}: a tar archive (torch.save before PyTorch 0.1.10 wrote those), which is not supported");
    }
    bail!("{name}: not a torch.save file (zip or legacy) nor a safetensors file");
}

/// libtorch's reader validates the header and sizes but returns the tensors in hash order;
/// they are put back in the file's order (by data offset).
fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let name = path.display();
    let mut tensors = Tensor::read_safetensors(path).map_err(|e| match e {
        tch::TchError::SafeTensorError { err, .. } => {
            anyhow!("{name}: not a valid safetensors file ({err})")
        }
        e => anyhow!("{name}: cannot read safetensors file ({e})"),
    })?;
    // The header was just validated: 8-byte little-endian length, then JSON.
    let bytes = std::fs::read(path).with_context(|| format!("{name}: cannot read"))?;
    let offsets: HashMap<String, u64> = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|n| bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?))
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok())
        .and_then(|v| {
            v.as_object()
                .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v["data_offsets"][0].as_u64()?))).collect())
        })
        .unwrap_or_default();
    tensors.sort_by_key(|(k, _)| offsets.get(k).copied().unwrap_or(u64::MAX));
    Ok(tensors)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The largest `data.pkl` accepted (a state dict's pickle is kilobytes to a few megabytes).
const MAX_PICKLE_BYTES: u64 = 1 << 30;

fn read_torch_zip(file: File) -> Result<Vec<(String, Tensor)>> {
    let mut zip =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|e| anyhow!("corrupt or truncated zip archive ({e})"))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .min_by_key(|n| n.len())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("not a torch.save archive (no <name>/data.pkl inside the zip)"))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let big_endian = match read_entry(&mut zip, &format!("{prefix}byteorder"), 64) {
        Ok(b) => match b.trim_ascii() {
            b"little" => false,
            b"big" => true,
            other => {
                bail!("{prefix}byteorder says {:?}, expected \"little\" or \"big\"", String::from_utf8_lossy(other))
            }
        },
        Err(EntryError::Missing) => false,
        Err(EntryError::Other(e)) => return Err(e),
    };
    let pickle = match read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES) {
        Ok(p) => p,
        Err(EntryError::Missing) => bail!("{pkl_name} is missing"),
        Err(EntryError::Other(e)) => return Err(e),
    };
    let mut src = Source::new(pickle.as_slice(), 0, pickle.len() as u64);
    let (root, refs) =
        Unpickler::new(&mut src).run_with_storages().with_context(|| format!("{pkl_name} is not a readable pickle"))?;
    let entries = select_state_dict(&root)?;
    let shared = shared_storages(&entries);
    let mut loaded: HashMap<usize, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (key, spec) in entries {
        let t = (|| {
            let idx = spec.storage.index;
            if let std::collections::hash_map::Entry::Vacant(e) = loaded.entry(idx) {
                e.insert(read_zip_storage(&mut zip, prefix, big_endian, &refs[idx])?);
            }
            build(&spec, &refs, &loaded, shared.contains(&idx))
        })()
        .with_context(|| format!("tensor {key:?}"))?;
        out.push((key, t));
    }
    Ok(out)
}

enum EntryError {
    Missing,
    Other(anyhow::Error),
}

/// Reads one zip entry, at most `limit` bytes (more is an error).
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, EntryError> {
    let entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Err(EntryError::Missing),
        Err(e) => return Err(EntryError::Other(anyhow!("cannot open {name} ({e})"))),
    };
    let mut buf = Vec::new();
    entry.take(limit + 1).read_to_end(&mut buf).map_err(|e| EntryError::Other(anyhow!("cannot read {name} ({e})")))?;
    if buf.len() as u64 > limit {
        return Err(EntryError::Other(anyhow!("{name} is larger than {limit} bytes")));
    }
    Ok(buf)
}

/// One storage of a zip archive (`<prefix>data/<key>`), read straight into a tensor.
fn read_zip_storage<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    prefix: &str,
    big_endian: bool,
    r: &StorageRef,
) -> Result<Tensor> {
    let kind = r.kind.ok_or_else(|| anyhow!("unsupported storage type torch.{}", r.type_name))?;
    let name = format!("data/{}", r.key);
    let mut t = storage_tensor(kind, r.numel).with_context(|| format!("storage {name}"))?;
    let mut entry = match zip.by_name(&format!("{prefix}{name}")) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => bail!("storage {name} is missing from the archive"),
        Err(e) => bail!("cannot open storage {name} ({e})"),
    };
    let bytes = bytes_mut(&mut t);
    let needed = bytes.len();
    let got = read_up_to(&mut entry, bytes).map_err(|e| anyhow!("cannot read storage {name} ({e})"))?;
    if got < needed {
        bail!("storage {name} has {got} bytes, needs {needed} ({} × {kind:?})", r.numel);
    }
    // Read on to the entry's end, where the zip crate checks the CRC; a storage larger than
    // its tensors need is fine.
    std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| anyhow!("cannot read storage {name} ({e})"))?;
    fix_bytes(bytes, kind, big_endian);
    Ok(t)
}

/// torch's legacy magic number (torch/serialization.py, MAGIC_NUMBER).
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// torch's legacy PROTOCOL_VERSION.
const LEGACY_PROTOCOL: i64 = 1001;

/// The legacy container (torch/serialization.py `_legacy_save`): pickles of the magic number,
/// the protocol version, sys_info, the object, and the sorted list of storage keys; then, per
/// key in that list's order, an int64 element count and the storage's little-endian bytes.
/// Read as a stream: storages go straight from the file into their tensors.
fn read_legacy(file: File, len: u64) -> Result<Vec<(String, Tensor)>> {
    let mut src = Source::new(BufReader::with_capacity(1 << 16, file), 0, len);
    let magic = Unpickler::new(&mut src).run().context("the magic-number pickle is not readable")?;
    if !matches!(magic, Value::BigInt(Some(LEGACY_MAGIC))) {
        bail!("wrong magic number: its first pickle holds {}, not 0x1950a86a20f9469cfc6c", magic.describe());
    }
    let version = Unpickler::new(&mut src).run().context("the protocol-version pickle is not readable")?;
    if !matches!(version, Value::Int(LEGACY_PROTOCOL)) {
        bail!("protocol version {}, expected {LEGACY_PROTOCOL}", version.describe());
    }
    let sys_info = Unpickler::new(&mut src).run().context("the sys_info pickle is not readable")?;
    check_sys_info(&sys_info)?;
    let (root, refs) = Unpickler::new(&mut src).run_with_storages().context("the object pickle is not readable")?;
    let keys = Unpickler::new(&mut src).run().context("the storage-key pickle is not readable")?;
    let keys = storage_keys(&keys, &refs)?;
    let entries = select_state_dict(&root)?;

    let wanted: HashSet<usize> = entries.iter().map(|(_, s)| s.storage.index).collect();
    let by_key: HashMap<&str, usize> = refs.iter().enumerate().map(|(i, r)| (r.key.as_str(), i)).collect();
    let mut loaded: HashMap<usize, Tensor> = HashMap::new();
    let total = keys.len();
    for (i, key) in keys.iter().enumerate() {
        let idx = by_key[key.as_str()];
        let r = &refs[idx];
        let what = || format!("storage {key:?} ({} of {total})", i + 1);
        let at = src.pos;
        let count = i64::from_le_bytes(src.array().with_context(|| format!("{}: no element count", what()))?);
        if count != r.numel {
            bail!("{}: the file holds {count} elements at byte {at}, the pickle says {}", what(), r.numel);
        }
        let elt = storage_elt_size(&r.type_name)
            .ok_or_else(|| anyhow!("{}: unsupported storage type torch.{}", what(), r.type_name))?;
        let nbytes = usize::try_from(count).ok().and_then(|n| n.checked_mul(elt)).filter(|&n| n as u64 <= src.left());
        let Some(nbytes) = nbytes else {
            bail!(
                "{}: {count} × {elt} bytes do not fit in the {} bytes left at byte {} (truncated?)",
                what(),
                src.left(),
                src.pos
            );
        };
        match r.kind {
            Some(kind) if wanted.contains(&idx) => {
                let mut t = storage_tensor(kind, count).with_context(what)?;
                let bytes = bytes_mut(&mut t);
                src.fill(bytes).with_context(what)?;
                fix_bytes(bytes, kind, false);
                loaded.insert(idx, t);
            }
            _ => src.skip(nbytes as u64).with_context(what)?,
        }
    }
    if src.left() > 0 {
        bail!("{} unexpected bytes after the last storage (at byte {})", src.left(), src.pos);
    }
    let shared = shared_storages(&entries);
    let mut out = Vec::with_capacity(entries.len());
    for (key, spec) in entries {
        let t = build(&spec, &refs, &loaded, shared.contains(&spec.storage.index))
            .with_context(|| format!("tensor {key:?}"))?;
        out.push((key, t));
    }
    Ok(out)
}

/// torch writes storages little-endian whatever the machine, but no big-endian file is at
/// hand to test against, so a big-endian writer is refused rather than guessed at; type sizes
/// must be plausible (a C long is 4 or 8 bytes).
fn check_sys_info(v: &Value) -> Result<()> {
    let Value::Dict(d) = v else {
        bail!("sys_info is {}, not a dict", v.describe());
    };
    let get = |d: &Dict, k: &str| {
        d.borrow().iter().find(|(x, _)| matches!(x, Value::Str(s) if s == k)).map(|(_, v)| v.clone())
    };
    match get(d, "little_endian") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            bail!("written on a big-endian machine (sys_info little_endian=False), not supported")
        }
        other => bail!("sys_info has no little_endian flag ({})", other.map_or("missing".into(), |v| v.describe())),
    }
    if let Some(sizes) = get(d, "type_sizes") {
        let Value::Dict(sizes) = sizes else {
            bail!("sys_info type_sizes is {}, not a dict", sizes.describe());
        };
        for (k, ok) in [("short", &[2][..]), ("int", &[4]), ("long", &[4, 8])] {
            match get(&sizes, k) {
                Some(Value::Int(n)) if ok.contains(&n) => {}
                None => {}
                Some(v) => bail!("sys_info says a C {k} has {} bytes", v.describe()),
            }
        }
    }
    Ok(())
}

/// The storage-key list: each key once, and exactly the storages the object pickle names.
fn storage_keys(v: &Value, refs: &[StorageRef]) -> Result<Vec<String>> {
    let Value::List(l) = v else {
        bail!("the storage-key pickle holds {}, not a list", v.describe());
    };
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for k in l.borrow().iter() {
        let Value::Str(k) = k else {
            bail!("the storage-key list holds {}, not a string", k.describe());
        };
        if !seen.insert(k.clone()) {
            bail!("storage {k:?} is listed twice");
        }
        keys.push(k.clone());
    }
    let named: HashSet<&str> = refs.iter().map(|r| r.key.as_str()).collect();
    if let Some(k) = keys.iter().find(|k| !named.contains(k.as_str())) {
        bail!(
            "storage count mismatch: {} in the key list, {} named by the pickle; {k:?} is not in the pickle",
            keys.len(),
            refs.len()
        );
    }
    if let Some(r) = refs.iter().find(|r| !seen.contains(&r.key)) {
        bail!(
            "storage count mismatch: {} in the key list, {} named by the pickle; {:?} has no data",
            keys.len(),
            refs.len(),
            r.key
        );
    }
    Ok(keys)
}

/// Picks the dict of tensors out of the unpickled root object.
fn select_state_dict(root: &Value) -> Result<Vec<(String, TensorSpec)>> {
    let Value::Dict(top) = root else {
        bail!("the saved object is {}, not a dict of tensors", root.describe());
    };
    let tensors = |d: &Dict| -> Vec<(String, TensorSpec)> {
        d.borrow()
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => Some((k.clone(), (**t).clone())),
                _ => None,
            })
            .collect()
    };
    let direct = tensors(top);
    if !direct.is_empty() {
        return Ok(direct);
    }
    // A checkpoint wrapping the state dict: prefer the usual key names, else the only
    // dict-of-tensors value.
    let top = top.borrow();
    let inner: Vec<(&str, Vec<(String, TensorSpec)>)> = top
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Dict(d)) => {
                let t = tensors(d);
                (!t.is_empty()).then_some((k.as_str(), t))
            }
            _ => None,
        })
        .collect();
    const PREFERRED: [&str; 5] = ["state_dict", "model_state_dict", "model", "net", "module"];
    for p in PREFERRED {
        if let Some((_, t)) = inner.iter().find(|(k, _)| *k == p) {
            return Ok(t.clone());
        }
    }
    if inner.len() == 1 {
        return Ok(inner[0].1.clone());
    }
    let keys: Vec<String> = top.iter().map(|(k, _)| k.describe()).collect();
    if inner.is_empty() {
        bail!("no tensors found (top-level keys: {})", list(&keys, 10));
    }
    let names: Vec<&str> = inner.iter().map(|(k, _)| *k).collect();
    bail!(
        "no tensors at the top level and several dicts of tensors ({names:?}); \
         cannot tell which is the state dict"
    )
}

/// `('storage', torch.XStorage, key, location, numel[, view])` from a persistent id.
#[derive(Clone, Debug)]
struct StorageRef {
    type_name: String,
    kind: Option<Kind>,
    key: String,
    numel: i64,
}

/// What a persistent id hands to `_rebuild_tensor`: a storage, or (legacy files of old
/// PyTorch versions) a window `offset..offset + numel` of one.
#[derive(Clone, Copy, Debug)]
struct StorageView {
    index: usize,
    offset: i64,
    numel: i64,
}

/// A `_rebuild_tensor(_v2)` call, kept lazy so that skipped entries cost nothing.
#[derive(Clone, Debug)]
struct TensorSpec {
    storage: StorageView,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "ByteStorage" => Kind::Uint8,
        "CharStorage" => Kind::Int8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// Bytes per element, also of storages that cannot become tensors here (so a legacy stream
/// can step over them).
fn storage_elt_size(name: &str) -> Option<usize> {
    if let Some(k) = storage_kind(name) {
        return Some(k.elt_size_in_bytes());
    }
    Some(match name {
        "ComplexDoubleStorage" => 16,
        "ComplexFloatStorage" => 8,
        "ComplexHalfStorage" | "QInt32Storage" => 4,
        "UntypedStorage" | "QInt8Storage" | "QUInt8Storage" | "QUInt4x2Storage" | "QUInt2x4Storage" => 1,
        _ => return None,
    })
}

/// A storage tensor to read the file into, through `bytes_mut`.
fn storage_tensor(kind: Kind, numel: i64) -> Result<Tensor> {
    Tensor::f_empty([numel], (kind, tch::Device::Cpu)).map_err(|e| anyhow!("cannot allocate {numel} × {kind:?}: {e}"))
}

/// The bytes of a storage tensor from `storage_tensor`, zeroed, to read the file straight into.
/// Zeroed here rather than by `Tensor::zeros`: libtorch's fill runs as an OpenMP parallel
/// region per storage, which on a busy machine cost more than the reading itself.
fn bytes_mut(t: &mut Tensor) -> &mut [u8] {
    let n = t.numel() * t.kind().elt_size_in_bytes();
    if n == 0 {
        return &mut [];
    }
    let ptr = t.data_ptr() as *mut u8;
    // SAFETY: `t` is a contiguous CPU tensor that owns `n` bytes at data_ptr and shares them
    // with nothing yet; they are initialised before the slice exists, and the slice borrows
    // `t` mutably, so it cannot outlive it.
    unsafe {
        std::ptr::write_bytes(ptr, 0, n);
        std::slice::from_raw_parts_mut(ptr, n)
    }
}

/// File bytes to host values: byte order, and bools as libtorch assumes them (0 or 1).
fn fix_bytes(bytes: &mut [u8], kind: Kind, big_endian: bool) {
    let elt = kind.elt_size_in_bytes();
    if big_endian && elt > 1 {
        bytes.chunks_exact_mut(elt).for_each(|c| c.reverse());
    }
    if kind == Kind::Bool {
        bytes.iter_mut().for_each(|b| *b = (*b != 0) as u8);
    }
}

/// Storages that more than one tensor uses.
fn shared_storages(entries: &[(String, TensorSpec)]) -> HashSet<usize> {
    let mut seen = HashSet::new();
    entries.iter().map(|(_, s)| s.storage.index).filter(|&i| !seen.insert(i)).collect()
}

/// The tensor `spec` describes, checked against its storage (view). It is the storage itself
/// when it can be (contiguous, used by no other tensor), so no tensor is copied twice; a
/// shared storage is copied out, so that the tensors returned never share memory.
fn build(spec: &TensorSpec, refs: &[StorageRef], loaded: &HashMap<usize, Tensor>, shared: bool) -> Result<Tensor> {
    let view = spec.storage;
    let Some(storage) = loaded.get(&view.index) else {
        let r = &refs[view.index];
        bail!("unsupported storage type torch.{}", r.type_name);
    };
    if spec.size.len() != spec.stride.len() {
        bail!("size {:?} and stride {:?} differ in length", spec.size, spec.stride);
    }
    if spec.offset < 0 || spec.size.iter().chain(&spec.stride).any(|&v| v < 0) {
        bail!("invalid view: offset {}, size {:?}, stride {:?}", spec.offset, spec.size, spec.stride);
    }
    let numel = view.numel;
    // Last element reached by the view, which must lie inside the storage.
    let empty = spec.size.contains(&0);
    let extent = spec
        .size
        .iter()
        .zip(&spec.stride)
        .try_fold(spec.offset, |acc, (&n, &s)| (n.max(1) - 1).checked_mul(s).and_then(|d| acc.checked_add(d)));
    match extent {
        Some(_) if empty => {}
        Some(last) if last < numel => {}
        _ => bail!(
            "view (offset {}, size {:?}, stride {:?}) runs past its storage of {numel} elements",
            spec.offset,
            spec.size,
            spec.stride
        ),
    }
    let t = if empty {
        Tensor::f_empty(spec.size.as_slice(), (storage.kind(), tch::Device::Cpu))?
    } else {
        let v = storage.f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), view.offset + spec.offset)?;
        if shared {
            let mut own = Tensor::f_empty(spec.size.as_slice(), (storage.kind(), tch::Device::Cpu))?;
            own.f_copy_(&v)?;
            own
        } else {
            v.f_contiguous()?
        }
    };
    Ok(t)
}

/// Pickle bytes from a slice or a file, with the count of bytes left known, so that no length
/// read from the file is trusted (or allocated) beyond what the file holds.
struct Source<R> {
    r: R,
    /// Bytes consumed, counted from the file's start.
    pos: u64,
    end: u64,
}

impl<R: BufRead> Source<R> {
    fn new(r: R, pos: u64, end: u64) -> Self {
        Source { r, pos, end }
    }
    fn left(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }
    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 > self.left() {
            bail!("truncated at byte {}", self.pos);
        }
        self.r.read_exact(buf).map_err(|e| anyhow!("cannot read at byte {} ({e})", self.pos))?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        if n as u64 > self.left() {
            bail!("truncated at byte {}", self.pos);
        }
        let mut v = vec![0; n];
        self.fill(&mut v)?;
        Ok(v)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        self.fill(&mut a)?;
        Ok(a)
    }
    fn skip(&mut self, n: u64) -> Result<()> {
        if n > self.left() {
            bail!("truncated at byte {}", self.pos);
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| anyhow!("cannot read at byte {} ({e})", self.pos))?;
        if copied < n {
            bail!("truncated at byte {}", self.pos + copied);
        }
        self.pos += n;
        Ok(())
    }
    /// One text line of the protocol-0 opcodes, without its newline.
    fn line(&mut self) -> Result<String> {
        const MAX_LINE: u64 = 1 << 16;
        let mut buf = Vec::new();
        let limit = self.left().min(MAX_LINE);
        (&mut self.r)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|e| anyhow!("cannot read at byte {} ({e})", self.pos))?;
        let at = self.pos;
        self.pos += buf.len() as u64;
        if buf.pop() != Some(b'\n') {
            bail!("truncated or overlong text line at byte {at}");
        }
        String::from_utf8(buf).map_err(|_| anyhow!("invalid text at byte {at}"))
    }
}

// ---------------------------------------------------------------------------------------
// The pickle interpreter.

type Dict = Rc<RefCell<Vec<(Value, Value)>>>;
type List = Rc<RefCell<Vec<Value>>>;

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64 (LONG1/LONG4, text LONG): its value where it fits in i128
    /// (torch's legacy magic number does).
    BigInt(Option<i128>),
    Float(f64),
    Str(String),
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(List),
    Dict(Dict),
    /// `module.name`, as pushed by GLOBAL / STACK_GLOBAL.
    Global(Rc<(String, String)>),
    Storage(StorageView),
    Tensor(Rc<TensorSpec>),
    /// The result of a reduction this reader does not model (`torch.device`, custom classes).
    Opaque(Rc<String>),
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("{b}"),
            Value::Int(i) => format!("{i}"),
            Value::BigInt(Some(i)) => format!("{i:#x}"),
            Value::BigInt(None) => "a big int".into(),
            Value::Float(f) => format!("{f}"),
            Value::Str(s) => format!("{s:?}"),
            Value::Bytes => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("{}.{}", g.0, g.1),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Opaque(s) => format!("a {s} object"),
        }
    }
}

struct Unpickler<'s, R> {
    src: &'s mut Source<R>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: Vec<StorageRef>,
    storage_ids: HashMap<String, usize>,
}

impl<'s, R: BufRead> Unpickler<'s, R> {
    fn new(src: &'s mut Source<R>) -> Self {
        Unpickler {
            src,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
            storage_ids: HashMap::new(),
        }
    }

    /// The unpickled object and the storages its persistent ids named, in first-use order.
    fn run_with_storages(mut self) -> Result<(Value, Vec<StorageRef>)> {
        let v = self.run()?;
        Ok((v, self.storages))
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        self.src.take(n)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.src.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.src.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.src.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.src.array()?))
    }
    fn len64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| anyhow!("length {n} too large"))
    }
    fn line(&mut self) -> Result<String> {
        self.src.line()
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = String::from_utf8(b).map_err(|_| anyhow!("invalid UTF-8 string"))?;
        Ok(Value::Str(s))
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| anyhow!("stack underflow at byte {}", self.src.pos))
    }
    fn top(&mut self) -> Result<&mut Value> {
        let pos = self.src.pos;
        self.stack.last_mut().ok_or_else(|| anyhow!("stack underflow at byte {pos}"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("missing MARK at byte {}", self.src.pos))?;
        if m > self.stack.len() {
            bail!("corrupt MARK at byte {}", self.src.pos);
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo.get(&i).cloned().ok_or_else(|| anyhow!("memo entry {i} missing at byte {}", self.src.pos))
    }
    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = self.stack.last().cloned().ok_or_else(|| anyhow!("stack underflow at byte {}", self.src.pos))?;
        self.memo.insert(i, v);
        Ok(())
    }

    // One match over the opcodes, each arm a few lines: a dispatch table reads best whole,
    // which is why this function is long.
    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.src.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        bail!("unsupported pickle protocol {proto}");
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = self.u32()? as i32;
                        usize::try_from(n).map_err(|_| anyhow!("negative LONG4 length"))?
                    };
                    let b = self.take(n)?;
                    self.stack.push(long_value(&b));
                }
                b'I' => {
                    let v = match self.line()?.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.trim().parse().map_err(|_| anyhow!("bad INT {s:?}"))?),
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let s = self.line()?;
                    let s = s.trim_end_matches('L');
                    let v = match s.parse::<i64>() {
                        Ok(i) => Value::Int(i),
                        Err(_) => Value::BigInt(s.parse::<i128>().ok()),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.src.array()?);
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s.trim().parse().map_err(|_| anyhow!("bad FLOAT {s:?}"))?;
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.len64()?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                // Python 2 str: bytes, decoded as text where possible.
                b'T' | b'U' => {
                    let n = if op == b'T' { self.u32()? as usize } else { self.u8()? as usize };
                    let b = self.take(n)?;
                    self.stack.push(Value::Str(String::from_utf8_lossy(&b).into_owned()));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len64()?,
                    };
                    self.src.skip(n as u64)?;
                    self.stack.push(Value::Bytes);
                }
                b'}' => self.stack.push(Value::Dict(Dict::default())),
                b']' | 0x8f => self.stack.push(Value::List(List::default())),
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = Dict::default();
                    dict_set_items(&d, items)?;
                    self.stack.push(Value::Dict(d));
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("stack underflow at byte {at}");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    match self.top()? {
                        Value::Dict(d) => dict_set_items(d, items)?,
                        // Items set on an object this reader does not model.
                        Value::Opaque(_) => {}
                        other => bail!("SETITEMS on {} at byte {at}", other.describe()),
                    }
                }
                b'a' | b'e' | 0x90 => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        Value::Opaque(_) => {}
                        other => bail!("APPENDS on {} at byte {at}", other.describe()),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(Rc::new((m, n)))),
                        _ => bail!("STACK_GLOBAL without module and name strings at byte {at}"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let Value::Tuple(args) = args else {
                        bail!("REDUCE arguments are {} at byte {at}", args.describe());
                    };
                    let v = self.reduce(&func, &args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(opaque(&cls));
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(opaque(&cls));
                }
                // BUILD sets instance state (`OrderedDict._metadata`, parameters' attributes):
                // nothing a state dict's tensors depend on.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.stack.push(v);
                }
                b'P' => bail!("text persistent ids (PERSID) are not used by torch.save"),
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| anyhow!("memo overflow"))?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let s = self.line()?;
                    let i = s.parse().map_err(|_| anyhow!("bad PUT index {s:?}"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'g' => {
                    let s = self.line()?;
                    let i = s.parse().map_err(|_| anyhow!("bad GET index {s:?}"))?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                _ => bail!("unsupported pickle opcode 0x{op:02x} at byte {at}"),
            }
        }
    }

    /// torch's persistent ids: `('storage', torch.XStorage, key, location, numel)` in zip
    /// archives; legacy files add `view_metadata`, None or `(view_key, offset, numel)`.
    fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let Value::Tuple(t) = pid else {
            bail!("persistent id is {}, not a tuple", pid.describe());
        };
        let (head, rest) = match t.as_slice() {
            [Value::Str(tag), rest @ ..] => (tag.as_str(), rest),
            _ => bail!("unrecognised persistent id {pid:?}"),
        };
        let (ty, key, numel, view) = match (head, rest) {
            ("storage", [Value::Global(ty), Value::Str(key), _location, Value::Int(numel)]) => (ty, key, *numel, None),
            ("storage", [Value::Global(ty), Value::Str(key), _location, Value::Int(numel), view]) => {
                (ty, key, *numel, Some(view))
            }
            // A legacy full-model save names each module's class; the model stays opaque.
            ("module", _) => return Ok(Value::Opaque(Rc::new("torch.nn.Module".into()))),
            _ => bail!("unrecognised persistent id {pid:?}"),
        };
        if numel < 0 {
            bail!("storage {key:?} has a negative size {numel}");
        }
        let index = match self.storage_ids.get(key) {
            Some(&i) => {
                let r = &self.storages[i];
                if r.numel != numel || r.type_name != ty.1 {
                    bail!("storage {key:?} is named as {} × {} and as {numel} × {}", r.numel, r.type_name, ty.1);
                }
                i
            }
            None => {
                let i = self.storages.len();
                self.storages.push(StorageRef {
                    type_name: ty.1.clone(),
                    kind: (ty.0 == "torch").then(|| storage_kind(&ty.1)).flatten(),
                    key: key.clone(),
                    numel,
                });
                self.storage_ids.insert(key.clone(), i);
                i
            }
        };
        let (offset, len) = match view {
            None | Some(Value::None) => (0, numel),
            Some(Value::Tuple(v)) => {
                match v.as_slice() {
                    [Value::Str(_), Value::Int(o), Value::Int(n)] => {
                        if *o < 0 || *n < 0 || o.checked_add(*n).is_none_or(|end| end > numel) {
                            bail!("storage {key:?}: a view of {n} elements at offset {o} does not fit its {numel} elements");
                        }
                        (*o, *n)
                    }
                    _ => bail!("storage {key:?}: view metadata is not (key, offset, size)"),
                }
            }
            Some(v) => bail!("storage {key:?}: view metadata is {}", v.describe()),
        };
        Ok(Value::Storage(StorageView { index, offset, numel: len }))
    }

    fn reduce(&mut self, func: &Value, args: &[Value]) -> Result<Value> {
        let Value::Global(g) = func else {
            // e.g. a method of an opaque object: nothing to model.
            return Ok(opaque(func));
        };
        let (module, name) = (g.0.as_str(), g.1.as_str());
        Ok(match (module, name) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                let d = Dict::default();
                // Items as (k, v) tuples, or as [k, v] lists (Python 2's OrderedDict.__reduce__).
                if let Some(Value::List(items)) = args.first() {
                    for pair in items.borrow().iter() {
                        match pair {
                            Value::Tuple(p) => {
                                if let [k, v] = p.as_slice() {
                                    dict_set(&d, k.clone(), v.clone());
                                }
                            }
                            Value::List(p) => {
                                if let [k, v] = p.borrow().as_slice() {
                                    dict_set(&d, k.clone(), v.clone());
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Value::Dict(d)
            }
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let [Value::Storage(storage), offset, size, stride, ..] = args else {
                    bail!("{module}.{name} called with unexpected arguments {args:?}");
                };
                Value::Tensor(Rc::new(TensorSpec {
                    storage: *storage,
                    offset: int_of(offset).ok_or_else(|| anyhow!("bad storage offset {offset:?}"))?,
                    size: ints(size).ok_or_else(|| anyhow!("bad tensor size {size:?}"))?,
                    stride: ints(stride).ok_or_else(|| anyhow!("bad tensor stride {stride:?}"))?,
                }))
            }
            ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
                match args.first() {
                    Some(t @ Value::Tensor(_)) => t.clone(),
                    _ => bail!("{module}.{name} called without a tensor"),
                }
            }
            // (func, new_type, args, state): a tensor (subclass) rebuilt by func(*args).
            ("torch._tensor", "_rebuild_from_type_v2") => match args {
                [f, _, Value::Tuple(inner), ..] => self.reduce(f, inner)?,
                _ => bail!("{module}.{name} called with unexpected arguments"),
            },
            _ => Value::Opaque(Rc::new(format!("{module}.{name}"))),
        })
    }
}

fn opaque(cls: &Value) -> Value {
    match cls {
        Value::Global(g) => Value::Opaque(Rc::new(format!("{}.{}", g.0, g.1))),
        other => Value::Opaque(Rc::new(other.describe())),
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

fn ints(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Tuple(t) => t.iter().map(int_of).collect(),
        Value::List(l) => l.borrow().iter().map(int_of).collect(),
        _ => None,
    }
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn long_value(b: &[u8]) -> Value {
    let Some(&last) = b.last() else {
        return Value::Int(0);
    };
    let sign = if last & 0x80 != 0 { 0xff } else { 0 };
    // Beyond 16 bytes it still fits if the extra bytes are pure sign extension.
    if b.len() > 16 && (b[16..].iter().any(|&x| x != sign) || (b[15] & 0x80 != 0) != (sign == 0xff)) {
        return Value::BigInt(None);
    }
    let n = b.len().min(16);
    let mut a = [sign; 16];
    a[..n].copy_from_slice(&b[..n]);
    let v = i128::from_le_bytes(a);
    match i64::try_from(v) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::BigInt(Some(v)),
    }
}

fn dict_set(d: &Dict, k: Value, v: Value) {
    let mut d = d.borrow_mut();
    let existing = match &k {
        Value::Str(s) => d.iter().position(|(x, _)| matches!(x, Value::Str(y) if y == s)),
        Value::Int(i) => d.iter().position(|(x, _)| matches!(x, Value::Int(y) if y == i)),
        _ => None,
    };
    match existing {
        Some(i) => d[i].1 = v,
        None => d.push((k, v)),
    }
}

fn dict_set_items(d: &Dict, items: Vec<Value>) -> Result<()> {
    if !items.len().is_multiple_of(2) {
        bail!("odd number of dict items");
    }
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        dict_set(d, k, v);
    }
    Ok(())
}

/// `[a, b, c … and N more]`.
pub(super) fn list(items: &[String], max: usize) -> String {
    let mut s = String::from("[");
    for (i, it) in items.iter().take(max).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(it);
    }
    if items.len() > max {
        let _ = write!(s, " … and {} more", items.len() - max);
    }
    s.push(']');
    s
}
