//! Output files that are either complete or absent, and appends that are safe when
//! several runs finish at once.
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `$XDG_CACHE_HOME`, else `~/.cache`: the parent of cnnprobe's caches (data, features).
pub fn cache_home() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Temp files are created private (0600); a finished output gets the usual 0644 (0755 for
/// a directory) before it is renamed into place.
pub fn make_public(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions of {}", path.display()))
}

/// Writes `path` through a temp file in the same directory, renamed into place only after
/// `write` succeeded and the data is flushed. On any error the temp file is removed.
///
/// Where the filesystem allows it the file has no name while it is written (Linux's
/// O_TMPFILE): a run killed with SIGKILL, which no handler sees, then leaves nothing behind.
/// It is linked under a temp name only for the moment before the rename.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
{
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let Some(mut file) = unnamed_file_in(&dir) else { return write_atomic_named(path, &dir, write) };
    fill(&mut file, path, write)?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    let tmp = link_unnamed(&file, &dir, path)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::Error::from(e).context(format!("cannot move the finished file into place at {}", path.display()))
    })
}

/// `write`, then flush and fsync.
fn fill<F>(file: &mut File, path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
{
    {
        let mut w = BufWriter::new(&mut *file);
        write(&mut w).with_context(|| format!("writing {}", path.display()))?;
        w.flush().with_context(|| format!("writing {}", path.display()))?;
    }
    file.sync_all().with_context(|| format!("writing {}", path.display()))
}

/// An unnamed file in `dir`, or None where O_TMPFILE is unsupported (the named path runs).
fn unnamed_file_in(dir: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir).ok()
}

/// Gives an O_TMPFILE file a temp name in `dir` (linkat through /proc/self/fd, which needs
/// no privilege), retrying past a name a killed process left.
fn link_unnamed(file: &File, dir: &Path, path: &Path) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let proc_fd = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.{}.{n}.tmp", file_name(path), std::process::id()));
        let c_tmp = std::ffi::CString::new(tmp.as_os_str().as_bytes())?;
        // SAFETY: both paths are NUL-terminated C strings that outlive the call.
        let rc = unsafe {
            libc::linkat(libc::AT_FDCWD, proc_fd.as_ptr(), libc::AT_FDCWD, c_tmp.as_ptr(), libc::AT_SYMLINK_FOLLOW)
        };
        if rc == 0 {
            return Ok(tmp);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(anyhow::Error::from(e).context(format!("cannot name the finished file {}", path.display())));
        }
    }
    anyhow::bail!("cannot name the finished file {}: every temp name is taken", path.display())
}

/// write_atomic through a named temp file (removed on error, not on SIGKILL).
fn write_atomic_named<F>(path: &Path, dir: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
{
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name(path)))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    fill(tmp.as_file_mut(), path, write)?;
    make_public(tmp.path())?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move the finished file into place at {}", path.display()))?;
    Ok(())
}

/// Any serialisable value as pretty JSON (config.json, features.json), written atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    write_atomic(path, |w| Ok(writeln!(w, "{json}")?))
}

/// Appends CSV `rows` under `header` to `path`, holding an exclusive lock on a sibling
/// `.lock` file so concurrent runs never interleave. Creates the file with its header.
/// When the existing header differs (an older cnnprobe wrote it), the file is rewritten
/// atomically with the union of both column sets, old columns first, blanks where unknown.
pub fn append_csv_rows(path: &Path, header: &[String], rows: &[Vec<String>]) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let lock_path = dir.join(format!(".{}.lock", file_name(path)));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;

    if path.exists() {
        repair_last_line(path)?;
    }
    let existing = read_header(path)?;
    match existing {
        Some(old) if old != header => merge_columns(path, &old, header, rows),
        Some(_) => {
            let mut f = OpenOptions::new()
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {} for appending", path.display()))?;
            f.write_all(&csv_bytes(None, rows)?)
                .and_then(|_| f.sync_data())
                .with_context(|| format!("cannot append to {}", path.display()))
        }
        None => {
            let bytes = csv_bytes(Some(header), rows)?;
            write_atomic(path, |w| Ok(w.write_all(&bytes)?))
        }
    }
}

/// A process killed in the middle of an append can leave a partial last line; cut it off
/// (we hold the lock, so no writer is mid-line now).
fn repair_last_line(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    eprintln!("warning: {} ended in a partial row; removing it", path.display());
    let f = OpenOptions::new().write(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    f.set_len(keep as u64).with_context(|| format!("cannot repair {}", path.display()))?;
    Ok(())
}

fn merge_columns(path: &Path, old: &[String], new: &[String], rows: &[Vec<String>]) -> Result<()> {
    let mut columns: Vec<String> = old.to_vec();
    columns.extend(new.iter().filter(|c| !old.contains(c)).cloned());
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {} is not valid CSV", path.display(), i + 2))?;
        let mut row: Vec<String> = rec.iter().map(str::to_string).collect();
        row.resize(columns.len(), String::new());
        out.push(row);
    }
    for r in rows {
        out.push(
            columns.iter().map(|c| new.iter().position(|n| n == c).map(|j| r[j].clone()).unwrap_or_default()).collect(),
        );
    }
    let bytes = csv_bytes(Some(&columns), &out)?;
    write_atomic(path, |w| Ok(w.write_all(&bytes)?))
}

fn read_header(path: &Path) -> Result<Option<Vec<String>>> {
    match fs::metadata(path) {
        Ok(m) if m.len() > 0 => {}
        _ => return Ok(None),
    }
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let h = rdr.headers().with_context(|| format!("{}: unreadable CSV header", path.display()))?;
    Ok(Some(h.iter().map(str::to_string).collect()))
}

fn csv_bytes(header: Option<&[String]>, rows: &[Vec<String>]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if let Some(h) = header {
        w.write_record(h)?;
    }
    for r in rows {
        w.write_record(r)?;
    }
    Ok(w.into_inner().map_err(|e| e.into_error())?)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_creates_then_appends_then_merges_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        append_csv_rows(&p, &h(&["a", "b"]), &[h(&["1", "2"])]).unwrap();
        append_csv_rows(&p, &h(&["a", "b"]), &[h(&["3", "4"])]).unwrap();
        append_csv_rows(&p, &h(&["a", "c"]), &[h(&["5", "6"])]).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text, "a,b,c\n1,2,\n3,4,\n5,,6\n");
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        let header: Vec<String> = ["run", "i", "payload"].map(String::from).to_vec();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (p, header) = (&p, &header);
                s.spawn(move || {
                    for i in 0..25 {
                        let row = vec![t.to_string(), i.to_string(), "x".repeat(5000)];
                        append_csv_rows(p, header, &[row]).unwrap();
                    }
                });
            }
        });
        let mut rdr = csv::Reader::from_path(&p).unwrap();
        assert_eq!(rdr.headers().unwrap(), vec!["run", "i", "payload"]);
        let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 200);
        assert!(rows.iter().all(|r| r.len() == 3 && r[2].len() == 5000));
    }

    #[test]
    fn finished_files_are_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        write_atomic(&p, |w| Ok(w.write_all(b"a\n")?)).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn a_file_being_written_has_no_name_a_kill_could_leave() {
        // O_TMPFILE (tmpfs, ext4, xfs, btrfs): nothing in the directory until the rename.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        write_atomic(&p, |w| {
            w.write_all(b"{}")?;
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "a named temp file exists mid-write");
            Ok(())
        })
        .unwrap();
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["config.json"]);
        assert_eq!(fs::read(&p).unwrap(), b"{}");
    }

    #[test]
    fn failed_atomic_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        let r = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            anyhow::bail!("boom")
        });
        assert!(r.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
