//! Content digests (sha256, lower-case hex): of files, of tensors, and of whole folders of
//! files with a memo, so every number can be traced to exactly the bytes behind it.
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file's bytes.
pub fn file_sha256(path: &Path) -> Result<String> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    read_sha256(f).with_context(|| format!("cannot read {}", path.display()))
}

/// The sha256 of everything `r` yields (a file wrapped in a progress bar, say).
pub fn read_sha256(mut r: impl io::Read) -> io::Result<String> {
    let mut h = Sha256::new();
    io::copy(&mut r, &mut h)?;
    Ok(hex(&h.finalize()))
}

/// Feeds a CPU tensor's values (little-endian, row-major) to `h`, a block of rows at a time,
/// so hashing a large matrix needs no second copy of it.
pub fn update_with_tensor(h: &mut Sha256, t: &Tensor) {
    let t = t.to_device(tch::Device::Cpu);
    h.update(format!("{:?}{:?};", t.kind(), t.size()).as_bytes());
    let rows = t.size().first().copied().unwrap_or(1).max(1);
    let row_elems = (t.numel() as i64 / rows).max(1);
    let elt = t.kind().elt_size_in_bytes();
    let block = (1 << 22) / (row_elems as usize * elt).max(1);
    let flat = if t.dim() == 0 { t.reshape([1, 1]) } else { t.reshape([rows, -1]) };
    let mut buf = Vec::new();
    let mut start = 0;
    while start < rows {
        let len = (block.max(1) as i64).min(rows - start);
        let part = flat.narrow(0, start, len).contiguous();
        buf.resize(part.numel() * elt, 0);
        part.copy_data_u8(&mut buf, part.numel());
        h.update(&buf);
        start += len;
    }
}

/// One digest for a folder's data files: each file's sha256 under its path relative to
/// `root`, in sorted order. File digests are memoised in `memo` (one line per file, keyed
/// by inode, size, mtime and ctime: replacing a file's content changes its ctime even when
/// its size and mtime are made to match), so unchanged files are not read again.
pub fn folder_digest(root: &Path, files: &[PathBuf], memo: Option<&Path>) -> Result<String> {
    let mut known: HashMap<String, (String, String)> = HashMap::new();
    if let Some(m) = memo {
        for line in std::fs::read_to_string(m).unwrap_or_default().lines() {
            if let Some((rel, rest)) = line.split_once('\t') {
                if let Some((stamp, sha)) = rest.rsplit_once('\t') {
                    known.insert(rel.to_string(), (stamp.to_string(), sha.to_string()));
                }
            }
        }
    }
    let mut sorted: Vec<&PathBuf> = files.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    let mut lines = String::new();
    let mut fresh = 0usize;
    for f in sorted {
        let rel = f.strip_prefix(root).unwrap_or(f).to_string_lossy().into_owned();
        let m = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        let stamp = format!(
            "{}\t{}\t{}\t{}",
            m.ino(),
            m.len(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ctime_nsec() + m.ctime() * 1_000_000_000
        );
        let sha = match known.get(&rel) {
            Some((s, sha)) if *s == stamp => sha.clone(),
            _ => {
                fresh += 1;
                file_sha256(f)?
            }
        };
        h.update(format!("{rel}\t{sha}\n").as_bytes());
        lines.push_str(&format!("{rel}\t{stamp}\t{sha}\n"));
    }
    if let (Some(m), true) = (memo, fresh > 0) {
        // Best effort: a memo that cannot be written only costs a re-read next time.
        let _ = m.parent().map(std::fs::create_dir_all);
        let _ = crate::util::files::write_atomic(m, |w| Ok(w.write_all(lines.as_bytes())?));
    }
    Ok(hex(&h.finalize()))
}
