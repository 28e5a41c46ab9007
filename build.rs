//! Makes the binary (and test binaries) run without LD_LIBRARY_PATH and see CUDA.
//!
//! torch-sys exports the libtorch lib dir as DEP_TCH_LIBTORCH_LIB (its `links = "tch"`).
//! We add a RUNPATH to it, and when the CUDA build of libtorch is present we link
//! `torch_cuda` with --no-as-needed: nothing references its symbols directly, so the
//! linker would otherwise drop it and `tch::Cuda::is_available()` would be false.
//! We also record the libtorch version for the result logs.
use std::{env, path::Path};

// The same reader the binary uses for the run-time version.
#[allow(dead_code)]
#[path = "src/util/libtorch.rs"]
mod libtorch;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    let lib_dir = env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    let version = libtorch::version_of(Path::new(&lib_dir)).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CNNPROBE_LIBTORCH_VERSION={version}");
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
