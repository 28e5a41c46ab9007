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
///
/// With huge pages on, glibc's malloc also gets a fixed mmap threshold of 2 MB. libtorch
/// aligns each large block to 2 MB; under glibc's default, a threshold that rises with the
/// largest block freed, blocks of 2–32 MB then came from the heap, which fragmented: a
/// streamed export's peak RSS grew by ~10% of the matrix it wrote (622 → 817 MB from 500 to
/// 8,000 images, against 583 → 583 MB with the fixed threshold; tests/stream_memory.rs).
pub fn prefer_huge_pages() {
    const VAR: &str = "THP_MEM_ALLOC_ENABLE";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "1");
    }
    let user_threshold = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"));
    if std::env::var(VAR).is_ok_and(|v| v == "1") && !user_threshold {
        fixed_mmap_threshold(2 << 20);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold(bytes: i32) {
    // glibc's mallopt(M_MMAP_THRESHOLD, …); a fixed value also ends the dynamic adjustment.
    const M_MMAP_THRESHOLD: i32 = -3;
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt only sets an allocator parameter; called while single-threaded.
    unsafe { mallopt(M_MMAP_THRESHOLD, bytes) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_mmap_threshold(_: i32) {}

/// While alive, freed memory stays with the process: glibc serves every block from its heap
/// (no mmap) and trims nothing. Why: a forward pass allocates and frees its activations and
/// the Winograd transform buffers, MBs each, dozens of times per batch, and each fresh
/// mapping was zeroed by the kernel page by page on first touch. Held around each Winograd
/// call, it took random-best's network from 446–458 to 829–884 images/s on the 2-core
/// AVX-512 machine. Held around each batch's forward pass (features::taps), ResNet-50 at 32 px
/// went from 1613–1848 to 2328–2395 images/s (ad hoc alternated `cnnprobe extract` runs).
///
/// When the outermost guard drops, large blocks are mapped again and the heap's free pages go
/// back to the kernel (`malloc_trim`), so a pass starts from what the last one left and
/// nothing accumulates. Without the trim the same runs did 2695–2757 images/s, but the heap
/// kept blocks that other threads had allocated meanwhile, and a streamed export's peak RSS
/// grew by up to 74 MB from 500 to 3,200 images (tests/stream_memory.rs allows 67; with the trim
/// it grew 0–7 MB). Guards nest.
#[must_use = "the policy ends when the guard drops"]
pub struct KeepFreedMemory(());

static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// See `KeepFreedMemory`.
pub fn keep_freed_memory() -> KeepFreedMemory {
    use std::sync::atomic::Ordering;
    if HELD.fetch_add(1, Ordering::SeqCst) == 0 {
        glibc::set(glibc::M_MMAP_MAX, 0);
        glibc::set(glibc::M_TRIM_THRESHOLD, i32::MAX);
        // Grow the heap 256 MB at a time rather than by each block's size.
        glibc::set(glibc::M_TOP_PAD, 256 << 20);
    }
    KeepFreedMemory(())
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        // Large blocks are mapped again (glibc's DEFAULT_MMAP_MAX), glibc's default trim
        // threshold returns, and the free pages go back now.
        if HELD.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            glibc::set(glibc::M_MMAP_MAX, 65536);
            glibc::set(glibc::M_TRIM_THRESHOLD, 128 << 10);
            glibc::trim();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    pub const M_TRIM_THRESHOLD: i32 = -1;
    pub const M_TOP_PAD: i32 = -2;
    pub const M_MMAP_MAX: i32 = -4;
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    pub fn set(param: i32, value: i32) {
        // SAFETY: mallopt sets an allocator parameter under the allocator's own lock.
        unsafe { mallopt(param, value) };
    }
    pub fn trim() {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim returns free memory to the kernel under the allocator's locks.
        unsafe { malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub const M_TRIM_THRESHOLD: i32 = -1;
    pub const M_TOP_PAD: i32 = -2;
    pub const M_MMAP_MAX: i32 = -4;
    pub fn set(_: i32, _: i32) {}
    pub fn trim() {}
}
