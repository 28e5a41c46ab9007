//! Downloads that are verified before they are trusted: streamed to a temp name beside
//! the destination, hashed on the way, and renamed into place only when complete and
//! matching. Used for datasets (md5) and torchvision checkpoints (sha256 prefix).
use crate::util::progress;
use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// What a download must hash to.
#[derive(Clone, Debug)]
pub enum Checksum {
    Md5(String),
    /// torchvision's convention: the first hex digits of the sha256 are in the file name.
    Sha256Prefix(String),
}

/// Streams `url` (http://, https:// or file://) to `dest` and verifies `sum`.
pub fn download(url: &str, dest: &Path, sum: &Checksum) -> Result<()> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", dest.file_name().unwrap_or_default().to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    let (mut reader, total) = open(url)?;
    let bar = progress::bytes(total, "download");
    let (mut md5, mut sha) = (Md5::new(), Sha256::new());
    let mut buf = vec![0u8; 1 << 16];
    loop {
        crate::util::interrupt::check()?;
        let n = reader.read(&mut buf).with_context(|| format!("download of {url} broke off"))?;
        if n == 0 {
            break;
        }
        match sum {
            Checksum::Md5(_) => md5.update(&buf[..n]),
            Checksum::Sha256Prefix(_) => sha.update(&buf[..n]),
        }
        tmp.write_all(&buf[..n]).with_context(|| format!("cannot write {}", tmp.path().display()))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let ok = match sum {
        Checksum::Md5(want) => {
            let got = format!("{:x}", md5.finalize());
            (got == *want).then_some(()).ok_or(got)
        }
        Checksum::Sha256Prefix(want) => {
            let got = format!("{:x}", sha.finalize());
            got.starts_with(want.as_str()).then_some(()).ok_or(got)
        }
    };
    if let Err(got) = ok {
        match sum {
            Checksum::Md5(want) => bail!("download of {url} has md5 {got}, expected {want}"),
            Checksum::Sha256Prefix(want) => bail!("download of {url} has sha256 {got}, expected one starting {want}"),
        }
    }
    tmp.as_file().sync_all()?;
    crate::util::files::make_public(tmp.path())?;
    tmp.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move the download to {}", dest.display()))?;
    Ok(())
}

fn open(url: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    if let Some(path) = url.strip_prefix("file://") {
        let f = File::open(path).with_context(|| format!("cannot open {url}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        return Ok((Box::new(f), len));
    }
    let resp = ureq::get(url).call().with_context(|| format!("cannot download {url}"))?;
    let len = resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Ok((Box::new(resp.into_body().into_reader()), len))
}

/// md5 of a file on disk, lower-case hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Md5::new();
    io::copy(&mut f, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}
