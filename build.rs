//! Makes the binary (and test binaries) run without LD_LIBRARY_PATH and see CUDA.
//!
//! torch-sys exports the libtorch lib dir as DEP_TCH_LIBTORCH_LIB (its `links = "tch"`).
//! We add a RUNPATH to it, and when the CUDA build of libtorch is present we link
//! `torch_cuda` with --no-as-needed: nothing references its symbols directly, so the
//! linker would otherwise drop it and `tch::Cuda::is_available()` would be false.
//! We also record the libtorch version for the result logs.
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    let lib_dir = env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    println!("cargo:rustc-env=CNNPROBE_LIBTORCH_VERSION={}", libtorch_version(Path::new(&lib_dir)));
    if lib_dir.is_empty() {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB not set; no rpath added");
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib_dir}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// `torch/version.py` in a pip install, `build-version` in a libtorch zip.
fn libtorch_version(lib_dir: &Path) -> String {
    let root = lib_dir.parent().unwrap_or(lib_dir);
    if let Ok(text) = fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("__version__ = ") {
                return v.trim().trim_matches('\'').trim_matches('"').to_string();
            }
        }
    }
    fs::read_to_string(root.join("build-version")).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}
