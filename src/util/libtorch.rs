//! Which libtorch: the version an install declares, and the install this process loaded.
//! build.rs includes this file too (no crate imports here), so the build-time and the
//! run-time version are read the same way.
use std::path::{Path, PathBuf};

/// The version of the torch install whose `lib/` is `lib_dir`: `torch/version.py` in a pip
/// install, `build-version` in a libtorch zip.
pub fn version_of(lib_dir: &Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let v = text.lines().find_map(|l| l.strip_prefix("__version__ = "))?;
        return Some(v.trim().trim_matches('\'').trim_matches('"').to_string());
    }
    std::fs::read_to_string(root.join("build-version")).ok().map(|s| s.trim().to_string())
}

/// The directory of the libtorch_cpu.so mapped into this process (Linux): the library the
/// loader actually picked, whatever RUNPATH or LD_LIBRARY_PATH said.
pub fn loaded_lib_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    // The path is the line's last field and the only one that holds a '/'.
    maps.lines()
        .filter_map(|l| l.find('/').map(|i| &l[i..]))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent())
        .map(Path::to_path_buf)
}

/// Asks libtorch's CPU allocator for transparent huge pages (its `THP_MEM_ALLOC_ENABLE`),
/// unless the user set that variable. Why: every batch allocates activations of tens to
/// hundreds of MB, which glibc maps fresh and the kernel faults in 4 KB at a time; with 2 MB
/// pages a random-best extraction took 11× fewer page faults and ran about 15% faster
/// (README, "Speed"). libtorch reads the variable once, at its first allocation, so this runs
/// first thing in `main`, while the process has one thread.
pub fn prefer_huge_pages() {
    const VAR: &str = "THP_MEM_ALLOC_ENABLE";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "1");
    }
}
