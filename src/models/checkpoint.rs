//! Reading state dicts from files: torch.save zip `.pth`/`.pt` archives and `.safetensors`.
//!
//! libtorch's own loaders (`Tensor::loadz_multi`, `VarStore::load`) reject what
//! `torch.save(model.state_dict(), ...)` writes: an `OrderedDict` carrying `_metadata`
//! ("isGenericDict() INTERNAL ASSERT FAILED"). So the zip archive is read here and its
//! `data.pkl` is run through a small pickle interpreter.
//!
//! Why not the `serde-pickle` crate: it has no persistent ids (`BINPERSID`, which is how
//! torch refers to every storage) and it cannot keep unresolved globals such as
//! `torch._utils._rebuild_tensor_v2` or `torch.FloatStorage` (it replaces them with `None`),
//! so the tensors could not be rebuilt from its value tree. The interpreter below covers the
//! opcodes of pickle protocols 2–5 that plain data and torch.save emit; it never imports or
//! calls anything: the few globals torch uses are recognised by name, every other reduction
//! becomes an opaque value that is skipped.
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;
use std::{cell::RefCell, fmt::Write as _};
use tch::{Kind, Tensor};

/// Reads a state dict: named CPU tensors in file order.
///
/// `.safetensors` files go through libtorch's reader; anything else must be a torch.save zip
/// archive (`.pth`, `.pt`, `.bin`, ...). A top-level dict without tensors that wraps one
/// dict of tensors (`{"state_dict": {...}}`, `{"model": {...}}`) yields the inner dict.
/// Entries that are not tensors (ints, strings, nested dicts) are skipped.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let name = path.display();
    let mut file = File::open(path).with_context(|| format!("{name}: cannot open"))?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut file, &mut head).with_context(|| format!("{name}: cannot read"))?;
    let head = &head[..n];
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    let looks_safetensors = n >= 9 && head[8] == b'{';
    if ext.as_deref() == Some("safetensors") || (!head.starts_with(b"PK") && looks_safetensors) {
        return read_safetensors(path);
    }
    if n == 0 {
        bail!("{name}: empty file (expected a torch.save zip archive or a safetensors file)");
    }
    if head.first() == Some(&0x80) {
        bail!(
            "{name}: not a torch.save zip archive (legacy pickle format is not supported; \
             re-save with torch.save(..., _use_new_zipfile_serialization=True))"
        );
    }
    if !head.starts_with(b"PK") {
        bail!("{name}: not a torch.save zip archive nor a safetensors file");
    }
    file.rewind().with_context(|| format!("{name}: cannot read"))?;
    // The zip crate is meant to return errors on malformed archives; a panic deep inside it
    // on hostile input must still not take the caller down.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_torch_zip(file))) {
        Ok(r) => r.map_err(|e| anyhow!("{name}: {e:#}")),
        Err(_) => bail!("{name}: corrupt zip archive"),
    }
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
    let mut unpickler = Unpickler::new(&pickle);
    let root = unpickler.run().with_context(|| format!("{pkl_name} is not a readable pickle"))?;
    let entries = select_state_dict(&root)?;
    let mut storages = StorageCache { zip: &mut zip, prefix: prefix.to_owned(), big_endian, loaded: HashMap::new() };
    let mut out = Vec::with_capacity(entries.len());
    for (key, spec) in entries {
        let t = storages.build(&unpickler.storages, &spec).with_context(|| format!("tensor {key:?}"))?;
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

/// `('storage', torch.XStorage, key, location, numel)` from a persistent id.
#[derive(Clone, Debug)]
struct StorageRef {
    type_name: String,
    kind: Option<Kind>,
    key: String,
    numel: i64,
}

/// A `_rebuild_tensor_v2` call, kept lazy so that skipped entries cost nothing.
#[derive(Clone, Debug)]
struct TensorSpec {
    storage: usize,
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

struct StorageCache<'a, R: Read + Seek> {
    zip: &'a mut zip::ZipArchive<R>,
    prefix: String,
    big_endian: bool,
    loaded: HashMap<usize, Tensor>,
}

impl<R: Read + Seek> StorageCache<'_, R> {
    fn storage(&mut self, refs: &[StorageRef], idx: usize) -> Result<Tensor> {
        if let Some(t) = self.loaded.get(&idx) {
            return Ok(t.shallow_clone());
        }
        let r = refs.get(idx).ok_or_else(|| anyhow!("internal: unknown storage"))?;
        let kind = r.kind.ok_or_else(|| anyhow!("unsupported storage type torch.{}", r.type_name))?;
        let elt = kind.elt_size_in_bytes();
        let name = format!("data/{}", r.key);
        let needed = usize::try_from(r.numel)
            .ok()
            .and_then(|n| n.checked_mul(elt))
            .ok_or_else(|| anyhow!("storage {name} has an invalid size of {} elements", r.numel))?;
        let full = format!("{}{name}", self.prefix);
        let entry = match self.zip.by_name(&full) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => {
                bail!("storage {name} is missing from the archive")
            }
            Err(e) => bail!("cannot open storage {name} ({e})"),
        };
        // One byte past what is needed so that the reader reaches the entry's end (where the
        // zip crate checks the CRC); a storage larger than its tensors need is fine.
        let mut bytes = Vec::new();
        entry
            .take((needed as u64).saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| anyhow!("cannot read storage {name} ({e})"))?;
        bytes.truncate(needed);
        if bytes.len() < needed {
            bail!("storage {name} has {} bytes, needs {needed} ({} × {kind:?})", bytes.len(), r.numel);
        }
        if self.big_endian && elt > 1 {
            bytes.chunks_exact_mut(elt).for_each(|c| c.reverse());
        }
        if kind == Kind::Bool {
            // libtorch assumes bools are 0 or 1.
            bytes.iter_mut().for_each(|b| *b = (*b != 0) as u8);
        }
        let t = Tensor::f_from_data_size(&bytes, &[r.numel], kind).map_err(|e| anyhow!("storage {name}: {e}"))?;
        self.loaded.insert(idx, t.shallow_clone());
        Ok(t)
    }

    fn build(&mut self, refs: &[StorageRef], spec: &TensorSpec) -> Result<Tensor> {
        let storage = self.storage(refs, spec.storage)?;
        let numel = refs.get(spec.storage).map_or(0, |r| r.numel);
        if spec.size.len() != spec.stride.len() {
            bail!("size {:?} and stride {:?} differ in length", spec.size, spec.stride);
        }
        if spec.offset < 0 || spec.size.iter().chain(&spec.stride).any(|&v| v < 0) {
            bail!("invalid view: offset {}, size {:?}, stride {:?}", spec.offset, spec.size, spec.stride);
        }
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
            storage.f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), spec.offset)?.f_contiguous()?
        };
        Ok(t)
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
    /// An integer beyond i64 (LONG1/LONG4): only its presence matters here.
    BigInt,
    Float(f64),
    Str(String),
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(List),
    Dict(Dict),
    /// `module.name`, as pushed by GLOBAL / STACK_GLOBAL.
    Global(Rc<(String, String)>),
    Storage(usize),
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
            Value::BigInt => "a big int".into(),
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

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: Vec<StorageRef>,
    storage_ids: HashMap<String, usize>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
            storage_ids: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| anyhow!("truncated pickle at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| anyhow!("length {n} too large"))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n =
            rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("truncated pickle at byte {}", self.pos))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| anyhow!("invalid text at byte {}", self.pos))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| anyhow!("invalid UTF-8 string"))?;
        Ok(Value::Str(s.to_owned()))
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| anyhow!("stack underflow at byte {}", self.pos))
    }
    fn top(&mut self) -> Result<&mut Value> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| anyhow!("stack underflow at byte {pos}"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("missing MARK at byte {}", self.pos))?;
        if m > self.stack.len() {
            bail!("corrupt MARK at byte {}", self.pos);
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo.get(&i).cloned().ok_or_else(|| anyhow!("memo entry {i} missing at byte {}", self.pos))
    }
    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = self.stack.last().cloned().ok_or_else(|| anyhow!("stack underflow at byte {}", self.pos))?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
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
                    self.stack.push(long_value(b));
                }
                b'I' => {
                    let v = match self.line()? {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.trim().parse().map_err(|_| anyhow!("bad INT {s:?}"))?),
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let s = self.line()?.trim_end_matches('L');
                    self.stack.push(s.parse().map(Value::Int).unwrap_or(Value::BigInt));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
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
                    self.stack.push(Value::Str(String::from_utf8_lossy(b).into_owned()));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len64()?,
                    };
                    self.take(n)?;
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
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
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

    fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let Value::Tuple(t) = pid else {
            bail!("persistent id is {}, not a tuple", pid.describe());
        };
        match t.as_slice() {
            [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, Value::Int(numel)] if tag == "storage" => {
                if let Some(&i) = self.storage_ids.get(key) {
                    return Ok(Value::Storage(i));
                }
                let i = self.storages.len();
                self.storages.push(StorageRef {
                    type_name: ty.1.clone(),
                    kind: (ty.0 == "torch").then(|| storage_kind(&ty.1)).flatten(),
                    key: key.clone(),
                    numel: *numel,
                });
                self.storage_ids.insert(key.clone(), i);
                Ok(Value::Storage(i))
            }
            _ => bail!("unrecognised persistent id {pid:?}"),
        }
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
                if let Some(Value::List(items)) = args.first() {
                    for pair in items.borrow().iter() {
                        if let Value::Tuple(p) = pair {
                            if let [k, v] = p.as_slice() {
                                dict_set(&d, k.clone(), v.clone());
                            }
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
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() > 8 {
        let sign = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        // Still fits if the extra bytes are pure sign extension.
        if b[8..].iter().any(|&x| x != sign) || (b[7] & 0x80 != 0) != (sign == 0xff) {
            return Value::BigInt;
        }
    }
    let n = b.len().min(8);
    let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut a = [fill; 8];
    a[..n].copy_from_slice(&b[..n]);
    Value::Int(i64::from_le_bytes(a))
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
