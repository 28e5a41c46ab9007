//! The .npy format (numpy's `format.py` spec, versions 1–3): a streaming writer, and a
//! reader that parses the header as the Python literal it is and checks every size
//! against the file before reading data.
use crate::util::files::write_atomic;
use crate::util::interrupt;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::Path;
use tch::{Kind, Tensor};

/// A float32 or int64 matrix/vector as .npy, streamed a block of rows at a time (tch's own
/// writer copies the whole tensor into one buffer first: 400 MB for 50k×2048 features).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let descr = match t.kind() {
        Kind::Float => "<f4",
        Kind::Int64 => "<i8",
        k => bail!("cannot write {k:?} tensors as .npy"),
    };
    let shape = t.size();
    let preamble = preamble(descr, &shape);
    write_atomic(path, |w| {
        w.write_all(&preamble)?;
        let n = shape[0];
        let t = t.contiguous();
        let mut start = 0;
        while start < n {
            interrupt::check()?;
            let len = 4096.min(n - start);
            let block = t.narrow(0, start, len).contiguous().view([-1]);
            match t.kind() {
                Kind::Float => Vec::<f32>::try_from(&block)?.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))?,
                _ => Vec::<i64>::try_from(&block)?.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))?,
            }
            start += len;
        }
        Ok(())
    })
}

/// Magic, version 1.0, header length and the header dict of an array of `shape`, padded
/// (as numpy pads it) so the data starts at a multiple of 64 bytes.
pub fn preamble(descr: &str, shape: &[i64]) -> Vec<u8> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out
}

/// The header dict: `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
#[derive(Debug, PartialEq)]
pub struct Header {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<i64>,
}

/// A Python literal value of the header dict.
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    Tuple(Vec<i64>),
}

/// Parses the header dict; any other syntax, key or value type is an error.
pub fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Cursor { s: text.trim_end().as_bytes(), i: 0 };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        let value = p.value()?;
        match (key.as_str(), value) {
            ("descr", Lit::Str(v)) => descr = Some(v),
            ("fortran_order", Lit::Bool(v)) => fortran = Some(v),
            ("shape", Lit::Tuple(v)) => shape = Some(v),
            (k, v) => return Err(format!("unexpected entry '{k}': {v:?}")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("text after the header dict".into());
    }
    match (descr, fortran, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header { descr, fortran_order, shape }),
        _ => Err("the header needs descr, fortran_order and shape".into()),
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        let hit = self.s.get(self.i) == Some(&c);
        self.i += hit as usize;
        hit
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let q = *self.s.get(self.i).ok_or("unexpected end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a quoted string at byte {}", self.i));
        }
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|&c| c == q).ok_or("unterminated string")?;
        self.i = start + len + 1;
        String::from_utf8(self.s[start..start + len].to_vec()).map_err(|_| "a string is not text".into())
    }

    fn value(&mut self) -> Result<Lit, String> {
        self.skip_ws();
        let rest = &self.s[self.i..];
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if rest.starts_with(word) {
                self.i += word.len();
                return Ok(Lit::Bool(v));
            }
        }
        if !self.eat(b'(') {
            return self.string().map(Lit::Str);
        }
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(Lit::Tuple(dims));
            }
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let text = std::str::from_utf8(&self.s[start..self.i]).expect("ascii digits");
            dims.push(text.parse::<i64>().map_err(|_| format!("bad dimension at byte {start}"))?);
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(Lit::Tuple(dims));
            }
        }
    }
}

/// Reads a C-ordered little-endian float32 or int64 array. The header's shape must match
/// the file's length, so a truncated file is an error, never an out-of-bounds read.
pub fn read_npy(path: &Path, want: Kind) -> Result<Tensor> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{}: not a valid .npy file ({why})", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NUMPY magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        _ => return Err(bad("unknown version")),
    };
    let header = bytes.get(start..start + hlen).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let h = parse_header(header).map_err(|e| bad(&e))?;
    let (descr, size) = match want {
        Kind::Float => ("<f4", 4),
        _ => ("<i8", 8),
    };
    if h.descr != descr {
        bail!("{}: expected dtype '{descr}', the file has '{}'", path.display(), h.descr);
    }
    if h.fortran_order {
        bail!("{}: Fortran-ordered arrays are not supported", path.display());
    }
    let data = &bytes[start + hlen..];
    let need = h
        .shape
        .iter()
        .try_fold(size as usize, |acc: usize, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
    match need {
        Some(n) if n == data.len() => {}
        Some(n) => {
            bail!("{}: has {} data bytes, its shape {:?} needs {n} (truncated?)", path.display(), data.len(), h.shape)
        }
        None => bail!("{}: shape {:?} is too large", path.display(), h.shape),
    }
    Tensor::f_from_data_size(data, &h.shape, want).with_context(|| format!("{}: unreadable data", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_as_numpy_writes_them() {
        let h = parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }   \n").unwrap();
        assert_eq!(h, Header { descr: "<f4".into(), fortran_order: false, shape: vec![3, 4] });
        let h = parse_header("{'shape': (7,), 'fortran_order': True, 'descr': '<i8'}").unwrap();
        assert_eq!((h.shape, h.fortran_order, h.descr.as_str()), (vec![7], true, "<i8"));
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (), }").unwrap().shape,
            Vec::<i64>::new()
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        // A dtype that merely contains the wanted one, as a substring check would accept.
        let h = parse_header("{'descr': '<f4<i8', 'fortran_order': False, 'shape': (2,), }").unwrap();
        assert_ne!(h.descr, "<i8");
        for bad in [
            "",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }",
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} trailing",
            "{'descr: '<f4'}",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?} accepted");
        }
    }
}
